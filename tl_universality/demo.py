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
    universal = table[table["is_universal"]]
    if len(universal) >= min_count:
        return universal[["layer", "neuron"]], "universal neurons (excess_corr > 0.5)"
    n = max(min_count, int(round(0.05 * len(table))))
    top = table.nlargest(n, "excess_corr")
    return top[["layer", "neuron"]], f"the {n} most universal neurons (top 5% by excess_corr)"


def run_demo(
    out_dir: str | Path = "tl_universality_demo",
    *,
    preset: str = "demo",
    progress: bool = True,
    wandb: bool = False,
    device: str = "cpu",
    max_tokens: int | None = None,
) -> DemoSummary:
    """Run the whole study offline and write results and the report to ``out_dir``.

    Args:
        out_dir: Results folder (created).
        preset: Seed-family preset, ``"demo"`` or ``"tiny"``.
        progress: Print the summaries and show progress bars.
        wandb: Also log the results to an (offline) wandb run in ``out_dir``.
        device: Where the models run.
        max_tokens: Use at most this many held-out tokens (default: all of them).

    Examples:
        >>> run_demo("out", preset="tiny")  # doctest: +SKIP
    """
    from tl_universality.analyses.attention import attention_deactivation_scores, path_ablation
    from tl_universality.analyses.correlation import correlate
    from tl_universality.analyses.entropy import entropy_intervention, entropy_neuron_scores
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
        n_tokens=tokens.n_tokens,
    )

    # 2. Universality: every neuron of seed 0 against every neuron of the others, one pass.
    t = clock()
    corr = correlate(ref, others, tokens, progress=progress, device=device)
    corr.save(out / files.CORRELATION_DIR)
    summary.seconds["correlate"] = clock() - t
    share = corr.universal_share()
    headline = corr.summary()
    summary.values.update(
        {
            key: headline[key]
            for key in (
                "universal_share",
                "n_universal",
                "median_max_corr",
                "median_baseline",
                "excess_p99",
                "excess_max",
            )
        }
    )
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

    # 6. Entropy neurons: the top candidate, fixed to a range of values (total vs direct effect).
    t = clock()
    ent_scores = entropy_neuron_scores(ref)
    ent_scores.to_parquet(out / files.ENTROPY_SCORES)
    top = ent_scores.iloc[0]
    scale = float(np.nanmax(np.abs(table["post_mean"]))) if "post_mean" in table else 1.0
    values = np.linspace(0.0, 4.0 * max(scale, 1.0), 5).tolist()
    # Each value runs the candidate and its random baseline neurons twice (total, direct
    # effect), so a few thousand tokens suffice for the mean entropy.
    ent = entropy_intervention(
        ref,
        [(int(top.layer), int(top.neuron))],
        values,
        tokens,
        max_tokens=INTERVENTION_TOKENS,
        n_random_baseline=3,
    )
    ent.save(out / files.ENTROPY_INTERVENTION)
    summary.seconds["entropy"] = clock() - t
    ent_summary = ent.effects()
    summary.values["entropy_candidate"] = neuron_name(top.layer, top.neuron)
    summary.values["entropy_effect"] = json.loads(ent_summary.to_json(orient="records"))
    _say(
        progress,
        f"\nEntropy candidate {neuron_name(top.layer, top.neuron)} (null-space share"
        f" {top.null_space_share:.2f}), fixed to {[round(v, 2) for v in values]}:",
        _table(ent_summary[[c for c in ENTROPY_COLUMNS if c in ent_summary]]),
    )

    # 7. Attention-deactivation: the top (neuron, later head) pair and its path ablation.
    if ref.cfg.n_layers > 1:
        t = clock()
        att = attention_deactivation_scores(ref)
        ranked = att.to_dataframe(top_k=50)
        ranked.to_parquet(out / files.ATTENTION_SCORES)
        best = ranked.iloc[0]
        neuron = (int(best["layer"]), int(best["neuron"]))
        head = (int(best["head_layer"]), int(best["head_index"]))
        ablation = path_ablation(ref, neuron, head, tokens, max_tokens=INTERVENTION_TOKENS)
        effect = ablation.summary()
        ablation.save(out / files.PATH_ABLATION)
        summary.seconds["attention"] = clock() - t
        summary.values["deactivation_pair"] = f"{neuron_name(*neuron)} -> {head_name(*head)}"
        summary.values["path_ablation"] = effect
        _say(
            progress,
            f"\nAttention deactivation: {neuron_name(*neuron)} ->"
            f" {head_name(*head)} (score {best.score:.3f}); path ablation:",
            "  " + ", ".join(f"{k} {v:.3g}" for k, v in effect.items()),
        )

    summary.values["seconds"] = {k: round(v, 1) for k, v in summary.seconds.items()}
    (out / files.SUMMARY).write_text(json.dumps(summary.values, indent=2, default=str))
    try:
        page = files.build_report(out, title=f"Universal neurons: offline {preset} family")
    except ImportError as err:  # matplotlib is the optional `plot` extra
        page = f"not written ({err}; pip install 'tl_universality[plot]')"
    _say(progress, f"\nResults in {out}; report: {page}")

    if wandb:
        from tl_universality.outputs.wandb import log_results

        log_results(
            [corr, table, labels, ent, roles],
            config={"preset": preset, **family.config.to_dict()},
            out_dir=out,
        )
    return summary
