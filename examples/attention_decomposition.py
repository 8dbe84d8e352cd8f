"""Sparse attention decomposition and head-to-head circuit tracing, offline and on GPT-2 small.

1. The planted model: a hand-built circuit where head L0H0 sends what L1H0 reads; the trace finds
   exactly that edge and the local intervention confirms it against a random subspace.
2. The tiny seed family (offline): how many singular directions carry each firing, and the traced
   graph from the top layer's heads, written as GraphML and an interactive HTML page.
3. GPT-2 small on IOI-style prompts (only when the model hub is reachable): tracing the name
   movers L9H9, L9H6 and L10H0 from the end position, with the IO - S logit difference.

    python examples/attention_decomposition.py                 # 1 and 2 (seconds)
    python examples/attention_decomposition.py --out traces/   # also write the files
    python examples/attention_decomposition.py --gpt2          # also 3 (downloads GPT-2 small)
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.attention_decomposition.planted import planted_circuit
from tl_universality.attention_decomposition.prompts import ioi_prompts
from tl_universality.data.seeds import train_seed_family


def online(host: str = "huggingface.co") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write GraphML and HTML files here")
    parser.add_argument("--gpt2", action="store_true", help="also trace GPT-2 small on IOI")
    args = parser.parse_args()
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    print("1. planted circuit")
    model, tokens = planted_circuit()
    trace = model.universality.trace_circuit(tokens, ["L1H0"])
    print("   head-to-head edges:", sorted(trace.head_edges()))
    effects = model.universality.intervene_on_signal(tokens, trace, modes=["local"])
    print(effects.by_edge().to_string(index=False, float_format="{:.2f}".format))

    print("\n2. tiny seed family, seed 0")
    family = train_seed_family("tiny", progress=False)
    model = family.models[0]
    tokens = family.held_out_tokens().to_tensor()[:16]
    for head in range(model.cfg.n_heads):
        dec = model.universality.decompose_attention(tokens, 1, head)
        fires = (dec.attention >= 0.5) & (dec.src > 0)
        print(f"   L1H{head}: {int(fires.sum())} firings, median"
              f" {dec.n_selected[fires].double().median():.0f} of {dec.terms.shape[1]}"
              " directions per firing")  # fmt: skip
    roots = [(1, h) for h in range(model.cfg.n_heads)]
    trace = model.universality.trace_circuit(tokens, roots, dest=None)
    print("  ", trace.summary())
    print(trace.edges.to_string(index=False, float_format="{:.2f}".format))
    if out:
        trace.to_graphml(out / "tiny.graphml")
        trace.to_html(out / "tiny.html")

    if not args.gpt2:
        return
    if not online():
        print("\n3. GPT-2 small: the model hub is unreachable, skipped")
        return
    from transformer_lens import HookedTransformer

    print("\n3. GPT-2 small on IOI prompts")
    gpt2 = HookedTransformer.from_pretrained("gpt2")
    prompts = ioi_prompts(32, seed=0, templates=prompts_of_one_length())
    ids, io_s, end = prompts.tokens(gpt2)
    trace = gpt2.universality.trace_circuit(ids, ["L9H9", "L9H6", "L10H0"], dest=end)
    print("  ", trace.summary())
    print(trace.edges.sort_values("n_firings", ascending=False).head(20).to_string(index=False))
    effects = gpt2.universality.intervene_on_signal(
        ids, trace, logit_tokens=io_s, logit_position=end, max_events=64
    )
    print(effects.by_edge().head(24).to_string(index=False, float_format="{:.3f}".format))
    if out:
        trace.to_html(out / "gpt2_ioi.html")
        trace.save(out / "gpt2_ioi")


def prompts_of_one_length() -> tuple[str, ...]:
    """One template, so that the prompts' positions line up (names are single tokens)."""
    from tl_universality.attention_decomposition.prompts import TEMPLATES

    return TEMPLATES[:1]


if __name__ == "__main__":
    main()
