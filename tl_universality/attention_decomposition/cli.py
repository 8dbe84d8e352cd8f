"""The ``tl-universality trace`` subcommand: its arguments and what it runs and writes.

Writes ``<out>/trace/`` (the saved :class:`~.trace.CircuitTrace`), ``trace.graphml``,
``trace.html`` and, with ``--intervene``, ``<out>/signal_effects/``; prints the summary and the
strongest edges.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``tl-universality trace``."""
    p.add_argument("--roots", required=True, help="heads to trace from, e.g. 'L1H0,L1H3'")
    p.add_argument("--n-prompts", type=int, default=8, help="prompts to trace (default 8)")
    p.add_argument("--positions", type=int, default=32, help="tokens per prompt (default 32)")
    p.add_argument("--min-attention", type=float, default=0.5, help="least attention of a firing")
    p.add_argument("--threshold", type=float, default=1.0, help="share of the score (default 1)")
    p.add_argument("--edge-share", type=float, default=0.7, help="share of a signal (default 0.7)")
    p.add_argument("--all-positions", action="store_true", help="trace roots at every position")
    p.add_argument("--max-depth", type=int, default=None, help="recursion depth limit")
    p.add_argument("--intervene", action="store_true", help="also test the edges causally")


def run_trace(args: argparse.Namespace, model: Any, tokens: Any) -> int:
    """Trace, save and print; returns the exit code."""
    from tl_universality.attention_decomposition.intervene import intervene_on_signal
    from tl_universality.attention_decomposition.trace import trace_circuit
    from tl_universality.units.hooks import token_batches

    if args.n_prompts < 1 or args.positions < 2:
        raise ValueError("--n-prompts must be >= 1 and --positions >= 2.")
    batch = next(
        iter(token_batches(model, tokens, batch_size=args.n_prompts, max_tokens=args.max_tokens))
    )
    batch = batch[:, : args.positions]
    roots = [r for r in args.roots.replace(",", " ").split() if r]
    trace = trace_circuit(
        model, batch, roots, dest=None if args.all_positions else -1,
        min_attention=args.min_attention, threshold=args.threshold, edge_share=args.edge_share,
        max_depth=args.max_depth,
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace.save(out / "trace")
    trace.to_graphml(out / "trace.graphml")
    trace.to_html(out / "trace.html")
    print(json.dumps(trace.summary(), indent=2))
    top = trace.edges.sort_values(["n_firings", "mean_share"], ascending=False).head(10)
    print(top.to_string(index=False, float_format="{:.3f}".format))
    if args.intervene and len(trace.edges):
        effects = intervene_on_signal(model, batch, trace)
        effects.save(out / "signal_effects")
        print(effects.by_edge().head(16).to_string(index=False, float_format="{:.3f}".format))
    print(f"saved trace/, trace.graphml and trace.html in {out}")
    return 0


__all__ = ["add_trace_arguments", "run_trace"]
