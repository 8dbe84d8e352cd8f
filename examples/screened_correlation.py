"""Screened exact correlation on the offline seed family (no network needed).

Correlates seed 0's neurons with the other seeds' twice over the same held-out tokens: exhaustively
(every pair of neurons) and screened (``candidates=K``: a screening stage on the first tokens picks
each neuron's K most and least correlated partners, then only those pairs are streamed, exactly).
Prints how many units the screened run certified, how far its max-correlations are from the
exhaustive ones, whether the universal sets agree, the standard errors (of both: the exhaustive
run has them with ``standard_errors=True``), a run that follows the
baseline over every token (``baseline_candidates``) and an early-stopped run.

    python examples/screened_correlation.py                 # the tiny family (a minute on a CPU)
    python examples/screened_correlation.py --family demo   # the demo family
"""

from __future__ import annotations

import argparse
import time

import tl_universality  # noqa: F401  (registers model.universality)
from tl_universality.analyses.correlation import correlate
from tl_universality.data.seeds import train_seed_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=60_000)
    parser.add_argument("--tol", type=float, default=0.02, help="early stop of the last run")
    args = parser.parse_args()

    family = train_seed_family(args.family, progress=False)
    ref, *others = family.models
    tokens = family.held_out_tokens()
    kw = dict(max_tokens=args.max_tokens, progress=False)

    start = time.perf_counter()
    exhaustive = correlate(ref, others, tokens, standard_errors=True, **kw)
    t_ex = time.perf_counter() - start
    start = time.perf_counter()
    screened = ref.universality.correlate(others, tokens, candidates=args.candidates, **kw)
    t_sc = time.perf_counter() - start

    live = int((~screened.dead).sum())
    cert = screened.certified
    diff = (screened.max_corr - exhaustive.max_corr).abs()
    same = bool((screened.is_universal() == exhaustive.is_universal()).all())
    print(f"{args.family} family, {screened.n_tokens:,} tokens,"
          f" screening on {screened.config['screen_tokens_used']:,}")  # fmt: skip
    print(f"exhaustive (with standard errors) {t_ex:.1f} s, screened {t_sc:.1f} s")
    print(f"certified: {screened.n_certified} of {live} live units")
    print(f"max |diff| of max_corr, certified units: {float(diff[cert].max()):.1e}")
    print(f"universal sets agree: {same} ({int(screened.is_universal().sum())} units)")
    print(
        f"median standard error of max_corr: {float(screened.max_corr_se.nanmedian()):.4f}"
        f" (exhaustive run with standard_errors=True:"
        f" {float(exhaustive.max_corr_se.nanmedian()):.4f})"
    )
    print(screened.to_dataframe()[["layer", "neuron", "max_corr", "max_corr_se", "certified"]]
          .head(8).to_string(index=False))  # fmt: skip

    # the baseline followed over every token: the exhaustive run's universal set
    followed = correlate(
        ref, others, tokens, candidates=args.candidates, baseline_candidates=8, **kw
    )
    same = bool((followed.is_universal() == exhaustive.is_universal()).all())
    base = (followed.baseline_max - exhaustive.baseline_max).abs().nanmean()
    print(
        f"followed baseline: universal sets agree: {same}; mean |diff| of the baseline"
        f" {float(base):.1e} (screening baseline:"
        f" {float((screened.baseline_max - exhaustive.baseline_max).abs().nanmean()):.1e})"
    )
    # decisions that hold at both ends of the excess correlation's bounds are the exhaustive ones
    decided = followed.universal_certified()
    agree = bool((followed.is_universal() == exhaustive.is_universal())[decided].all())
    print(
        f"certified universal decisions: {int(decided.sum())} of {live} live units, all agree"
        f" with the exhaustive run: {agree}"
    )

    stopped = correlate(ref, others, tokens, candidates=args.candidates, tol=args.tol, **kw)
    print(
        f"tol={args.tol}: stopped early = {stopped.config['stopped_early']},"
        f" {stopped.n_tokens:,} tokens sufficed; converged: {stopped.converged(args.tol)}"
    )


if __name__ == "__main__":
    main()
