"""A VISIT flow graph of one prompt on the offline seed family, with the universality overlay.

Trains (or loads from the cache) the seed family, takes seed 0 and

1. correlates its neurons with the other seeds (a short run) to know which are universal;
2. builds the flow graph of the prompt at the last position (and at an earlier one), with the
   universal neurons marked, and prints what the strongest heads and neurons read as;
3. writes the interactive page (``flow_graph.html``, opens offline), the static picture
   (``flow_graph.png``) and the saved tables (``flow_graph/``);
4. measures VISIT's two observations over the held-out tokens: the LayerNorm filter per layer and
   the always-on neurons.

    python examples/flow_graph.py                   # the tiny family (seconds)
    python examples/flow_graph.py --family demo     # the demo family (minutes on a CPU)
    python examples/flow_graph.py --out flow_out --prompt "for i in range(10):"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.analyses.correlation import correlate
from tl_universality.data.seeds import train_seed_family
from tl_universality.flow.observations import always_on_neurons, layernorm_filter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny")
    parser.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog. The")
    parser.add_argument("--out", default="flow_out")
    parser.add_argument("--max-tokens", type=int, default=20_000)
    args = parser.parse_args()
    out = Path(args.out)

    family = train_seed_family(args.family, progress=False)
    model, others = family.models[0], family.models[1:]
    held_out = family.held_out_tokens()
    correlation = correlate(model, others, held_out, max_tokens=args.max_tokens, progress=False)
    print(f"{int(correlation.is_universal().sum())} universal neurons in seed 0")

    graph = model.universality.flow_graph(args.prompt, correlation=correlation)
    print(graph.describe())
    marked = graph.nodes[graph.nodes["is_universal"]]
    for row in marked.itertuples():
        print(f"  universal {row.id}: excess_corr {row.excess_corr:.2f}, reads as {row.top_tokens}")
    graph.save(out / "flow_graph")
    graph.to_html(out / "flow_graph.html")
    graph.plot().savefig(out / "flow_graph.png", dpi=110)
    print(f"wrote {out / 'flow_graph.html'} and {out / 'flow_graph.png'}")

    earlier = model.universality.flow_graph(args.prompt, position=3, heads=1, neurons=(3, 1))
    print(earlier.describe(3))

    lens = layernorm_filter(model, held_out, max_tokens=args.max_tokens, progress=False)
    print("LayerNorm filter (mass after LN minus raw), per layer:")
    print(lens[["layer", "function_delta", "content_delta"]].to_string(index=False))
    on = always_on_neurons(model, held_out, max_tokens=args.max_tokens, progress=False)
    print(f"always-on neurons: {int(on['always_on'].sum())} of {len(on)}")
    print(on.sort_values("act_freq", ascending=False).head(5).to_string(index=False))


if __name__ == "__main__":
    main()
