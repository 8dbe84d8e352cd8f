"""Remove the LayerNorms of a seed family by fine-tuning and compare its universality.

Trains (or loads from the cache) the offline seed family, removes every LayerNorm of each seed
(``model.universality.remove_layernorm``), reports the held-out loss before and after, checks that
direct logit attribution is exact on the LN-free model, and correlates seed 0 with the other seeds
on the same held-out tokens, for the original and the LN-free family.

    python examples/ln_removal.py                   # the tiny family (under a minute)
    python examples/ln_removal.py --preset demo     # the demo family (minutes on a CPU)
    python examples/ln_removal.py --out runs/       # also save the results and the loss curve
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.data.seeds import train_seed_family


def universality(models, tokens, bos):
    result = models[0].universality.correlate(models[1:], tokens, bos_token_id=bos, progress=False)
    df = result.to_dataframe()
    return (
        f"universal share {df['is_universal'].mean():.4f}, median max-corr"
        f" {df['mean_corr'].median():.4f}, median baseline {df['mean_baseline'].median():.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="folder to save results into")
    args = parser.parse_args()
    torch.set_num_threads(1)

    family = train_seed_family(args.preset)
    held = family.held_out_tokens().to_tensor()
    train = family.train_tokens().to_tensor()
    ln_free = []
    for seed, model in zip(family.config.seeds, family.models, strict=True):
        result = model.universality.remove_layernorm(train, held_out=held, steps=args.steps)
        s = result.summary()
        print(
            f"seed {seed}: {s['steps']} steps, {s['tokens']} tokens, {s['seconds']:.0f} s;"
            f" held-out loss {s['held_out_loss_before']:.4f} -> {s['held_out_loss_after']:.4f}"
        )
        ln_free.append(result.model)
        if args.out is not None:
            result.save(args.out / f"seed{seed}-noLN")
            result.plot().savefig(args.out / f"seed{seed}-noLN.png")

    dla = ln_free[0].universality.direct_logit_attribution(held[:16]).summary()
    print(
        f"direct logit attribution on the LN-free seed 0: exact={dla['exact']},"
        f" largest error {max(dla['max_sum_error'], dla['max_ablation_gap']):.1e}"
    )
    bos = family.tokenizer.bos_token_id
    print("original:", universality(family.models, held, bos))
    print("LN-free: ", universality(ln_free, held, bos))


if __name__ == "__main__":
    main()
