"""What each ``tl-universality`` subcommand runs, saves and prints (``cmd_<name>(args)``).

Every command checks its inputs first (:mod:`~tl_universality.cli.loading`), records its
settings in ``OUT/settings.json`` and, with ``--wandb``, logs its results to a run named after
it in the study's group (one ``--out`` folder = one study).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tl_universality.cli.errors import UsageError
from tl_universality.cli.loading import (
    check_family,
    existing_dir,
    fingerprint,
    load_models,
    resolve_cli_tokens,
)
from tl_universality.cli.settings import RunSettings, read_settings
from tl_universality.outputs import report

log = logging.getLogger("tl_universality")


# -- shared steps ----------------------------------------------------------------------------


def _out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _settings(
    args: argparse.Namespace,
    models: list[Any],
    fingerprints: list[str],
    tokens: Any = None,
    **options: Any,
) -> RunSettings:
    """The run's settings; ``fingerprints`` are of the weights as loaded (before processing)."""
    from tl_universality.core.protocol import model_name

    return RunSettings(
        command=args.command,
        models=tuple(
            {"name": model_name(m), "fingerprint": f}
            for m, f in zip(models, fingerprints, strict=True)
        ),
        specs=tuple(getattr(args, "models", None) or ()),
        family=getattr(args, "family", None),
        tokens=getattr(tokens, "name", None) if tokens is not None else None,
        max_tokens=getattr(args, "max_tokens", None),
        options=options,
    )


def _load(args: argparse.Namespace, specs: list[str] | None = None) -> list[Any]:
    specs = list(args.models if specs is None else specs)
    return load_models(
        specs,
        family=None if specs and args.command != "correlate" else args.family,
        device=args.device,
        checkpoint=getattr(args, "checkpoint", None),
        progress=not args.quiet,
    )


def _reference(args: argparse.Namespace) -> tuple[Any, str]:
    """The first model with TransformerLens's processed weights (the neuron table's
    convention), and the fingerprint of its weights as loaded (processing leaves the MLP
    activations unchanged, not the weights)."""
    from tl_universality.analyses.vocab import weight_processing_notes

    model = _load(args, list(args.models[:1]))[0]
    print_ = fingerprint(model)
    if weight_processing_notes(model) and hasattr(model, "process_weights_"):
        model.process_weights_()
    return model, print_


def _correlation(args: argparse.Namespace, reference_fingerprint: str) -> Any:
    """The correlation result to join: ``--correlation`` (which must exist) or
    ``OUT/correlation`` when it exists. Its reference model must be this one."""
    from tl_universality.analyses.correlation import CorrelationResult

    if args.correlation is not None:
        folder = existing_dir(
            args.correlation,
            "--correlation",
            "give the folder `tl-universality correlate --out OUT` wrote (OUT/correlation).",
        )
    else:
        folder = Path(args.out) / report.CORRELATION_DIR
        if not folder.is_dir():
            print(f"no correlation result in {folder}: the table has no universality columns")
            return None
    result = CorrelationResult.load(folder)
    recorded = (result.config.get("model_weights") or [None])[0]
    if recorded is not None and recorded != reference_fingerprint:
        raise UsageError(
            f"argument --correlation: {str(folder)!r} was computed for another reference model"
            f" ({result.names[0]}, weights {recorded}; this model's are {reference_fingerprint})."
            " Fix: pass the correlation of this model, or the model the correlation was run on."
        )
    check = "fingerprint checked" if recorded else "no fingerprint recorded: not checked"
    print(f"joining the correlation result {folder} ({result.names[0]}; {check})")
    return result


def _maybe_wandb(args: argparse.Namespace, settings: RunSettings, results: dict[str, Any]) -> None:
    """Log ``results`` (name -> result) to a run named after the command, in the study's group."""
    if not args.wandb:
        return
    from tl_universality.outputs.wandb import log_results, run_location

    group = args.wandb_group or Path(args.out).resolve().name
    run = log_results(
        results,
        project=args.wandb_project,
        config=settings.to_dict(),
        out_dir=Path(args.out),
        name=settings.run_name(),
        group=group,
    )
    if run is not None:
        print(f"wandb: {run_location(run)}")


# -- subcommands -----------------------------------------------------------------------------


def cmd_train_seeds(args: argparse.Namespace) -> int:
    from tl_universality.cli.loading import check_device
    from tl_universality.data.seeds import train_seed_family
    from tl_universality.demo import describe_family

    check_device(args.device)
    family = train_seed_family(check_family(args.family), progress=not args.quiet,
                               device=args.device)  # fmt: skip
    print(describe_family(family))
    print(f"cached in {family.folder}")
    return 0


