"""Are SAE latents more universal across seeds than neurons? Measured on an offline seed family.

For a seed family (:func:`tl_universality.data.seeds.train_seed_family`) this trains one SAE per
seed
model on the same site (:func:`tl_universality.analyses.sae.train_family_saes`, on the family's
training
split) and measures on the held-out split, with the project's correlation engine:

- neurons: every MLP neuron (``mlp.hook_post``, all layers) of seed 0 against the other seeds,
  the paper's analysis (docs/concepts.md, "Universality"): ``excess_corr = mean_m max_corr_m −
  mean_m baseline_m``
  with the rotation baseline; universal iff > 0.5;
- latents: every SAE latent of seed 0's SAE against the other seeds' SAEs, the same statistic
  (:func:`tl_universality.analyses.sae.latent_universality`);
- the weight-based view of the latent match: cosine of the matched latents' decoder directions
  read through each model's unembedding (:func:`tl_universality.analyses.sae.decoder_similarity`),
  next to
  random pairs;
- a control: seed 0's SAE against a second SAE trained on the same model with another SAE seed
  (how much of the feature set survives the SAE's own randomness);
- SAE quality on held-out tokens: explained variance, L0 and the share of dead latents.

Usage::

    nice .venv/bin/python benchmarks/sae_universality.py                  # demo family
    nice .venv/bin/python benchmarks/sae_universality.py --family tiny    # seconds, for a check

The first run trains the family and the SAEs (cached under ``cache_root()``); later runs load.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.sae import (
    SAEUnits,
    decoder_similarity,
    latent_universality,
    train_family_saes,
    train_sae,
)
from tl_universality.data.seeds import train_seed_family
from tl_universality.units.activations import collect_activations


def sae_quality(model, sae, tokens) -> dict[str, float]:
    """Explained variance, L0 and dead share of ``sae`` on ``tokens`` (held out)."""
    hook = SAEUnits(sae).hook_name
    acts, latents = collect_activations(
        [model, model], tokens, units=[[hook], [SAEUnits(sae)]], progress=False
    )
    with torch.no_grad():
        recon = sae.decode(latents)
    mse = (recon - acts).pow(2).sum(-1).mean()
    total = (acts - acts.mean(0)).pow(2).sum(-1).mean()
    return {
        "explained_var": float(1 - mse / total),
        "l0": float((latents > 0).float().sum(-1).mean()),
        "dead_share": float(((latents > 0).sum(0) == 0).float().mean()),
    }


def share_row(name: str, result, units_per_layer: str = "") -> dict[str, object]:
    excess = result.excess_correlation.numpy()
    alive = ~np.isnan(excess)
    return {
        "units": name,
        "n": int(result.units.n_units),
        "alive": int(alive.sum()),
        "universal": int((excess > 0.5).sum()),
        "universal_%": 100 * float((excess > 0.5).sum()) / result.units.n_units,
        "universal_%_of_alive": 100 * float((excess[alive] > 0.5).mean()),
        "median_max_corr": float(np.nanmedian(result.mean_corr.numpy())),
        "median_baseline": float(np.nanmedian(result.mean_baseline.numpy())),
        "median_excess": float(np.nanmedian(excess)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="demo", help="seed-family preset (demo or tiny)")
    parser.add_argument("--n-models", type=int, default=3, help="seeds used (reference first)")
    parser.add_argument("--hook", default=None,
                        help="SAE site (default: the last layer's hook_mlp_out)")  # fmt: skip
    parser.add_argument("--expansion", type=int, default=4, help="d_sae / d_in")
    parser.add_argument("--l1", type=float, default=3.0, help="L1 coefficient")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-tokens", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="held-out tokens for the correlations (default all)")  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()

    t0 = time.perf_counter()
    family = train_seed_family(args.family, progress=False)
    models = family.models[: args.n_models]
    cfg = models[0].cfg
    hook = args.hook or f"blocks.{cfg.n_layers - 1}.hook_mlp_out"
    d_in = int(cfg.d_model) if hook.endswith(("hook_mlp_out", "resid_post", "resid_pre")) else None
    if d_in is None:
        raise SystemExit(f"Give the width of {hook}: only residual-stream sites are automatic.")
    d_sae = args.expansion * d_in
    t1 = time.perf_counter()
    saes = train_family_saes(
        family, hook, d_sae=d_sae, l1_coefficient=args.l1, lr=args.lr,
        total_tokens=args.train_tokens, batch_size=args.batch_size, progress=False,
    )[: args.n_models]  # fmt: skip
    t2 = time.perf_counter()

    held = family.held_out_tokens()
    if args.eval_tokens:
        held = held.limit(args.eval_tokens)
    common = dict(baseline="rotation", n_draws=5, progress=False)
    neurons = correlate(models[0], models[1:], held, **common)
    last = cfg.n_layers - 1
    neurons_last = correlate(models[0], models[1:], held, units=f"blocks.{last}.mlp.hook_post",
                             **common)  # fmt: skip
    latents = latent_universality(models, saes, held, **common)
    # Control: the same model, an SAE trained with another seed. How much of a feature set
    # recurs when only the SAE's own randomness differs (an upper reference for the seeds).
    resampled = train_sae(
        models[0], family.train_tokens(), hook, d_sae=d_sae, l1_coefficient=args.l1,
        lr=args.lr, total_tokens=args.train_tokens, batch_size=args.batch_size, seed=1,
        progress=False,
    )  # fmt: skip
    control = latent_universality([models[0], models[0]], [saes[0], resampled], held, **common)
    t3 = time.perf_counter()

    rows = [
        share_row(f"neurons, all {cfg.n_layers} layers (mlp.hook_post)", neurons),
        share_row(f"neurons, layer {last} (mlp.hook_post)", neurons_last),
        share_row(f"SAE latents ({hook}, d_sae={d_sae})", latents),
        share_row("control: same model, SAE seed 1 vs 0", control),
    ]
    table = pd.DataFrame(rows).set_index("units")

    # The weight-based view of the latent match, per other seed, through the unembeddings.
    universal = latents.is_universal().numpy()
    sims = []
    for m in range(1, len(models)):
        sim = decoder_similarity(saes[0], saes[m], latents, other=m - 1,
                                 models=(models[0], models[m]))  # fmt: skip
        sims.append(
            {
                "other_seed": family.config.seeds[m],
                "dec_cos_universal": float(np.nanmedian(sim["dec_cos"][universal]))
                if universal.any()
                else float("nan"),
                "dec_cos_all": float(np.nanmedian(sim["dec_cos"])),
                "dec_cos_random": float(np.nanmedian(sim["random_dec_cos"])),
            }
        )
    same = decoder_similarity(saes[0], resampled, control)
    sims.append(
        {
            "other_seed": "control (same model, raw W_dec)",
            "dec_cos_universal": float(
                np.nanmedian(same["dec_cos"][control.is_universal().numpy()])
            ),
            "dec_cos_all": float(np.nanmedian(same["dec_cos"])),
            "dec_cos_random": float(np.nanmedian(same["random_dec_cos"])),
        }
    )
    quality = pd.DataFrame(
        [{"seed": s, **sae_quality(m, sae, held)} for s, m, sae in
         zip(family.config.seeds, models, saes, strict=False)]
    )  # fmt: skip

    pd.set_option("display.width", 200)
    print(f"family {args.family!r}: {len(models)} seeds, {neurons.n_tokens} held-out tokens")
    print(f"SAEs: {hook}, d_in={d_in}, d_sae={d_sae}, l1={args.l1}, lr={args.lr},"
          f" {args.train_tokens} training tokens, batch {args.batch_size}")  # fmt: skip
    print()
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print()
    print("median cosine of matched decoder directions (through W_U) vs random pairs:")
    print(pd.DataFrame(sims).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print()
    print("SAE quality on held-out tokens:")
    print(quality.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print()
    print(f"time: family {t1 - t0:.0f} s, SAEs {t2 - t1:.0f} s, correlations {t3 - t2:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "table": rows,
                    "decoder": sims,
                    "quality": quality.to_dict("records"),
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
