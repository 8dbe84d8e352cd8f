"""Standard errors of an exhaustive run: ``correlate(..., standard_errors=True)``
(docs/concepts.md, "Standard errors of an exhaustive run").

The exhaustive statistics give every pair's correlation over all tokens, but no per-sequence
sums, so they cannot say how much a value would move on other text. With
``standard_errors=True``, once the exhaustive run is done, one more pass over the same tokens
follows each unit's best and worst match in every other model (its ``argmax`` and ``argmin``)
with :class:`~tl_universality.stats.pair_moments.PairMoments`: exact float64 moments of those
pairs and their batch-means standard errors over sequences, the screened mode's estimator, with
the exhaustive values as pilot. The pass costs one more forward pass of every model and two
products per unit and token for each pair of models (none of the ``a x b`` work).

The pass proves it saw the data of the exhaustive run: its batches hash to the exhaustive run's
digests, and its correlations of the followed pairs equal the exhaustive ones within
:data:`AGREEMENT` (float32 or float64 products; the largest difference is recorded as
``config["standard_errors_check"]``). Anything else raises. It checkpoints in
``checkpoint_dir/errors`` and resumes like the screened stage 2.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch
from torch import Tensor

from tl_universality.analyses.correlation.distributed import current_shard, rank_folder
from tl_universality.analyses.correlation.engine import (
    CorrelationConfig,
    Exhaustive,
    Setup,
    check_fingerprint,
)
from tl_universality.analyses.correlation.result import CorrelationResult
from tl_universality.analyses.correlation.screened import (
    Screened,
    load_pairs,
    models_print,
    pair_product,
    stream_pairs,
)
from tl_universality.core.errors import CheckpointMismatchError
from tl_universality.stats.pair_moments import PairMoments

#: Largest |difference| allowed between the pass's correlations and the exhaustive ones when
#: both use float32 or float64 products (each is within ~1e-7 of the float64 value).
AGREEMENT = 1e-5


def add_standard_errors(
    setup: Setup, cfg: CorrelationConfig, done: Exhaustive, results: list[CorrelationResult]
) -> list[CorrelationResult]:
    """``results`` (one per reference model, as ``CorrelationRun.results`` gives them) with
    ``max_corr_se`` and ``min_corr_se`` from one more pass; see the module docstring."""
    run = done.run
    by_ref = {res.names[0]: res for res in results}
    shard = current_shard()
    folder = rank_folder(setup.folder, shard, cfg.parallel)
    pairs_dir = folder / "errors" if folder is not None else None
    product = pair_product(cfg.product_dtype)
    screen = Screened(0, 1)
    screen.baseline, screen.seed, screen.product = run.baseline, run.seed, product
    where: dict[tuple[int, int], tuple[str, int]] = {}  # direction -> (reference, row)
    for r, c in run.directions:
        res = by_ref[setup.labels[r]]
        row = [setup.labels.index(name) for name in res.names[1:]].index(c)
        where[(r, c)] = (res.names[0], row)
        screen.pairs[(r, c)] = _followed_pairs(run, r, c, res, row, product, setup.device)
        a = setup.indices[r].n_units
        screen.rival[(r, c)] = torch.zeros(a, dtype=torch.float64)
        screen.base[(r, c)] = torch.zeros(0, a, dtype=torch.float64)
    settings = cfg.to_dict()
    settings.pop("checkpoint_every")
    cols = b"".join(pm.cols.cpu().numpy().tobytes() for pm in screen.pairs.values())
    fingerprint = {
        "settings": settings,
        "pairs": hashlib.sha256(cols).hexdigest(),
        **models_print(setup),
    }
    loaded = load_pairs(pairs_dir)
    if loaded is not None:
        state, meta = loaded
        check_fingerprint(pairs_dir, meta["fingerprint"], fingerprint)  # type: ignore[arg-type]
        screen = Screened.from_state(state, meta, setup.device, [i.offsets for i in setup.indices])
    else:
        meta = {
            "fingerprint": fingerprint,
            "config": {**done.config, **cfg.to_dict()},
            "digests": [],
            "sequences": 0,
            "complete": False,
            "stopped_early": False,
        }
    whole = setup.stream.limit(cfg.max_tokens) if cfg.max_tokens is not None else setup.stream
    what = (
        f"Standard errors: {len(screen.pairs)} pair(s) of models x 2 followed units; reading the"
        " same tokens again."
    )
    stream_pairs(setup, cfg, screen, meta, whole, pairs_dir, what=what)
    by_tiles = shard.distributed and cfg.parallel == "tiles"  # then the pass reads a shard only
    if not by_tiles and list(meta["digests"]) != list(done.digests):
        raise CheckpointMismatchError(
            "standard_errors: the second pass read other tokens than the exhaustive run"
            f" ({len(meta['digests'])} vs {len(done.digests)} batches, or their contents differ),"
            " so its standard errors would belong to other data. Fix: pass a token source that"
            " yields the same sequences each time it is read (a tensor, a file, the default"
            f" corpus){'' if pairs_dir is None else f', or delete {pairs_dir}'}."
        )
    exact = cfg.product_dtype in (None, "float32", "float64")
    out = []
    for res in results:
        keys = sorted((k for k, (ref, _) in where.items() if ref == res.names[0]), key=where.get)
        out.append(_with_errors(res, [screen.pairs[k] for k in keys], exact))
    return out


def _followed_pairs(run, r: int, c: int, res: CorrelationResult, j: int, product, device):
    """PairMoments of each unit of model ``r`` with its argmax and argmin in model ``c``, empty,
    with the exhaustive means, scales and correlations as shift and pilot."""
    f64 = torch.float64
    cols = torch.stack([res.argmax[j], res.argmin[j]], 1).clamp_min(0)
    pilot = torch.stack([res.max_corr[j], res.min_corr[j]], 1).to(f64).nan_to_num(0.0)
    n = max(1, run.n_tokens)

    def scale(m: int) -> Tensor:
        return (run.m2s[m].to(f64).cpu().clamp_min(0) / n).sqrt()

    def shift(m: int) -> Tensor:
        return run.means[m].to(f64).cpu().to(product).to(f64)

    return PairMoments(cols, shift(r), shift(c), scale(r), scale(c), pilot, device)


def _with_errors(res: CorrelationResult, pms: list[PairMoments], exact: bool) -> CorrelationResult:
    """``res`` with the standard errors of its followed pairs (``pms``, one per other model, in
    its order), after checking their correlations against the exhaustive ones."""
    max_se, min_se, worst = [], [], 0.0
    for j, pm in enumerate(pms):
        corr, se = pm.corr().cpu(), pm.standard_error().cpu()
        want = torch.stack([res.max_corr[j], res.min_corr[j]], 1).to(torch.float64)
        undefined = want.isnan()
        if bool((corr.isnan() & ~undefined).any()):
            worst = float("inf")
        elif want.numel():
            worst = max(worst, float((corr - want).abs().masked_fill(undefined, 0.0).max()))
        se = se.masked_fill(undefined, torch.nan)
        max_se.append(se[:, 0])
        min_se.append(se[:, 1])
    if exact and worst > AGREEMENT:
        raise CheckpointMismatchError(
            f"standard_errors: the second pass's correlations differ from the exhaustive run's by"
            f" {worst:.3g} (> {AGREEMENT}): the models or tokens changed between the passes (a"
            " model left in training mode with dropout?). Fix: call model.eval() and pass a"
            " token source that yields the same sequences each time."
        )
    config = {**res.config, "standard_errors_check": worst}
    return dataclasses.replace(
        res, max_corr_se=torch.stack(max_se), min_corr_se=torch.stack(min_se), config=config
    )
