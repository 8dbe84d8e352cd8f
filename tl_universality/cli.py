"""The ``tl-universality`` command line.

Each subcommand is one step of the study (``train-seeds``, ``correlate``, ``stats``,
``families``, ``roles``, ``report``) or all of them (``demo``). Results are saved first and
logged to wandb second, so a wandb failure never loses them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_universality.core.errors import UniversalityError
from tl_universality.outputs import report

log = logging.getLogger("tl_universality")


# -- loading ---------------------------------------------------------------------------------


def load_models(
    specs: Sequence[str],
    *,
    family: str | None = None,
    device: str = "cpu",
    checkpoint: int | None = None,
    progress: bool = True,
) -> list[Any]:
    """Load models named on the command line.

    Each spec is a local folder (a saved seed model, or a seed-family folder holding several) or a
    TransformerLens model name such as ``stanford-gpt2-small-a`` (needs the internet;
    ``checkpoint`` selects a training checkpoint by value). ``family`` loads (training on first
    use) a whole offline seed family by preset name instead.
    """
    from tl_universality.data import seeds

    models: list[Any] = []
    if family is not None:
        models.extend(seeds.train_seed_family(family, progress=progress, device=device).models)
    for spec in specs:
        path = Path(spec)
        if path.is_dir() and (path / "family.json").is_file():
            models.extend(seeds.load_family_folder(path, device=device).models)
        elif path.is_dir():
            models.append(seeds.load_seed_model(path, device=device))
        else:
            from transformer_lens import HookedTransformer

            kwargs: dict[str, Any] = {"device": device}
            if checkpoint is not None:
                kwargs["checkpoint_value"] = checkpoint
            models.append(HookedTransformer.from_pretrained(spec, **kwargs))
    if not models:
        raise UniversalityError("No model given: name models, folders, or pass --family PRESET.")
    return models


def _tokens(args: argparse.Namespace) -> Any:
    """Tokens: a dataset name or file, the embedded corpus, or the family's held-out split."""
    if args.tokens in (None, "held-out") and getattr(args, "family", None):
        from tl_universality.data import seeds

        return seeds.train_seed_family(args.family, progress=not args.quiet).held_out_tokens()
    return None if args.tokens in (None, "default") else args.tokens


# -- subcommands -----------------------------------------------------------------------------


def cmd_train_seeds(args: argparse.Namespace) -> int:
    from tl_universality.data.seeds import train_seed_family
    from tl_universality.demo import describe_family

    family = train_seed_family(args.preset, progress=not args.quiet, device=args.device)
    print(describe_family(family))
    print(f"cached in {family.folder}")
    return 0


def cmd_correlate(args: argparse.Namespace) -> int:
    from tl_universality.analyses.correlation import correlate

    models = load_models(
        args.models,
        family=args.family,
        device=args.device,
        checkpoint=args.checkpoint,
        progress=not args.quiet,
    )
    if len(models) < 2:
        raise UniversalityError("correlate needs at least two models (a reference and others).")
    result = correlate(
        models[0],
        models[1:],
        _tokens(args),
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        device=args.device,
        memory_budget=args.memory_budget,
        checkpoint_dir=args.checkpoint_dir,
        progress=not args.quiet,
    )
    out = Path(args.out) / report.CORRELATION_DIR
    result.save(out)
    print(result.universal_share().to_string(index=False, float_format="{:.3f}".format))
    print(f"saved to {out}")
    _maybe_wandb(args, result)
    return 0


def _reference(args: argparse.Namespace) -> Any:
    """The first model, with TransformerLens's processed weights (the neuron table's convention).

    Seed models are saved as trained; processing them leaves MLP activations unchanged.
    """
    from tl_universality.analyses.vocab import weight_processing_notes

    model = load_models(
        args.models[:1], family=None if args.models else args.family, device=args.device,
        checkpoint=args.checkpoint, progress=not args.quiet,
    )[0]  # fmt: skip
    if weight_processing_notes(model) and hasattr(model, "process_weights_"):
        model.process_weights_()
    return model


def _load_correlation(args: argparse.Namespace) -> Any:
    from tl_universality.analyses.correlation import CorrelationResult

    folder = Path(args.correlation or Path(args.out) / report.CORRELATION_DIR)
    return CorrelationResult.load(folder) if folder.is_dir() else None


