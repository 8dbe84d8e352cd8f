"""The offline demo: the whole study on the embedded seed family, end to end, with no network.

``run_demo`` builds (or loads) the corpus, tokenizer and seed family, then runs every analysis on
the family's held-out tokens, saves each result under ``out_dir`` (the layout the report reads),
prints a short summary of each step, and writes the HTML report. ``tl-universality demo`` calls it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_universality.core.names import head_name, neuron_name
from tl_universality.outputs import report as files

#: Tokens used by the causal tests (entropy intervention, path ablation).
INTERVENTION_TOKENS = 4096

#: The entropy-intervention columns printed (the saved table has them all).
ENTROPY_COLUMNS = [
    "value",
    "effect",
    "entropy_change",
    "baseline_entropy_change",
    "loss_change",
    "ln_scale_change",
    "baseline_ln_scale_change",
]


@dataclass
class DemoSummary:
    """What the demo measured (also written to ``summary.json``)."""

    out_dir: Path
    values: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _say(progress: bool, *lines: Any) -> None:
    if progress:
        for line in lines:
            print(line)


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    return df.to_string(index=False, float_format=lambda x: floatfmt.format(x))


def describe_family(family: Any) -> str:
    """A few lines on a seed family: sizes, per-seed training time and held-out loss."""
    info, cfg = family.info, family.config
    corpus = info.get("corpus") or {}
    lines = [
        f"seed family {cfg.name!r}: {len(family.models)} seeds, {info.get('n_params', 0):,}"
        f" parameters each ({cfg.n_layers} layers, d_model {cfg.d_model}, d_mlp {cfg.d_mlp},"
        f" vocab {info.get('vocab_size')})",
        f"  corpus: {corpus.get('n_documents', '?')} documents, {corpus.get('n_characters', 0):,}"
        f" characters; {info.get('n_train_tokens', 0):,} training tokens,"
        f" {info.get('n_held_out_tokens', 0):,} held out",
    ]
    for seed, loss, secs in zip(cfg.seeds, family.held_out_loss, family.train_seconds, strict=True):
        lines.append(f"  seed {seed}: held-out loss {loss:.3f}, trained in {secs:.0f} s")
    return "\n".join(lines)


def _neurons_to_explain(table: pd.DataFrame, min_count: int = 10) -> tuple[pd.DataFrame, str]:
    """The universal neurons; if there are fewer than ``min_count``, the top 5% by excess."""
    from tl_universality.analyses.neuron_stats import contrast_group

    mask, which = contrast_group(table, min_count)
    return table.loc[mask, ["layer", "neuron"]], which


@dataclass
class CausalTests:
    """The two causal tests on the top candidates (:func:`causal_tests`)."""

    entropy: Any  # EntropyInterventionResult
    candidate: tuple[int, int]
    null_space_share: float
    values: list[float]
    ablation: Any = None  # PathAblationResult, when the model has two layers or more
    pair: tuple[tuple[int, int], tuple[int, int]] | None = None
    score: float | None = None

    def save(self, out: Path) -> None:
        """Save both results where the report reads them."""
        self.entropy.save(Path(out) / files.ENTROPY_INTERVENTION)
        if self.ablation is not None:
            self.ablation.save(Path(out) / files.PATH_ABLATION)

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` records of the tests."""
        out: dict[str, Any] = {
            "entropy_candidate": neuron_name(*self.candidate),
            "entropy_effect": json.loads(self.entropy.effects().to_json(orient="records")),
        }
        if self.pair is not None:
            out["deactivation_pair"] = f"{neuron_name(*self.pair[0])} -> {head_name(*self.pair[1])}"
            out["path_ablation"] = self.ablation.summary()
        return out

    def describe(self) -> str:
        """The tests' outcome in a few lines."""
        effects = self.entropy.effects()
        lines = [
            f"Entropy candidate {neuron_name(*self.candidate)} (null-space share"
            f" {self.null_space_share:.2f}), fixed to {[round(v, 2) for v in self.values]}:",
            _table(effects[[c for c in ENTROPY_COLUMNS if c in effects]]),
        ]
        if self.pair is not None:
            effect = self.ablation.summary()
            lines += [
                f"\nAttention deactivation: {neuron_name(*self.pair[0])} ->"
                f" {head_name(*self.pair[1])} (score {self.score:.3f}); path ablation:",
                "  " + ", ".join(f"{k} {v:.3g}" for k, v in effect.items()),
            ]
        return "\n".join(lines)


