"""Issue 18, item 3: how the excess-correlation tail and the baseline move with training.

Trains (or loads) seed families with checkpoints and prints the training curve of each, one row
per (checkpoint, layer), plus the final checkpoint under both token conventions (the paper's,
BOS + padding + newline excluded, and BOS/padding only). Single-threaded and niced: run it once.

    nice -n 19 .venv/bin/python benchmarks/training_curve.py --out curve_results.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.training_curve import universality_over_training
from tl_universality.data.seeds import PRESETS, train_seed_family

SETTINGS = {
    # The demo shape on docstrings + the standard library's source (docstrings alone overfit).
    "demo+src": (
        PRESETS["demo"].replace(name="demo-src", steps=1200, seeds=(0, 1), include_source=True),
        [0, 100, 200, 400, 800],
    ),
    # One layer, a 4x wider MLP.
    "L1-m2048+src": (
        PRESETS["demo"].replace(
            name="l1-m2048-src", n_layers=1, d_mlp=2048, steps=600, seeds=(0, 1),
            include_source=True,
        ),
        [150, 300],
    ),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--max-tokens", type=int, default=30_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.settings:
        config, steps = SETTINGS[name]
        t0, c0 = time.perf_counter(), time.process_time()
        family = train_seed_family(config, checkpoints=steps, num_threads=1, progress=False)
        t1, c1 = time.perf_counter(), time.process_time()
        curve = universality_over_training(family, "all", max_tokens=args.max_tokens, n_draws=2)
        t2, c2 = time.perf_counter(), time.process_time()
        table = curve.to_dataframe()
        print(f"## {name}: train {t1 - t0:.0f} s wall / {c1 - c0:.0f} s CPU (2 seeds),"
              f" curve {t2 - t1:.0f} s wall / {c2 - c1:.0f} s CPU", flush=True)  # fmt: skip
        print(table.to_string(index=False, float_format="{:.3f}".format), flush=True)
        bos = family.tokenizer.bos_token_id
        held = family.held_out_tokens().limit(args.max_tokens)
        both = {}
        for label, exclude in (("paper (BOS+newline)", None), ("BOS only", [bos])):
            result = correlate(family.models[0], family.models[1:], held, n_draws=2,
                               exclude_token_ids=exclude, progress=False)  # fmt: skip
            both[label] = result.summary()
            print(f"final, {label}: {json.dumps(both[label])}", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                record = {"setting": name, "config": config.to_dict(), "steps": curve.steps,
                          "train_wall_s": t1 - t0, "train_cpu_s": c1 - c0,
                          "curve_wall_s": t2 - t1, "curve_cpu_s": c2 - c1,
                          "table": table.to_dict("records"), "conventions": both,
                          "seconds_per_seed": family.train_seconds}  # fmt: skip
                f.write(json.dumps(record, default=str) + "\n")


if __name__ == "__main__":
    main()
