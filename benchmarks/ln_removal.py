"""LayerNorm removal on an offline seed family: losses, time, and universality before vs after.

For every seed of the family: remove the LayerNorms by fine-tuning (paper defaults: 300 steps, the
2025 schedule), and, as the papers' control, fine-tune the same way with the LayerNorms kept.
Then correlate seed 0 with the other seeds on the same held-out tokens, for the original, the
LN-free and the control family, and print the universality figures side by side, with the
entropy-neuron direct/total split and the exactness of direct logit attribution before and after.

Run (about a minute for ``tiny`` on one core; ``demo`` trains its family first)::

    nice -n 10 .venv/bin/python benchmarks/ln_removal.py --family tiny
"""

from __future__ import annotations

import argparse
import time

import torch

from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.entropy import entropy_intervention, entropy_neuron_scores
from tl_universality.data.seeds import train_seed_family
from tl_universality.ln_removal import LNRemovalConfig, direct_logit_attribution, remove_layernorm


def universality(models, held_out, bos):
    result = correlate(models[0], models[1:], held_out, bos_token_id=bos, progress=False)
    df = result.to_dataframe()
    return {
        "universal_share": float(df["is_universal"].mean()),
        "median_max_corr": float(df["mean_corr"].median()),
        "median_baseline": float(df["mean_baseline"].median()),
        "max_excess": float(df["excess_corr"].max()),
    }


def entropy_split(model, neuron, tokens):
    """Entropy change (fixing the neuron to 5x its largest typical value) total vs direct."""
    out = entropy_intervention(model, neuron, [0.0, 3.0], tokens, n_random_baseline=0)
    s = out.summary()
    s = s[s["value"] == 3.0].set_index("effect")["entropy_change"]
    return float(s["total"]), float(s["direct"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny", help="seed-family preset (tiny, demo)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-control", action="store_true", help="skip the keep-LN control")
    args = parser.parse_args()
    torch.set_num_threads(1)

    family = train_seed_family(args.family, progress=False)
    held = family.held_out_tokens().to_tensor()
    train = family.train_tokens().to_tensor()
    bos = family.tokenizer.bos_token_id
    config = LNRemovalConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size)
    print(
        f"family {args.family}: {len(family.models)} seeds, {train.shape[0]} training and"
        f" {held.shape[0]} held-out sequences of {held.shape[1]} tokens"
    )
    print(f"settings: {config.to_dict()}")
    runs = {"LN-free": [], "control (LN kept)": []}
    print("\nseed  run                 steps  tokens    seconds  held-out before  after   gap")
    for seed, model in zip(family.config.seeds, family.models, strict=True):
        kinds = [("LN-free", False)] + ([] if args.no_control else [("control (LN kept)", True)])
        for label, keep in kinds:
            start = time.perf_counter()
            r = remove_layernorm(
                model, train, config, held_out=held, keep_layernorm=keep, progress=False
            )
            s = r.summary()
            runs[label].append(r.model)
            print(
                f"{seed:>4}  {label:<18} {s['steps']:>6} {s['tokens']:>8} "
                f"{time.perf_counter() - start:>9.1f}  {s['held_out_loss_before']:>15.4f}"
                f"  {s['held_out_loss_after']:.4f}  {s['held_out_loss_gap']:+.4f}"
            )

    print("\nuniversality of seed 0 vs the others on the same held-out tokens:")
    print("family              universal_share  median_max_corr  median_baseline  max_excess")
    families = {"original": family.models, **{k: v for k, v in runs.items() if v}}
    for label, models in families.items():
        u = universality(models, held, bos)
        print(
            f"{label:<18}  {u['universal_share']:>15.4f}  {u['median_max_corr']:>15.4f}"
            f"  {u['median_baseline']:>15.4f}  {u['max_excess']:>10.4f}"
        )

    print("\nseed 0: top entropy-neuron candidate, entropy change at activation 3 (total/direct),")
    print("and direct logit attribution (max mean |share - removal effect|):")
    top = entropy_neuron_scores(family.models[0]).iloc[0]
    neuron = (int(top["layer"]), int(top["neuron"]))
    for label, models in families.items():
        total, direct = entropy_split(models[0], neuron, held[:64])
        dla = direct_logit_attribution(models[0], held[:32]).summary()
        print(
            f"{label:<18}  L{neuron[0]}N{neuron[1]}: total {total:+.4f}  direct {direct:+.4f}"
            f"   DLA exact={dla['exact']} ablation gap {dla['max_ablation_gap']:.2e}"
        )


if __name__ == "__main__":
    main()