def cmd_stats(args: argparse.Namespace) -> int:
    from tl_universality.analyses.neuron_stats import compare_universal, neuron_stats

    model = _reference(args)
    correlation = _load_correlation(args)
    table = neuron_stats(
        model, _tokens(args), correlation=correlation, batch_size=args.batch_size,
        max_tokens=args.max_tokens, progress=not args.quiet,
    )  # fmt: skip
    path = _out(args) / report.NEURON_TABLE
    table.to_parquet(path)
    print(f"neuron table: {len(table)} neurons x {table.shape[1]} columns -> {path}")
    if "is_universal" in table and table["is_universal"].any():
        print(compare_universal(table).to_string(float_format="{:.3f}".format))
    _maybe_wandb(args, table)
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    from tl_universality.analyses.families import explain, families, family_counts

    model = _reference(args)
    correlation = _load_correlation(args)
    neurons = None
    if correlation is not None:
        neurons = correlation.universal_neurons(args.threshold)[["layer", "neuron"]]
        if neurons.empty:
            print("no universal neuron in the correlation result: explaining every neuron")
            neurons = None
    explanations = explain(
        model, _tokens(args), neurons, batch_size=args.batch_size, max_tokens=args.max_tokens,
        progress=not args.quiet,
    )  # fmt: skip
    labels = families(explanations)
    out = _out(args)
    explanations.to_parquet(out / report.EXPLANATIONS)
    labels.to_parquet(out / report.FAMILIES)
    print(family_counts(labels).to_string())
    print(f"saved {report.EXPLANATIONS} and {report.FAMILIES} in {out}")
    _maybe_wandb(args, labels)
    return 0


def cmd_roles(args: argparse.Namespace) -> int:
    from tl_universality.analyses.attention import attention_deactivation_scores
    from tl_universality.analyses.entropy import entropy_neuron_scores
    from tl_universality.analyses.roles import prediction_neurons, role_counts

    model = _reference(args)
    out = _out(args)
    roles = prediction_neurons(model)
    roles.to_parquet(out / report.PREDICTION)
    print("prediction / suppression / partition neurons per layer:")
    print(role_counts(roles).to_string())
    entropy = entropy_neuron_scores(model)
    entropy.to_parquet(out / report.ENTROPY_SCORES)
    print("\ntop entropy-neuron candidates:")
    print(entropy.head(args.top).to_string(index=False, float_format="{:.3f}".format))
    if model.cfg.n_layers > 1:
        ranked = attention_deactivation_scores(model).to_dataframe(top_k=max(args.top, 50))
        ranked.to_parquet(out / report.ATTENTION_SCORES)
        print("\ntop attention-deactivation (neuron, head) pairs:")
        print(ranked.head(args.top).to_string(index=False, float_format="{:.3f}".format))
    _maybe_wandb(args, roles, entropy)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from tl_universality.attention_decomposition.cli import run_trace

    return run_trace(args, load_models(args.models[:1], family=None if args.models else
                                       args.family, device=args.device, progress=not args.quiet)[0],
                     _tokens(args))  # fmt: skip


def cmd_report(args: argparse.Namespace) -> int:
    page = report.build_report(args.dir)
    print(f"report: {page}")
    return 0


def _out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _maybe_wandb(args: argparse.Namespace, *results: Any) -> None:
    if not args.wandb:
        return
    from tl_universality.outputs.wandb import log_results

    log_results(results, project=args.wandb_project, out_dir=Path(args.out))


def cmd_demo(args: argparse.Namespace) -> int:
    from tl_universality.demo import run_demo

    run_demo(
        out_dir=Path(args.out),
        preset=args.preset,
        progress=not args.quiet,
        wandb=args.wandb,
        device=args.device,
        max_tokens=args.max_tokens,
    )
    return 0