def cmd_correlate(args: argparse.Namespace) -> int:
    from tl_universality.analyses.correlation import correlate
    from tl_universality.analyses.correlation.distributed import init_from_env
    from tl_universality.analyses.correlation.plan import parse_bytes

    shard = init_from_env()  # under torchrun: one rank per process, rank 0 writes the outputs

    try:
        budget = parse_bytes(args.memory_budget)
    except ValueError as err:
        raise UsageError(
            f"argument --memory-budget: {args.memory_budget!r} is not a size ({err})."
            " Fix: use e.g. 8GB, 512MiB or 2000000000."
        ) from None
    models = _load(args)
    if len(models) < 2:
        raise UsageError(
            f"correlate needs at least two models (a reference and others), got {len(models)}."
            " Fix: name two or more models, or pass --family tiny (or demo)."
        )
    tokens = resolve_cli_tokens(args, models)
    result = correlate(
        models[0], models[1:], tokens, units=args.units, batch_size=args.batch_size,
        max_tokens=args.max_tokens, device=args.device, memory_budget=budget,
        checkpoint_dir=args.checkpoint_dir, progress=not args.quiet, parallel=args.parallel,
        candidates=args.candidates, screen_tokens=args.screen_tokens, tol=args.tol,
        baseline_candidates=args.baseline_candidates, standard_errors=args.standard_errors,
        certificate_sigmas=args.certificate_sigmas, product_dtype=args.product_dtype,
    )  # fmt: skip
    if shard.rank != 0:
        return 0  # every rank holds the same result
    if result.certified is not None:
        stopped = " (stopped early: stable within --tol)" if result.config["stopped_early"] else ""
        print(
            f"screened: {result.n_certified} of {int((~result.dead).sum())} live units certified,"
            f" {result.n_tokens} tokens{stopped}"
        )
        if result.baseline_certified is not None:
            share = result.summary()["baseline_certified_share"]
            print(f"followed baseline: certified for {share:.1%} of live units")
    if result.max_corr_se is not None:
        se = result.max_corr_se[~result.max_corr.isnan()]
        print(
            f"standard errors of max_corr: median {float(se.nanmedian()):.2g},"
            f" largest {float(se.nan_to_num(0).max()):.2g}"
        )
    prints = result.config["model_weights"]  # as correlate hashed them; joins check the first
    out = _out(args) / report.CORRELATION_DIR
    result.save(out)
    print(result.universal_share().to_string(index=False, float_format="{:.3f}".format))
    print(f"saved to {out}")
    settings = _settings(
        args, models, prints, tokens, units=args.units, memory_budget=args.memory_budget,
        parallel=args.parallel,
    )  # fmt: skip
    settings = RunSettings.from_dict({**settings.to_dict(), "baseline": result.baseline})
    settings.write(Path(args.out))
    _maybe_wandb(args, settings, {"correlation": result})
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from tl_universality.analyses.neuron_stats import compare_universal, neuron_stats

    model, print_ = _reference(args)
    tokens = resolve_cli_tokens(args, [model])
    correlation = _correlation(args, print_)
    table = neuron_stats(
        model, tokens, correlation=correlation, batch_size=args.batch_size,
        max_tokens=args.max_tokens, progress=not args.quiet,
    )  # fmt: skip
    path = _out(args) / report.NEURON_TABLE
    table.to_parquet(path)
    print(f"neuron table: {len(table)} neurons x {table.shape[1]} columns -> {path}")
    if "is_universal" in table and table["is_universal"].any():
        print(compare_universal(table).to_string(float_format="{:.3f}".format))
    settings = _settings(args, [model], [print_], tokens)
    settings.write(Path(args.out))
    _maybe_wandb(args, settings, {"neuron_table": table})
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    from tl_universality.analyses.families import explain, families, family_counts

    model, print_ = _reference(args)
    tokens = resolve_cli_tokens(args, [model])
    correlation = _correlation(args, print_)
    neurons = None
    if correlation is not None:
        neurons = correlation.universal_neurons(args.threshold)[["layer", "neuron"]]
        if neurons.empty:
            print("no universal neuron in the correlation result: explaining every neuron")
            neurons = None
    explanations = explain(
        model, tokens, neurons, batch_size=args.batch_size, max_tokens=args.max_tokens,
        progress=not args.quiet,
    )  # fmt: skip
    labels = families(explanations)
    out = _out(args)
    explanations.to_parquet(out / report.EXPLANATIONS)
    labels.to_parquet(out / report.FAMILIES)
    print(family_counts(labels).to_string())
    print(f"saved {report.EXPLANATIONS} and {report.FAMILIES} in {out}")
    settings = _settings(args, [model], [print_], tokens, threshold=args.threshold)
    settings.write(out)
    _maybe_wandb(args, settings, {"explanations": explanations, "families": labels})
    return 0