def causal_tests(
    model: Any,
    tokens: Any,
    entropy_scores: pd.DataFrame,
    ranked: pd.DataFrame | None = None,
    *,
    scale: float = 1.0,
    max_tokens: int = INTERVENTION_TOKENS,
) -> CausalTests:
    """Run the entropy intervention on the top entropy candidate (fixed to 0 ... 4 x ``scale``,
    against 3 random baseline neurons) and the path ablation of the top deactivation pair.

    Args:
        model: The reference model.
        tokens: Tokens for the tests (at most ``max_tokens`` are used).
        entropy_scores: :func:`~tl_universality.analyses.entropy.entropy_neuron_scores`.
        ranked: The ranked (neuron, head) pairs of
            :func:`~tl_universality.analyses.attention.attention_deactivation_scores`, or None.
        scale: The largest typical activation (e.g. max ``|post_mean|``) the values scale with.
        max_tokens: Tokens used by each test.
    """
    from tl_universality.analyses.attention import path_ablation
    from tl_universality.analyses.entropy import entropy_intervention

    top = entropy_scores.iloc[0]
    candidate = (int(top.layer), int(top.neuron))
    values = np.linspace(0.0, 4.0 * max(scale, 1.0), 5).tolist()
    # Each value runs the candidate and its random baseline neurons twice (total, direct
    # effect), so a few thousand tokens suffice for the mean entropy.
    ent = entropy_intervention(
        model, [candidate], values, tokens, max_tokens=max_tokens, n_random_baseline=3
    )
    tests = CausalTests(ent, candidate, float(top.null_space_share), values)
    if ranked is not None and len(ranked):
        best = ranked.iloc[0]
        neuron = (int(best["layer"]), int(best["neuron"]))
        head = (int(best["head_layer"]), int(best["head_index"]))
        tests.ablation = path_ablation(model, neuron, head, tokens, max_tokens=max_tokens)
        tests.pair, tests.score = (neuron, head), float(best["score"])
    return tests