def _number(text: str) -> int | float:
    """A budget from the command line: ``10`` is a count, ``0.9`` a share."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def cmd_flow(args: argparse.Namespace) -> int:
    from tl_universality.analyses.correlation import CorrelationResult
    from tl_universality.flow.graph import flow_graph

    specs = [args.model] if args.model else []
    model = load_models(specs, family=None if specs else args.family, device=args.device,
                        checkpoint=args.checkpoint, progress=not args.quiet)[0]  # fmt: skip
    parts = args.neurons.split(",")
    neurons = (int(parts[0]), int(parts[1])) if len(parts) == 2 else _number(parts[0])
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    target = args.target_id if args.target_id is not None else args.target
    correlation = CorrelationResult.load(args.correlation) if args.correlation else None
    try:
        graph = flow_graph(
            model, args.text, args.position, target, layers, heads=_number(args.heads),
            neurons=neurons, top_k=args.top_k, reading=args.reading, correlation=correlation,
        )  # fmt: skip
    except ValueError as err:  # a bad position, target or budget: say which, and the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = _out(args)
    graph.save(out / "flow_graph")
    graph.to_html(out / "flow_graph.html")
    graph.plot().savefig(out / "flow_graph.png", dpi=120)
    print(graph.describe())
    print(f"saved flow_graph/, flow_graph.html and flow_graph.png in {out}")
    return 0


def cmd_training_curve(args: argparse.Namespace) -> int:
    """Universality at each training checkpoint (docs/training_curve.md)."""
    from tl_universality.analyses.training_curve import universality_over_training
    from tl_universality.data import seeds

    steps = [int(x) for x in args.checkpoints.split(",")] if args.checkpoints else None
    if args.family:  # an offline family: train it (once) with these checkpoints
        spec: Any = seeds.train_seed_family(
            args.family, checkpoints=steps, progress=not args.quiet, device=args.device
        )
    elif len(args.models) == 1 and Path(args.models[0]).is_dir():
        spec = seeds.load_family_folder(args.models[0], device=args.device)
    elif len(args.models) >= 2 and steps:
        spec = args.models  # hub models with checkpoints (needs the internet)
    else:
        raise UniversalityError(
            "training-curve needs --family PRESET, a seed-family folder, or two or more model"
            " names with --checkpoints (e.g. stanford-gpt2-small-a stanford-gpt2-small-b"
            " --checkpoints 0,1000,400000)."
        )
    curve = universality_over_training(
        spec, steps if steps and not args.family else "all", _tokens(args),
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
    _maybe_wandb(args, curve)
    return 0


# -- parser ----------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, tokens: bool = True) -> None:
    p.add_argument(
        "--out", default="tl_universality_out", help="output folder (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log results to a wandb run (offline mode unless WANDB_MODE says otherwise)",
    )
    p.add_argument("--wandb-project", default="tl_universality", help="wandb project name")
    if tokens:
        p.add_argument(
            "--tokens",
            default=None,
            help="dataset name, .txt/.jsonl/.parquet file, or 'default' for the embedded corpus"
            " (default: the family's held-out split with --family, else the embedded corpus)",
        )
        p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
        p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "models",
        nargs="*",
        help="TransformerLens names (e.g. stanford-gpt2-small-a) or local model folders;"
        " the first is the reference",
    )
    p.add_argument("--family", default=None, help="use an offline seed family: tiny or demo")
    p.add_argument(
        "--checkpoint", type=int, default=None, help="training checkpoint value (Stanford CRFM)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-universality",
        description="Universal neurons (Gurnee et al. 2024) for TransformerLens models.",
        epilog="Run `tl-universality demo` for the whole study on an offline seed family.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train-seeds", help="train (or load) an offline seed family")
    p.add_argument("--preset", default="demo", help="tiny or demo (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_seeds)

    p = sub.add_parser("correlate", help="correlate every neuron of the reference with the others")
    _models(p)
    _common(p)
    p.add_argument("--memory-budget", default=None, help="e.g. 8GB: tile the statistics to fit")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint here and resume from it")
    p.set_defaults(func=cmd_correlate)

    p = sub.add_parser("stats", help="the neuron table (weights, vocabulary, activations)")
    _models(p)
    _common(p)
    p.add_argument("--correlation", default=None, help="a saved correlation result to join")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("families", help="explain neurons by token features; family labels")
    _models(p)
    _common(p)
    p.add_argument("--correlation", default=None, help="explain its universal neurons only")
    p.add_argument("--threshold", type=float, default=0.5, help="excess_corr for universal")
    p.set_defaults(func=cmd_families)

    p = sub.add_parser("roles", help="prediction/suppression, entropy and deactivation neurons")
    _models(p)
    _common(p, tokens=False)
    p.add_argument("--top", type=int, default=10, help="candidates to print")
    p.set_defaults(func=cmd_roles)

    p = sub.add_parser("trace", help="trace head-to-head communication (sparse attention decomp.)")
    _models(p)
    _common(p)
    from tl_universality.attention_decomposition.cli import add_trace_arguments

    add_trace_arguments(p)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("flow", help="the VISIT flow graph of one prompt (HTML, PNG, tables)")
    p.add_argument("text", help="the prompt (BOS is prepended)")
    p.add_argument("--model", default=None, help="a local model folder or TransformerLens name")
    p.add_argument("--family", default=None, help="or an offline seed family (its first seed)")
    p.add_argument("--checkpoint", type=int, default=None, help="training checkpoint value")
    p.add_argument("--position", type=int, default=-1, help="token position (default: last)")
    p.add_argument("--target", default=None, help="target token string (default: next token)")
    p.add_argument("--target-id", type=int, default=None, help="target token id")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--heads", default="10", help="heads per layer, or a share such as 0.9")
    p.add_argument("--neurons", default="18,7", help="top,bottom neurons per layer, or a share")
    p.add_argument("--top-k", type=int, default=5, help="tokens shown per reading")
    p.add_argument("--reading", default="own", choices=["own", "residual"], help="LN scale")
    p.add_argument("--correlation", default=None, help="a saved correlation result to overlay")
    _common(p, tokens=False)
    p.set_defaults(func=cmd_flow)

    p = sub.add_parser("training-curve", help="universality at each training checkpoint")
    p.add_argument("models", nargs="*", help="a seed-family folder, or hub model names")
    p.add_argument("--family", default=None, help="an offline seed family preset (tiny, demo)")
    p.add_argument("--checkpoints", default=None, help="comma-separated steps (or indices)")
    p.add_argument("--checkpoint-kind", default="value", choices=["value", "index"])
    p.add_argument("--threshold", type=float, default=0.5, help="excess_corr for universal")
    p.add_argument("--n-draws", type=int, default=2, help="baseline draws per checkpoint")
    _common(p)
    p.set_defaults(func=cmd_training_curve)

    p = sub.add_parser("report", help="write the HTML report of a results folder")
    p.add_argument("dir", help="a results folder (the --out of the other commands)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="run the whole study offline on the embedded seed family")
    p.add_argument("--preset", default="demo", help="tiny or demo (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, help="held-out tokens to use")
    _common(p, tokens=False)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except UniversalityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
