"""Entropy neurons and attention-deactivation neurons, with their causal tests, on a seed family.

Trains (or loads from the cache) the offline seed family, takes seed 0, and

1. ranks entropy-neuron candidates from the weights (output norm in the near-null space of W_U),
   then fixes the top candidate to a range of values at every position and reports the change of
   next-token entropy, loss, reciprocal rank and final LayerNorm scale: total effect, direct effect
   (final LayerNorm scale frozen), and random neurons of the same layer matched on norm;
2. scores every (neuron, later head) pair for pushing the head's query onto the BOS key, then
   path-ablates the top pair (the neuron removed from that head's query input only) and reports
   the change of the head's attention to BOS and output norm, and their correlation with the
   neuron's activation.

    python examples/circuit_roles.py                  # the tiny family (seconds)
    python examples/circuit_roles.py --family demo    # the demo family (minutes on a CPU)
    python examples/circuit_roles.py --plots out/     # also save the figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.data.seeds import train_seed_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny", choices=["tiny", "demo"])
    parser.add_argument(
        "--values",
        type=float,
        nargs="+",
        default=None,
        help="activations to fix the entropy candidate to (default: 0 to 8x its largest clean"
        " activation on a few sequences)",
    )
    parser.add_argument("--max-tokens", type=int, default=20_000, help="tokens for the tests")
    parser.add_argument("--plots", type=Path, default=None, help="folder for the figures")
    args = parser.parse_args()
    pd.set_option("display.width", 120)

    family = train_seed_family(args.family, progress=False)
    model = family.models[0]
    # Weight scores assume TransformerLens's processed weights; folding LayerNorm and centring
    # changes no activation and no output, only how the weights are written down.
    model.process_weights_()
    tokens = family.held_out_tokens().limit(args.max_tokens)
    print(f"{args.family} family, seed 0: {model.cfg.n_layers} layers x {model.cfg.d_mlp} neurons")

    # -- Entropy neurons -------------------------------------------------------------------------
    scores = model.universality.entropy_neuron_scores()
    print(f"\nEntropy-neuron candidates (null space: {scores.attrs['null_space_dim']} directions):")
    print(scores.head(5).to_string(index=False, float_format="{:.4g}".format))
    top = scores.iloc[0]
    neuron = (int(top["layer"]), int(top["neuron"]))
    values = args.values or _default_values(model, neuron, tokens)
    result = model.universality.entropy_intervention(
        neuron, values, tokens, n_random_baseline=5, seed=0
    )
    print(f"\nFixing neuron {neuron[0]}.{neuron[1]} (clean: {_fmt(result.clean)})")
    print(result.note)
    columns = ["value", "effect", "entropy_change", "baseline_entropy_change"]
    columns += ["loss_change", "ln_scale_change"]
    summary = result.summary()
    print(summary[columns].to_string(index=False, float_format="{:+.4f}".format))
    total = summary[summary["effect"] == "total"]
    direct = summary[summary["effect"] == "direct"]
    spread = total["entropy_change"].max() - total["entropy_change"].min()
    direct_spread = direct["entropy_change"].max() - direct["entropy_change"].min()
    baseline = total["baseline_entropy_change"]
    print(
        f"entropy range over the values: total {spread:.4f} nats, direct {direct_spread:.4f},"
        f" random baseline (total) {baseline.max() - baseline.min():.4f}"
    )
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        result.plot(metric="entropy").savefig(args.plots / "entropy_intervention.png", dpi=150)

    # -- Attention deactivation neurons ----------------------------------------------------------
    if model.cfg.n_layers < 2:
        print(
            "\nThe model has one layer: no head reads an MLP neuron's output, so there are no"
            " deactivation pairs. Try --family demo (2 layers)."
        )
        return
    deactivation = model.universality.attention_deactivation_scores(n_random=1, seed=0)
    table = deactivation.to_dataframe(top_k=5)
    print("\nTop BOS-deactivation pairs (score = w_out . W_Q k_BOS / attn_scale):")
    print(table.to_string(index=False, float_format="{:.4g}".format))
    best = table.iloc[0]
    pair = (int(best["layer"]), int(best["neuron"]))
    head = (int(best["head_layer"]), int(best["head"]))
    ablation = model.universality.path_ablation(pair, head, tokens)
    print(f"\nPath ablation of neuron {pair[0]}.{pair[1]} from head {head[0]}.{head[1]}'s query:")
    for key, value in ablation.summary().items():
        print(f"  {key:42s} {value:+.4f}")

    if args.plots is not None:
        deactivation.plot(head=head).savefig(args.plots / "deactivation_scores.png", dpi=150)
        ablation.plot().savefig(args.plots / "path_ablation.png", dpi=150)
        print(f"\nfigures written to {args.plots}/")


def _default_values(model, neuron: tuple[int, int], tokens) -> list[float]:
    """0 to 8x the neuron's largest activation on a few sequences (at least 1)."""
    from tl_universality.units.hooks import run_with_interventions

    batch = next(iter(tokens.batches(8))).to(model.cfg.device)
    name = f"blocks.{neuron[0]}.mlp.hook_post"
    _, cache = run_with_interventions(model, batch, capture=[name])
    peak = max(float(cache[name][..., neuron[1]].max()), 1.0)
    return [0.0, peak, 2 * peak, 4 * peak, 8 * peak]


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


if __name__ == "__main__":
    main()