def run_demo(
    out_dir: str | Path = "tl_universality_demo",
    *,
    preset: str = "demo",
    progress: bool = True,
    wandb: bool = False,
    device: str = "cpu",
    max_tokens: int | None = None,
    wandb_group: str | None = None,
) -> DemoSummary:
    """Run the whole study offline and write results and the report to ``out_dir``.

    Args:
        out_dir: Results folder (created).
        preset: Seed-family preset, ``"demo"`` or ``"tiny"``.
        progress: Print the summaries and show progress bars.
        wandb: Also log the results to an (offline) wandb run in ``out_dir``.
        device: Where the models run.
        max_tokens: Use at most this many held-out tokens (default: all of them).
        wandb_group: The wandb group (default: the name of ``out_dir``).

    Examples:
        >>> run_demo("out", preset="tiny")  # doctest: +SKIP
    """
    from tl_universality.analyses.attention import attention_deactivation_scores
    from tl_universality.analyses.correlation import correlate
    from tl_universality.analyses.entropy import entropy_neuron_scores
    from tl_universality.analyses.families import explain, families, family_counts
    from tl_universality.analyses.neuron_stats import (
        CONTRAST_PROPERTIES,
        compare_universal,
        neuron_stats,
    )
    from tl_universality.analyses.roles import prediction_neurons, role_counts, token_set_scores
    from tl_universality.data.seeds import train_seed_family

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = DemoSummary(out)
    clock = time.perf_counter

    # 1. Corpus, tokenizer and seed family (trained once, then cached).
    t = clock()
    family = train_seed_family(preset, progress=progress, device=device)
    summary.seconds["family"] = clock() - t
    _say(progress, describe_family(family))
    ref, *others = family.models
    tokens = family.held_out_tokens()
    if max_tokens is not None:
        tokens = tokens.limit(max_tokens)
    summary.values.update(
        preset=preset,
        n_seeds=len(family.models),
        held_out_loss=[round(x, 4) for x in family.held_out_loss],
    )

    # 2. Universality: every neuron of seed 0 against every neuron of the others, one pass.
    t = clock()
    corr = correlate(ref, others, tokens, progress=progress, device=device)
    fingerprints = corr.config["model_weights"]  # hashed before ref's weights are processed
    corr.save(out / files.CORRELATION_DIR)
    summary.seconds["correlate"] = clock() - t
    share = corr.universal_share()
    headline = corr.summary()
    summary.values.update(headline)  # the one place the headline numbers are computed
    _say(
        progress,
        "\nUniversality (excess_corr > 0.5; baseline: random orthogonal rotation per layer):",
        _table(share),
        f"overall {summary.values['universal_share']:.2%} universal; excess_corr p99"
        f" {summary.values['excess_p99']:.3f}, max {summary.values['excess_max']:.3f}",
    )

    # 3. The neuron table joined with universality, and the paper's contrast. Weight statistics
    # assume TransformerLens's processed weights; processing leaves MLP activations unchanged.
    ref.process_weights_()
    t = clock()
    table = neuron_stats(ref, tokens, correlation=corr, progress=progress)
    table.to_parquet(out / files.NEURON_TABLE)
    summary.seconds["neuron_stats"] = clock() - t
    explained, which = _neurons_to_explain(table)
    contrast_table = table.assign(
        is_universal=table.set_index(["layer", "neuron"]).index.isin(
            explained.set_index(["layer", "neuron"]).index
        )
    )
    contrast = compare_universal(contrast_table, [c for c in CONTRAST_PROPERTIES if c in table])
    summary.values["contrast_group"] = which
    summary.values["contrast"] = json.loads(contrast.to_json(orient="records"))
    _say(
        progress,
        f"\nNeuron properties, {which} vs the rest:",
        contrast.to_string(index=False, float_format="{:.3f}".format),
    )

    # 4. Prediction / suppression / partition roles and the token sets they act on.
    t = clock()
    roles = prediction_neurons(table)
    roles.to_parquet(out / files.PREDICTION)
    counts = role_counts(roles)
    sets = token_set_scores(ref).best
    summary.seconds["roles"] = clock() - t
    summary.values["roles_by_layer"] = json.loads(counts.to_json(orient="index"))
    _say(progress, "\nRoles by layer (vocab_kurt > 10: prediction if skew > 0):", counts)
    top_sets = sets.sort_values("var_reduction", ascending=False).head(5)
    _say(progress, "Best token sets of the strongest neurons:", _table(top_sets))

    # 5. Families of the (most) universal neurons.
    t = clock()
    explanations = explain(ref, tokens, explained, progress=progress)
    explanations.to_parquet(out / files.EXPLANATIONS)
    labels = families(explanations)
    labels.to_parquet(out / files.FAMILIES)
    fam_counts = family_counts(labels)
    summary.seconds["families"] = clock() - t
    summary.values["family_counts"] = json.loads(fam_counts.to_json(orient="index"))
    _say(progress, f"\nFamilies of {which}:", fam_counts)

    # 6-7. The causal tests: the top entropy candidate fixed to a range of values (total vs
    # direct effect), and the top (neuron, later head) deactivation pair's path ablation.
    t = clock()
    ent_scores = entropy_neuron_scores(ref)
    ent_scores.to_parquet(out / files.ENTROPY_SCORES)
    ranked = None
    if ref.cfg.n_layers > 1:
        ranked = attention_deactivation_scores(ref).to_dataframe(top_k=50)
        ranked.to_parquet(out / files.ATTENTION_SCORES)
    scale = float(np.nanmax(np.abs(table["post_mean"]))) if "post_mean" in table else 1.0
    causal = causal_tests(ref, tokens, ent_scores, ranked, scale=scale)
    causal.save(out)
    summary.seconds["causal"] = clock() - t
    summary.values.update(causal.summary())
    ent = causal.entropy
    _say(progress, "", causal.describe())

    summary.values["seconds"] = {k: round(v, 1) for k, v in summary.seconds.items()}
    (out / files.SUMMARY).write_text(json.dumps(summary.values, indent=2, default=str))
    try:
        page = files.build_report(
            out, title=f"Universal neurons: offline {preset} family", model=ref, tokens=tokens
        )
    except ImportError as err:  # matplotlib is the optional `plot` extra
        page = f"not written ({err}; pip install 'tl_universality[plot]')"
    _say(progress, f"\nResults in {out}; report: {page}")

    if wandb:
        from tl_universality.cli.settings import RunSettings
        from tl_universality.core.protocol import model_name
        from tl_universality.outputs.wandb import log_results, run_location

        settings = RunSettings(
            "demo",
            models=tuple(
                {"name": model_name(m), "fingerprint": f}
                for m, f in zip(family.models, fingerprints, strict=True)
            ),  # fmt: skip
            family=preset,
            tokens=tokens.name,
            max_tokens=max_tokens,
            baseline=corr.baseline,
            options={"family_config": family.config.to_dict()},
        )
        results = {"correlation": corr, "neuron_table": table, "families": labels,
                   "explanations": explanations, "prediction_neurons": roles,
                   "entropy_scores": ent_scores, "entropy_intervention": ent}  # fmt: skip
        if causal.ablation is not None:
            results["path_ablation"] = causal.ablation
        group = wandb_group or out.resolve().name
        run = log_results(
            results, config=settings.to_dict(), out_dir=out, name=settings.run_name(), group=group
        )
        if run is not None:
            _say(progress, f"wandb: {run_location(run)}")
    return summary