def cmd_roles(args: argparse.Namespace) -> int:
    import pandas as pd

    from tl_universality.analyses.attention import attention_deactivation_scores
    from tl_universality.analyses.entropy import entropy_neuron_scores
    from tl_universality.analyses.roles import prediction_neurons, role_counts
    from tl_universality.demo import INTERVENTION_TOKENS, causal_tests

    model, print_ = _reference(args)
    out = _out(args)
    roles = prediction_neurons(model)
    roles.to_parquet(out / report.PREDICTION)
    print("prediction / suppression / partition neurons per layer:")
    print(role_counts(roles).to_string())
    entropy = entropy_neuron_scores(model)
    entropy.to_parquet(out / report.ENTROPY_SCORES)
    print("\ntop entropy-neuron candidates:")
    print(entropy.head(args.top).to_string(index=False, float_format="{:.3f}".format))
    logged: dict[str, Any] = {"prediction_neurons": roles, "entropy_scores": entropy}
    ranked = None
    if model.cfg.n_layers > 1:
        ranked = attention_deactivation_scores(model).to_dataframe(top_k=max(args.top, 50))
        ranked.to_parquet(out / report.ATTENTION_SCORES)
        print("\ntop attention-deactivation (neuron, head) pairs:")
        print(ranked.head(args.top).to_string(index=False, float_format="{:.3f}".format))
        logged["attention_deactivation"] = ranked
    tokens = None
    if args.causal:
        tokens = resolve_cli_tokens(args, [model])
        table_path = out / report.NEURON_TABLE
        table = pd.read_parquet(table_path) if table_path.is_file() else None
        scale = 1.0
        if table is not None and "post_mean" in table:
            scale = float(table["post_mean"].abs().max())
        causal = causal_tests(model, tokens, entropy, ranked, scale=scale,
                              max_tokens=args.max_tokens or INTERVENTION_TOKENS)  # fmt: skip
        causal.save(out)
        print("\n" + causal.describe())
        print(f"saved {report.ENTROPY_INTERVENTION}/ and {report.PATH_ABLATION}/ in {out}")
        logged["entropy_intervention"] = causal.entropy
        if causal.ablation is not None:
            logged["path_ablation"] = causal.ablation
    settings = _settings(args, [model], [print_], tokens, causal=args.causal)
    settings.write(out)
    _maybe_wandb(args, settings, logged)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from tl_universality.attention_decomposition.cli import run_trace

    model = _load(args, list(args.models[:1]))[0]
    return run_trace(args, model, resolve_cli_tokens(args, [model]))


