"""Correlate every neuron of a reference model with every neuron of other seeds
(docs/concepts.md, "Universality").

:func:`correlate` runs all models over one token stream, once: each batch's activations feed
:class:`~tl_universality.stats.cross_moments.CrossMoments` (the reference's units against the
other models' units, gathered into one matrix product per batch), together with the other
models' within-layer second moments, from which the chance baselines follow without a second
pass (:mod:`tl_universality.stats.baselines`).

Memory. The float64 cross moments are ``8 · a · b`` bytes per model pair (11 GB for GPT-2 small,
77 GB for medium). With ``memory_budget`` the units are split into tiles of whole layers that
fit, and the tiles are processed in successive passes over the tokens; the result is the same
as one pass. :func:`plan_correlation` shows the plan without running anything.

Checkpoints. With ``checkpoint_dir`` the statistics are written atomically every
``checkpoint_every`` tokens and after every pass; calling :func:`correlate` again with the same
arguments continues from the last checkpoint and gives the same result as an uninterrupted run.

Distributed. Under ``torchrun`` (an initialised ``torch.distributed`` group) every rank returns
the single-process result. With ``parallel="tokens"`` (default) each rank reads a disjoint shard
of the batches and the statistics merge exactly before they are reduced; with
``parallel="tiles"`` each rank reads every batch but holds only its own tiles (for memory), and
the reductions merge at the end (:mod:`~tl_universality.analyses.correlation.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tl_universality.analyses.correlation.capacity import check_capacity
from tl_universality.analyses.correlation.config import CorrelationConfig
from tl_universality.analyses.correlation.distributed import (
    ShardedSource,
    align_passes,
    check_rank_device,
    current_shard,
    merge_across_ranks,
    merge_tile_reductions,
    rank_folder,
    share_rows,
)
from tl_universality.analyses.correlation.fingerprint import batch_digest, weights_digest
from tl_universality.analyses.correlation.plan import (
    FORMAT_VERSION,
    as_model_list,
    logger,
    make_plan,
    per_model_units,
    resolve_matrix_dtype,
)
from tl_universality.analyses.correlation.result import CorrelationResult
from tl_universality.analyses.correlation.run import (
    CorrelationProgress,
    CorrelationRun,
    load_checkpoint,
    model_labels,
    save_checkpoint,
)
from tl_universality.core.errors import (
    CheckpointMismatchError,
    EmptyTokenSourceError,
    InvalidArgumentError,
)
from tl_universality.core.protocol import HookedModel, check_same_tokenizer, model_name
from tl_universality.core.validate import check_device, check_folder
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.data.tokens.sources import TokenSource
from tl_universality.stats.cross_moments import (
    ProductDtype,
    resolve_product_dtype,
)
from tl_universality.units.activations import (
    UnitIndex,
    UnitsSpec,
    excluded_token_ids,
    model_device,
    stream_activations,
    unit_index,
)
from tl_universality.units.specs import PerModel


def correlate(
    model: HookedModel,
    others: HookedModel | Sequence[HookedModel],
    tokens: Tokens = None,
    *,
    units: UnitsSpec | Sequence[UnitsSpec] = None,
    all_pairs: bool = False,
    baseline: str | None = "rotation",
    n_draws: int = 5,
    seed: int = 0,
    top_k: int = 10,
    keep_matrix: bool | str | torch.dtype = False,
    memory_budget: int | float | str | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    product_dtype: ProductDtype = None,
    exclude_token_ids: Sequence[int] | None = None,
    seq_len: int | None = None,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 10_000_000,
    parallel: str = "tokens",
    standard_errors: bool = False,
    candidates: int | None = None,
    screen_tokens: int | None = None,
    certificate_sigmas: float = 4.0,
    tol: float | None = None,
    baseline_candidates: int | None = None,
    config: CorrelationConfig | None = None,
    names: Sequence[str] | None = None,
    progress: bool = True,
    callback: Callable[[CorrelationProgress], None] | None = None,
) -> CorrelationResult | list[CorrelationResult]:
    """Correlate every unit of ``model`` with every unit of each of ``others`` (docs/concepts.md,
    "Universality").

    One pass over ``tokens`` runs each model once per batch and accumulates exact streaming
    statistics (:class:`~tl_universality.stats.cross_moments.CrossMoments`); the baseline comes
    from the
    same statistics (:mod:`tl_universality.stats.baselines`), with no second pass.

    Args:
        model: The reference model (the paper's seed ``a``).
        others: The other seeds.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` accepts (a
            ``[n, seq]`` tensor of ids whose rows start with BOS, a token source, a file,
            ``None`` for the default corpus).
        units: Which units (default every layer's ``mlp.hook_post``); one spec or one per model.
        all_pairs: Also correlate every pair of ``others``; returns one result per model, each
            with that model as the reference (statistics are accumulated once per pair).
        baseline: ``"rotation"`` (default), ``"gaussian_mix"``, ``"gaussian_noise"`` or None.
        n_draws: Independent baseline draws, averaged.
        seed: Seed of the baseline draws.
        top_k: How many best matches to keep per unit and model.
        keep_matrix: Also keep the full correlation matrices (True = float32, or a dtype such as
            ``torch.float16``).
        memory_budget: Bytes (or ``"16GB"``) for statistics and buffers; the units are tiled into
            several passes when one does not fit. Default: one pass, whatever it needs.
        batch_size: Sequences per forward pass.
        device: Where the statistics are accumulated (default: the reference model's device).
        product_dtype: Precision of the per-batch product (float32 default; see
            :data:`~tl_universality.stats.cross_moments.ProductDtype`). The screened mode's
            pair products are float64 with ``"float64"`` and float32 otherwise.
        exclude_token_ids: Token ids whose positions are left out (default BOS, padding and the
            newline token, as in the paper); the ids used are recorded in ``config``.
        seq_len: Sequence length for text sources (default: min(512, smallest n_ctx)).
        max_tokens: Stop after this many tokens.
        bos_token_id: The BOS id of a token tensor when the models have no tokenizer.
        checkpoint_dir: Folder for checkpoints; a rerun with the same arguments resumes there.
        checkpoint_every: Tokens between checkpoints (each pass's end is always one).
        parallel: How the ranks of a ``torch.distributed`` run split it: ``"tokens"`` (each
            reads a shard of the batches; default) or ``"tiles"`` (each reads every batch and
            holds its own tiles, for memory). One process ignores it (docs/scaling.md).
        standard_errors: Exhaustive runs: after the run, read the tokens once more to follow
            each unit's argmax and argmin pair, and give ``max_corr_se`` and ``min_corr_se``
            (batch-means standard errors over sequences, as in the screened mode), so
            ``result.converged(tol)`` applies (docs/concepts.md, "Standard errors of an
            exhaustive run"). Screened runs always have them.
        candidates: Screened exact mode (docs/concepts.md, "Screened exact correlation"): the
            exhaustive statistics run on the first ``screen_tokens`` only and keep, per unit and
            other model, the ``candidates`` most correlated and most anti-correlated units;
            then every token updates exact statistics of those pairs alone (float64 sums of
            products in ``product_dtype``, as in the exhaustive mode). The result
            has standard errors and a certificate per unit. Default None: exhaustive.
        screen_tokens: Tokens of the screening stage (default: a quarter of the stream when its
            size is known, at most 2**20; whole sequences).
        certificate_sigmas: A unit is certified when its exact max-correlation exceeds the
            screening value of its best non-candidate by this many standard errors (and by the
            largest change of its candidates after the screen).
        tol: With ``candidates``, stop early once every max-correlation's standard error is
            below ``tol`` and neither the max-correlations (by more than ``tol``) nor the
            universal set changed since the last check (``result.config["stopped_early"]``);
            under ``torchrun`` the ranks check their summed statistics once a round, together.
        baseline_candidates: With ``candidates`` and a mixing baseline, follow each unit's
            ``baseline_candidates`` best mixed units of every draw (chosen on the screening
            tokens) through every token, so the baseline is exact over the whole stream and
            certified like ``max_corr``; the cost per token is one mix of each other model per
            draw. Default None: the baseline comes from the screening tokens.
        config: All the settings above as one :class:`CorrelationConfig` (the keywords are
            turned into one otherwise; passing both is an error where they disagree).
        names: Labels of ``[model, *others]`` in tables (default their ``cfg.model_name``).
        progress: Show progress bars and print the plan (under ``torchrun``, on rank 0 only);
            False is quiet.
        callback: Called with a :class:`CorrelationProgress` after every batch.

    Returns:
        A :class:`CorrelationResult`, or with ``all_pairs`` a list with one per model.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, d_mlp=16,
        ...                               d_vocab=20, act_fn="relu", seed=0)
        >>> a, b = HookedTransformer(cfg), HookedTransformer(cfg)  # same seed: identical neurons
        >>> toks = torch.randint(1, 20, (16, 8), generator=torch.Generator().manual_seed(0))
        >>> toks[:, 0] = 0
        >>> result = correlate(a, b, toks, bos_token_id=0, n_draws=1, progress=False)
        >>> bool((result.max_corr.nan_to_num(1.0) > 0.999).all())
        True
        >>> list(result.to_dataframe().columns[:5])
        ['layer', 'neuron', 'excess_corr', 'mean_corr', 'min_corr']
    """
    from tl_universality.data.tokens import resolve_tokens

    given = CorrelationConfig.from_kwargs(
        all_pairs=all_pairs, baseline=baseline, n_draws=n_draws, seed=seed, top_k=top_k,
        keep_matrix=keep_matrix, memory_budget=memory_budget, batch_size=batch_size,
        product_dtype=product_dtype, exclude_token_ids=exclude_token_ids, seq_len=seq_len,
        max_tokens=max_tokens, checkpoint_every=checkpoint_every, parallel=parallel,
        standard_errors=standard_errors,
        candidates=candidates, screen_tokens=screen_tokens, certificate_sigmas=certificate_sigmas,
        tol=tol, baseline_candidates=baseline_candidates,
    )  # fmt: skip
    cfg = _settings(config, given)
    check_device("device", device)
    folder = check_folder("checkpoint_dir", checkpoint_dir)
    models = [model, *as_model_list(others)]
    if len(models) < 2:
        raise InvalidArgumentError(
            "others=[]: correlate needs at least one other model to compare with. Fix: pass"
            " others=model_b or others=[model_b, model_c]."
        )
    check_same_tokenizer(models)  # before any compute: a mismatch makes every number meaningless
    labels = model_labels(models, names)
    specs = per_model_units(units, len(models))
    dev = torch.device(device) if device is not None else model_device(models[0])
    check_rank_device(dev)  # under torchrun: this rank's own GPU
    # The whole stream, and the part this run reads: growing max_tokens on a checkpoint
    # continues the same stream.
    stream = resolve_tokens(tokens, models, seq_len=cfg.seq_len, bos_token_id=bos_token_id)
    indices = [unit_index(m, s) for m, s in zip(models, specs, strict=True)]
    weights = [weights_digest(m) for m in models]
    shown = progress and current_shard().rank == 0  # under torchrun, rank 0 shows the bars
    setup = Setup(models, specs, indices, weights, labels, dev, stream, folder, shown, callback)
    if cfg.candidates is not None:
        from tl_universality.analyses.correlation.screened import correlate_screened

        return correlate_screened(setup, cfg)
    done = run_exhaustive(setup, cfg)
    results = done.run.results(labels, done.config)
    if cfg.standard_errors:
        from tl_universality.analyses.correlation.errors import add_standard_errors

        results = add_standard_errors(setup, cfg, done, results)
    return results if cfg.all_pairs else results[0]


@dataclass
class Setup:
    """What a correlation run works on, resolved once by :func:`correlate`."""

    models: list[HookedModel]
    specs: list[Any]
    indices: list[UnitIndex]  # of ``specs`` on each model
    weights: list[str]  # SHA-256 of each model's weights
    labels: list[str]
    device: torch.device
    stream: TokenSource
    folder: Path | None
    progress: bool
    callback: Callable[[CorrelationProgress], None] | None


@dataclass
class Exhaustive:
    """A finished exhaustive run: its state, the result config and the batch digests read."""

    run: CorrelationRun
    config: dict[str, Any]
    digests: list[str]


def run_exhaustive(
    setup: Setup, cfg: CorrelationConfig, screen: int = 0, follow: int = 0
) -> Exhaustive:
    """The exhaustive statistics over ``setup.stream`` (limited to ``cfg.max_tokens``), with
    checkpoints in ``setup.folder``; ``screen=K`` also keeps what a screened run needs, and
    ``follow=B`` each unit's best mixed units of the baseline."""
    models, specs, labels, dev = setup.models, setup.specs, setup.labels, setup.device
    folder, progress, callback = setup.folder, setup.progress, setup.callback
    model = models[0]
    indices, weights = setup.indices, setup.weights
    product, _ = resolve_product_dtype(cfg.product_dtype, dev)
    matrix_dtype = resolve_matrix_dtype(cfg.keep_matrix)
    stream = setup.stream
    source = stream.limit(cfg.max_tokens) if cfg.max_tokens is not None else stream
    # Under torch.distributed each rank keeps its checkpoint in checkpoint_dir/rank{r}. By
    # tokens, it reads batches k with k % world_size == rank and the statistics merge before
    # each reduction; by tiles, it reads every batch for its own tiles of the plan.
    shard = current_shard()
    folder = rank_folder(folder, shard, cfg.parallel)
    by_tokens = shard.distributed and cfg.parallel == "tokens"
    by_tiles = shard.distributed and cfg.parallel == "tiles"
    if by_tokens:
        source = ShardedSource(source, cfg.batch_size, shard)
    n_draws_used = cfg.n_draws if cfg.baseline else 0
    plan = make_plan(
        indices,
        all_pairs=cfg.all_pairs,
        baseline=cfg.baseline,
        memory_budget=cfg.memory_budget,
        tokens_per_batch=cfg.batch_size * source.seq_len,
        product=product,
        matrix_itemsize=0
        if matrix_dtype is None
        else torch.empty((), dtype=matrix_dtype).element_size(),
        top_k=cfg.top_k,
        n_draws=n_draws_used,
        tile_ranks=shard.world_size if by_tiles else 1,
    )
    if progress:  # the plan before the work starts; quiet runs still log it
        print(plan, file=sys.stderr)
    elif shard.rank == 0:  # the other ranks run the same plan
        logger.info("%s", plan)
    check_capacity(plan, dev, cfg.memory_budget, screening=screen > 0)  # before any batch

    run = CorrelationRun(
        plan,
        indices,
        baseline=cfg.baseline,
        n_draws=cfg.n_draws,
        seed=cfg.seed,
        top_k=cfg.top_k,
        matrix_dtype=matrix_dtype,
        product_dtype=cfg.product_dtype,
        device=dev,
        all_pairs=cfg.all_pairs,
        screen=screen,
        follow=follow,
        rank=shard.rank,
        row_ranks=shard.world_size if by_tokens else 1,
    )
    config_out = {
        **cfg.to_dict(),
        "names": labels,
        "tokens": source.inner.name if isinstance(source, ShardedSource) else source.name,
        "seq_len": source.seq_len,
        "n_passes": plan.n_passes,
        "model_weights": weights,
        # The positions left out, as resolved (default: the paper's BOS, padding and newline).
        "exclude_token_ids": sorted(
            excluded_token_ids(source, getattr(model, "tokenizer", None), cfg.exclude_token_ids)
        ),
        "version": FORMAT_VERSION,
    }
    if shard.distributed:
        config_out["world_size"] = shard.world_size
    exclude = list(cfg.exclude_token_ids) if cfg.exclude_token_ids is not None else None

    digests: list[str] = []  # of every batch of the stream read so far, in order
    seen_total = 0  # sequences of the stream read so far (pass 0)
    resumed_complete = False
    fingerprint: dict[str, Any] = {}
    if folder is not None:
        fingerprint = _fingerprint(cfg, models, weights, indices, source, plan)
        if follow:  # a screening run that also keeps the baseline's best mixed units
            fingerprint["follow"] = follow
        loaded = load_checkpoint(folder)
        if loaded is not None:
            state, meta = loaded
            check_fingerprint(folder, meta.get("fingerprint") or {}, fingerprint)
            digests = [str(d) for d in meta.get("token_digests", [])]
            seen = seen_total = int(meta.get("stream_sequences", 0))
            _check_size(folder, cfg, source, seen, plan, meta)
            verify_prefix(folder, source, cfg.batch_size, digests, seen)
            run.load(state, meta)
            resumed_complete = bool(meta.get("complete"))
            if progress:
                print(
                    f"Resuming from {folder}: pass {run.next_pass + 1} of {plan.n_passes},"
                    f" {run.sequences} sequences in.",
                    file=sys.stderr,
                )
    if folder is not None and by_tokens and align_passes(run):
        # This rank's checkpoint was a pass behind the others': the first pass read its shard.
        resumed_complete, seen_total = False, source.n_sequences or seen_total

    def checkpoint(complete: bool = False, stream_end: bool = False) -> None:
        if folder is None:
            return
        meta = {
            "fingerprint": fingerprint,
            "token_digests": digests,
            "stream_sequences": run.sequences if run.next_pass == 0 else seen_total,
            "next_pass": run.next_pass,
            "sequences": run.sequences,
            "n_tokens": run.n_tokens,
            "complete": complete,
            "stream_end": stream_end,
        }
        save_checkpoint(folder, run, meta)

    while run.next_pass < plan.n_passes:
        if run.stats is None:
            run.stats = [run.new_stats(t) for t in run.pass_tiles()]
        since = 0
        batch_index = _batches_before(run.sequences, cfg.batch_size)
        batches = stream_activations(
            models,
            source,
            units=PerModel(specs),  # resolved once above
            batch_size=cfg.batch_size,
            device=dev,
            exclude_token_ids=exclude,
            start_sequence=run.sequences,
            progress=progress,
        )
        try:
            for batch in batches:
                digest = batch_digest(batch.tokens)
                if batch_index < len(digests):
                    if digests[batch_index] != digest:
                        raise token_mismatch(folder, batch_index, cfg.batch_size)
                else:
                    digests.append(digest)
                batch_index += 1
                run.update(batch.acts)
                run.sequences += batch.tokens.shape[0]
                if run.next_pass == 0:
                    seen_total = run.sequences
                since += batch.tokens.numel()
                saved = folder is not None and since >= cfg.checkpoint_every
                if saved:
                    checkpoint()
                    since = 0
                if callback is not None:
                    callback(
                        CorrelationProgress(
                            run.next_pass,
                            plan.n_passes,
                            run.sequences,
                            run.sequences * source.seq_len,
                            saved,
                        )
                    )
                del batch  # let this batch's activations go before the next forward pass
        finally:
            batches.close()  # ends the progress bar even when a callback raises
        if plan.n_passes == 1:
            # The statistics at the end of the stream: a later run with a larger max_tokens
            # continues from here and reads only the new tokens.
            checkpoint(stream_end=True)
        if by_tokens:
            merge_across_ranks(run.stats)
        run.finish_pass()
        if by_tokens:
            share_rows(run)  # each rank reduced its share of the rows
        run.next_pass += 1
        run.sequences = 0
        if run.next_pass < plan.n_passes:
            checkpoint()
    if by_tiles:
        merge_tile_reductions(run)  # every rank's tiles into every rank's reductions
    if run.n_tokens == 0:
        raise EmptyTokenSourceError(
            f"No token of {source.name} was left after excluding BOS/padding positions, so no"
            " correlation is defined. Pass longer sequences or more data."
        )
    run.add_noise_baseline()
    if not resumed_complete and plan.n_passes > 1:
        checkpoint(complete=True)
    return Exhaustive(run, config_out, digests)


def _settings(config: CorrelationConfig | None, given: CorrelationConfig) -> CorrelationConfig:
    """``config`` when given (keywords may not contradict it), else the keywords' settings."""
    if config is None:
        return given
    if not isinstance(config, CorrelationConfig):
        raise InvalidArgumentError(
            f"config={config!r} is not a CorrelationConfig. Fix: pass"
            " config=CorrelationConfig(...), or the settings as keyword arguments."
        )
    default = CorrelationConfig()
    clash = [
        f.name
        for f in dataclasses.fields(CorrelationConfig)
        if getattr(given, f.name) != getattr(default, f.name)
        and getattr(given, f.name) != getattr(config, f.name)
    ]
    if clash:
        raise InvalidArgumentError(
            f"config= and the keyword argument(s) {', '.join(clash)} disagree. Fix: pass each"
            " setting once, e.g. config.replace(...)."
        )
    return config


def _fingerprint(cfg, models, weights, indices, source, plan) -> dict[str, Any]:
    """Everything the statistics depend on but the token contents (checked batch by batch)."""
    settings = cfg.to_dict()
    # growing and checkpoint spacing are allowed; the mode is the manifest's (one process: moot);
    # standard errors come from a later pass with its own checkpoint
    for free in ("max_tokens", "checkpoint_every", "parallel", "standard_errors"):
        settings.pop(free)
    out = {
        **settings,
        "models": [
            {"name": model_name(m), "weights": w} for m, w in zip(models, weights, strict=True)
        ],
        "units": [i.to_dict() for i in indices],
        "seq_len": source.seq_len,
        "plan": plan.layout(),
    }
    return json.loads(json.dumps(out, default=str))  # as stored: lists, str


def check_fingerprint(folder: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    if old == new:
        return
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    detail = ""
    if "models" in differ and len(old.get("models", [])) == len(new["models"]):
        changed = [
            f"model {i} ({n['name']})"
            for i, (o, n) in enumerate(zip(old["models"], new["models"], strict=True))
            if o != n
        ]
        detail = f"; the weights of {', '.join(changed)} differ from the checkpoint's"
    raise CheckpointMismatchError(
        f"The checkpoint in {folder} was made with different arguments (they differ in:"
        f" {', '.join(differ)}{detail}). Fix: call correlate with the same models, tokens and"
        " settings to resume, or pass an empty checkpoint_dir to start a new run."
    )


def _check_size(folder, cfg, source, seen: int, plan, meta: dict[str, Any]) -> None:
    """A smaller run than the checkpoint's is refused; a larger one must be growable."""
    wanted = source.n_sequences
    if wanted is None or wanted == seen:
        return
    tokens_seen = seen * source.seq_len
    if wanted < seen:
        what = (
            f"max_tokens={cfg.max_tokens} is smaller than"
            if cfg.max_tokens is not None
            else f"The tokens ({wanted * source.seq_len}) are fewer than"
        )
        raise CheckpointMismatchError(
            f"{what} the {tokens_seen} tokens the checkpoint in {folder} has already consumed."
            f" Fix: pass the same tokens with max_tokens >= {tokens_seen} (or None) to resume or"
            " grow the run, or pass another checkpoint_dir."
        )
    finished = bool(meta.get("complete")) or (
        plan.n_passes > 1 and int(meta.get("next_pass", 0)) > 0
    )
    if finished:
        raise CheckpointMismatchError(
            f"The checkpoint in {folder} holds a run tiled into {plan.n_passes} passes that has"
            f" read past its first pass at {tokens_seen} tokens; growing it to"
            f" max_tokens={cfg.max_tokens} would need the statistics of every tile, which are not"
            " kept. Fix: pass the same max_tokens, or a larger memory_budget (one pass), or start"
            " over with another checkpoint_dir."
        )


def verify_prefix(folder, source, batch_size: int, digests: list[str], seen: int) -> None:
    """Re-read the tokens the checkpoint consumed and refuse at the first batch that differs."""
    count = 0
    for k, tokens in enumerate(source.batches(batch_size)):
        if count >= seen or k >= len(digests):
            return
        if batch_digest(tokens) != digests[k]:
            raise token_mismatch(folder, k, batch_size)
        count += tokens.shape[0]


def token_mismatch(folder: Path | None, batch: int, batch_size: int) -> CheckpointMismatchError:
    first, last = batch * batch_size, (batch + 1) * batch_size - 1
    return CheckpointMismatchError(
        f"The tokens differ from those the checkpoint in {folder} consumed, first at sequences"
        f" {first}-{last} (batch {batch}). Fix: pass the same tokens to resume, or pass an empty"
        " checkpoint_dir to start a new run."
    )


def _batches_before(sequences: int, batch_size: int) -> int:
    return -(-sequences // batch_size)
