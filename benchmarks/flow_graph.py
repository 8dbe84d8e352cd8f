"""Flow graphs on the offline seed families: what the graph of one prompt holds, and its cost.

For each family (``tiny`` always, trained on first use; ``demo`` only when it is already in the
cache, never trained here) this builds the VISIT flow graph of one prompt on seed 0 at the last
position and prints the node and edge counts, what the strongest heads and neurons read as, the
final reading's rank of the target token, and the time to build the graph (median of ``--repeat``
builds, after one warm-up build; one CPU thread).

    python benchmarks/flow_graph.py
    python benchmarks/flow_graph.py --prompt "def main(args):" --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tl_universality.data.seeds import family_folder, train_seed_family
from tl_universality.flow.graph import flow_graph

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown"


def describe(preset: str, prompt: str, repeat: int) -> None:
    family = train_seed_family(preset, progress=False, num_threads=1)
    model = family.models[0]
    graph = flow_graph(model, prompt)  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        graph = flow_graph(model, prompt)
        times.append(time.perf_counter() - started)
    c = family.config
    print(f"== {preset} family, seed {c.seeds[0]}: {c.n_layers} layers, d_model {c.d_model},"
          f" {c.n_heads} heads, d_mlp {c.d_mlp}, d_vocab {model.cfg.d_vocab}")  # fmt: skip
    print(f"prompt {prompt!r} ({len(graph.meta['tokens'])} tokens)")
    print(graph.describe(6))
    counts = graph.nodes["kind"].value_counts().to_dict()
    print(f"node kinds: {counts}")
    print(f"edge kinds: {graph.edges['kind'].value_counts().to_dict()}")
    residuals = graph.nodes[graph.nodes["kind"].str.startswith("resid")]
    for row in residuals.itertuples():
        tops = ", ".join(repr(t) for t in row.top_tokens[:3])
        print(f"  {row.id:>14}: [{tops}] target rank {row.target_rank},"
              f" p(target) {row.target_prob:.3f}, entropy {row.entropy:.2f}")  # fmt: skip
    print(f"build time: median {statistics.median(times) * 1e3:.1f} ms over {repeat} builds"
          f" (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    describe("tiny", args.prompt, args.repeat)
    if (family_folder("demo") / "family.json").is_file():
        describe("demo", args.prompt, args.repeat)
    else:
        print(f"== demo family not cached ({family_folder('demo')}): skipped, not trained here")


if __name__ == "__main__":
    main()
