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
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tl_universality.analyses.correlation.plan import (
    CHECKPOINT_FILE,
    FORMAT_PREFIX,
    FORMAT_VERSION,
    as_model_list,
    logger,
    make_plan,
    parse_bytes,
    per_model_units,
    resolve_matrix_dtype,
)
from tl_universality.analyses.correlation.result import CorrelationResult
from tl_universality.analyses.correlation.run import (
    CorrelationProgress,
    CorrelationRun,
    load_checkpoint,
    model_labels,
    params_digest,
    save_checkpoint,
    source_digest,
)
from tl_universality.core.errors import (
    CheckpointMismatchError,
    EmptyTokenSourceError,
)
from tl_universality.core.protocol import HookedModel, check_same_tokenizer, model_name
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.stats.baselines import (
    check_kind,
)
from tl_universality.stats.cross_moments import (
    ProductDtype,
    resolve_product_dtype,
)
from tl_universality.units.activations import (
    UnitsSpec,
    excluded_token_ids,
    model_device,
    stream_activations,
    unit_index,
)


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
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` accepts (a ``[n,
        seq]``
            tensor of ids whose rows start with BOS, a token source, a file, ``None`` for the
            default corpus).
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
            :data:`~tl_universality.stats.cross_moments.ProductDtype`).
        exclude_token_ids: Token ids whose positions are left out (default BOS, padding and the
            newline token, as in the paper); the ids used are recorded in ``config``.
        seq_len: Sequence length for text sources (default: min(512, smallest n_ctx)).
        max_tokens: Stop after this many tokens.
        bos_token_id: The BOS id of a token tensor when the models have no tokenizer.
        checkpoint_dir: Folder for checkpoints; a rerun with the same arguments resumes there.
        checkpoint_every: Tokens between checkpoints (each pass's end is always one).
        names: Labels of ``[model, *others]`` in tables (default their ``cfg.model_name``).
        progress: Show progress bars and print the plan; False is quiet.
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

    models = [model, *as_model_list(others)]
    if len(models) < 2:
        raise ValueError("correlate needs at least one other model to compare with.")
    check_kind(baseline)
    if n_draws < 1 and baseline:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    check_same_tokenizer(models)  # before any compute: a mismatch makes every number meaningless
    labels = model_labels(models, names)
    specs = per_model_units(units, len(models))
    indices = [unit_index(m, s) for m, s in zip(models, specs, strict=True)]
    dev = torch.device(device) if device is not None else model_device(models[0])
    product, _ = resolve_product_dtype(product_dtype, dev)
    matrix_dtype = resolve_matrix_dtype(keep_matrix)
    source = resolve_tokens(
        tokens, models, seq_len=seq_len, max_tokens=max_tokens, bos_token_id=bos_token_id
    )
    plan = make_plan(
        indices,
        all_pairs=all_pairs,
        baseline=baseline,
        memory_budget=parse_bytes(memory_budget),
        tokens_per_batch=batch_size * source.seq_len,
        product=product,
        matrix_itemsize=0
        if matrix_dtype is None
        else torch.empty((), dtype=matrix_dtype).element_size(),
        top_k=top_k,
        n_draws=n_draws if baseline else 0,
    )
    if progress:  # the plan before the work starts; quiet runs still log it
        print(plan, file=sys.stderr)
    else:
        logger.info("%s", plan)

    run = CorrelationRun(
        plan,
        indices,
        baseline=baseline,
        n_draws=n_draws,
        seed=seed,
        top_k=top_k,
        matrix_dtype=matrix_dtype,
        product_dtype=product_dtype,
        device=dev,
        all_pairs=all_pairs,
    )
    settings = {
        "all_pairs": all_pairs,
        "baseline": baseline,
        "n_draws": n_draws if baseline else 0,
        "seed": seed,
        "top_k": top_k,
        "keep_matrix": str(matrix_dtype) if matrix_dtype else None,
        "product_dtype": str(product_dtype) if product_dtype is not None else "float32",
        # The positions left out, as resolved (default: the paper's BOS, padding and newline).
        "exclude_token_ids": sorted(
            excluded_token_ids(source, getattr(model, "tokenizer", None), exclude_token_ids)
        ),
    }
    config = {
        **settings,
        "names": labels,
        "tokens": source.name,
        "seq_len": source.seq_len,
        "batch_size": batch_size,
        "n_passes": plan.n_passes,
        "version": FORMAT_VERSION,
    }

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    fingerprint: dict[str, Any] = {}
    resumed_complete = False
    if folder is not None:
        fingerprint = {
            **settings,
            "models": [{"name": model_name(m), "params": params_digest(m)} for m in models],
            "units": [i.to_dict() for i in indices],
            "tokens": source_digest(source),
            "plan": plan.layout(),
        }
        fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as stored: lists, str
        loaded = load_checkpoint(folder)
        if loaded is not None:
            state, meta = loaded
            old = meta.get("fingerprint") or {}
            if old != fingerprint:
                differ = sorted(
                    k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k)
                )
                raise CheckpointMismatchError(
                    f"The checkpoint in {folder} was made with different arguments (they differ in:"
                    f" {', '.join(differ)}). Fix: call correlate with the same models, tokens and"
                    " settings to resume, or pass an empty checkpoint_dir to start a new run."
                )
            run.load(state, meta)
            resumed_complete = bool(meta.get("complete"))
            if progress:
                print(
                    f"Resuming from {folder / CHECKPOINT_FILE}: pass {run.next_pass} of"
                    f" {plan.n_passes}, {run.sequences} sequences in.",
                    file=sys.stderr,
                )

    def checkpoint(complete: bool = False) -> None:
        if folder is None:
            return
        meta = {
            "format": FORMAT_PREFIX + ".checkpoint",
            "version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "next_pass": run.next_pass,
            "sequences": run.sequences,
            "n_tokens": run.n_tokens,
            "complete": complete,
        }
        save_checkpoint(folder, run, meta)

    while run.next_pass < plan.n_passes:
        if run.stats is None:
            run.stats = [run.new_stats(t) for t in run.pass_tiles()]
        since = 0
        batches = stream_activations(
            models,
            source,
            units=units,
            batch_size=batch_size,
            device=dev,
            exclude_token_ids=exclude_token_ids,
            start_sequence=run.sequences,
            progress=progress,
        )
        try:
            for batch in batches:
                run.update(batch.acts)
                run.sequences += batch.tokens.shape[0]
                since += batch.tokens.numel()
                saved = folder is not None and since >= checkpoint_every
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
        run.finish_pass()
        run.next_pass += 1
        run.sequences = 0
        if run.next_pass < plan.n_passes:
            checkpoint()
    if run.n_tokens == 0:
        raise EmptyTokenSourceError(
            f"No token of {source.name} was left after excluding BOS/padding positions, so no"
            " correlation is defined. Pass longer sequences or more data."
        )
    run.add_noise_baseline()
    if not resumed_complete:
        checkpoint(complete=True)
    results = run.results(labels, config)
    return results if all_pairs else results[0]
