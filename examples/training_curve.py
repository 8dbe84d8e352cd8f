"""When do universal neurons appear? Universality at each training checkpoint.

Offline (default): trains (or loads) a seed family with checkpoints, then correlates seed 0 with
the other seeds at every checkpoint on the held-out tokens. With ``--hub`` (needs the internet):
the Stanford CRFM GPT-2 seeds at chosen checkpoint values instead.

    python examples/training_curve.py                                # tiny family (a minute)
    python examples/training_curve.py --preset demo --steps 0 100 200 300
    python examples/training_curve.py --plot docs/images/training_curve_tiny.png
    python examples/training_curve.py --hub --steps 0 1000 10000 400000 --max-tokens 1000000
"""

from __future__ import annotations

import argparse

from tl_universality.analyses.training_curve import universality_over_training
from tl_universality.data.seeds import PRESETS, train_seed_family

COLUMNS = ["step", "tokens_seen", "loss", "layer", "universal_share", "median_max_corr",
           "median_baseline", "excess_p99", "excess_max", "participation_ratio"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, nargs="+", default=None)
    parser.add_argument("--hub", action="store_true", help="Stanford GPT-2 small a and b")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--plot", default=None, help="save the figure here")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.hub:
        spec = ["stanford-gpt2-small-a", "stanford-gpt2-small-b"]
        steps = args.steps or [0, 1000, 10000, 400000]
    else:
        config = PRESETS[args.preset]
        steps = args.steps or [round(config.steps * k / 4) for k in range(4)]
        spec = train_seed_family(config, checkpoints=steps, num_threads=1, device=args.device)
        steps = "all"
    curve = universality_over_training(
        spec, steps, max_tokens=args.max_tokens, device=args.device, n_draws=2
    )
    print(curve.to_dataframe()[COLUMNS].to_string(index=False, float_format="{:.3f}".format))
    print(curve)
    first = curve.first_exceeds(0.3)
    print("\nfirst checkpoint at which a neuron's excess correlation exceeds 0.3:")
    print(first[first["first_step"] >= 0].head(10).to_string(index=False))
    if args.plot:
        curve.plot().savefig(args.plot, dpi=110)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