def cmd_report(args: argparse.Namespace) -> int:
    folder = existing_dir(
        args.dir, "DIR", "give the --out folder of correlate/stats/families/roles or demo."
    )
    model = tokens = None
    specs, family = list(args.models), args.family
    if not specs and family is None:  # the reference recorded by the commands that ran
        for recorded in read_settings(folder).values():
            specs, family = list(recorded.get("specs") or [])[:1], recorded.get("family")
            if specs or family:
                break
    if specs or family:
        args.family = family
        model = _load(args, specs[:1])[0]
        tokens = resolve_cli_tokens(args, [model])
    page = report.build_report(folder, model=model, tokens=tokens, progress=not args.quiet)
    print(f"report: {page}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tl_universality.cli.loading import check_device
    from tl_universality.demo import run_demo

    check_device(args.device)
    run_demo(
        out_dir=Path(args.out),
        preset=check_family(args.family) or "demo",
        progress=not args.quiet,
        wandb=args.wandb,
        device=args.device,
        max_tokens=args.max_tokens,
        wandb_group=args.wandb_group,
    )
    return 0


def _number(text: str) -> int | float:
    """A budget from the command line: ``10`` is a count, ``0.9`` a share."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def cmd_flow(args: argparse.Namespace) -> int:
    from tl_universality.analyses.correlation import CorrelationResult
    from tl_universality.flow.graph import flow_graph

    args.models = [args.model] if args.model else []
    model = _load(args, args.models)[0]
    parts = args.neurons.split(",")
    neurons = (int(parts[0]), int(parts[1])) if len(parts) == 2 else _number(parts[0])
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    target = args.target_id if args.target_id is not None else args.target
    correlation = None
    if args.correlation:
        folder = existing_dir(args.correlation, "--correlation", "give a saved correlation folder.")
        correlation = CorrelationResult.load(folder)
    try:
        graph = flow_graph(
            model, args.text, args.position, target, layers, heads=_number(args.heads),
            neurons=neurons, top_k=args.top_k, reading=args.reading, correlation=correlation,
        )  # fmt: skip
    except ValueError as err:  # a bad position, target or budget: say which, and the fix
        print(f"tl-universality flow: error: {err}", file=sys.stderr)
        return 2
    out = _out(args)
    graph.save(out / "flow_graph")
    graph.to_html(out / "flow_graph.html")
    graph.plot().savefig(out / "flow_graph.png", dpi=120)
    print(graph.describe())
    print(f"saved flow_graph/, flow_graph.html and flow_graph.png in {out}")
    return 0


def cmd_remove_ln(args: argparse.Namespace) -> int:
    from tl_universality.data import seeds
    from tl_universality.ln_removal import remove_layernorm

    models = _load(args)
    train, held = args.tokens, None
    if args.family:  # train on the family's training split, measure on its held-out split
        check_family(args.family)
        family = seeds.train_seed_family(args.family, progress=False, device=args.device)
        train, held = train or family.train_tokens(), family.held_out_tokens()
    if train is None:
        raise UsageError(
            "argument --tokens: remove-ln needs training tokens. Fix: pass --tokens FILE or"
            " --family PRESET (its training split)."
        )
    for i, model in enumerate(models):
        result = remove_layernorm(
            model,
            train,
            held_out=held,
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.quiet,
            wandb=args.wandb_project if args.wandb else None,
        )
        out = _out(args) / "ln_removal" / f"model{i}"
        result.save(out)
        s = result.summary()
        print(
            f"{s['model']}: {s['steps']} steps, {s['tokens']} tokens, {s['seconds']:.1f} s,"
            f" held-out loss {s['held_out_loss_before']:.4f} -> {s['held_out_loss_after']:.4f};"
            f" saved to {out}"
        )
    return 0


def cmd_training_curve(args: argparse.Namespace) -> int:
    """Universality at each training checkpoint (docs/training_curve.md)."""
    from tl_universality.analyses.training_curve import universality_over_training
    from tl_universality.data import seeds

    steps = [int(x) for x in args.checkpoints.split(",")] if args.checkpoints else None
    if args.family:  # an offline family: train it (once) with these checkpoints
        check_family(args.family)
        spec: Any = seeds.train_seed_family(
            args.family, checkpoints=steps, progress=not args.quiet, device=args.device
        )
    elif len(args.models) == 1 and Path(args.models[0]).is_dir():
        spec = seeds.load_family_folder(args.models[0], device=args.device)
    elif len(args.models) >= 2 and steps:
        spec = args.models  # hub models with checkpoints (needs the internet)
    else:
        raise UsageError(
            "argument MODELS: training-curve needs --family PRESET, a seed-family folder, or two"
            " or more model names with --checkpoints. Fix: e.g. stanford-gpt2-small-a"
            " stanford-gpt2-small-b --checkpoints 0,1000,400000, or --family tiny."
        )
    tokens = None if args.tokens in (None, "held-out") else args.tokens
    curve = universality_over_training(
        spec, steps if steps and not args.family else "all", tokens,
        checkpoint_kind=args.checkpoint_kind, threshold=args.threshold, n_draws=args.n_draws,
        batch_size=args.batch_size, max_tokens=args.max_tokens, device=args.device,
        progress=not args.quiet,
    )  # fmt: skip
    out = _out(args)
    curve.save(out / "training_curve")
    curve.plot().savefig(out / "training_curve.png", dpi=120)
    columns = ["step", "tokens_seen", "loss", "layer", "universal_share", "median_max_corr",
               "median_baseline", "excess_p99", "excess_max", "participation_ratio"]  # fmt: skip
    print(curve.to_dataframe()[columns].to_string(index=False, float_format="{:.3f}".format))
    print(f"saved training_curve/ and training_curve.png in {out}")
    settings = _settings(args, [], [], None, checkpoints=steps, threshold=args.threshold)
    settings.write(out)
    _maybe_wandb(args, settings, {"training_curve": curve})
    return 0
