"""Universality at each training checkpoint: where the checkpoints come from and what is measured
at each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tl_universality.analyses.correlation import correlate
from tl_universality.analyses.training_curve.result import (
    COLUMNS,
    TOKENS_PER_STEP,
    Loader,
    TrainingCurve,
)
from tl_universality.core.protocol import HookedModel
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.units.activations import (
    UnitIndex,
    UnitsSpec,
    excluded_token_ids,
    stream_activations,
    unit_index,
)

# -- per checkpoint ------------------------------------------------------------------------------


@torch.no_grad()
def participation_ratios(
    model: HookedModel,
    tokens: Any,
    *,
    units: UnitsSpec = None,
    batch_size: int = 32,
    exclude_token_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[int, float]:
    """Per layer, ``tr(C)² / ‖C‖²_F`` of the covariance ``C`` of its units' activations.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=8, d_head=4, d_mlp=16,
        ...                               d_vocab=20, act_fn="relu", seed=0)
        >>> toks = torch.randint(1, 20, (8, 8), generator=torch.Generator().manual_seed(0))
        >>> toks[:, 0] = 0
        >>> pr = participation_ratios(HookedTransformer(cfg), toks, exclude_token_ids=[0])
        >>> 1.0 <= pr[0] <= 16.0
        True
    """
    index = unit_index(model, units)
    sums: Tensor | None = None
    n = 0
    for batch in stream_activations(
        model, tokens, units=units, batch_size=batch_size, dtype=torch.float64,
        exclude_token_ids=exclude_token_ids, progress=progress,
    ):  # fmt: skip
        acts = batch.acts[0]
        if sums is None:
            sums = torch.zeros(acts.shape[1], dtype=torch.float64, device=acts.device)
            blocks: list[Tensor] = [
                torch.zeros(w, w, dtype=torch.float64, device=acts.device) for w in index.widths
            ]
        sums += acts.sum(0)
        for i, layer in enumerate(index.layers):
            part = acts[:, index.slice(layer)]
            blocks[i] += part.T @ part
        n += acts.shape[0]
    if sums is None or n == 0:
        return {int(layer): math.nan for layer in index.layers}
    out = {}
    for i, layer in enumerate(index.layers):
        mean = sums[index.slice(layer)] / n
        cov = blocks[i] / n - torch.outer(mean, mean)
        denom = float((cov * cov).sum())
        out[int(layer)] = float(torch.trace(cov)) ** 2 / denom if denom > 0 else math.nan
    return out


@torch.no_grad()
def _mean_loss(model: HookedModel, source: Any, batch_size: int) -> float:
    total, count = 0.0, 0
    device = next(model.parameters()).device  # type: ignore[attr-defined]
    for batch in source.batches(batch_size):
        loss = model(batch.to(device), return_type="loss")  # type: ignore[operator]
        total += float(loss) * batch.shape[0]
        count += batch.shape[0]
    return total / count if count else math.nan


def _layer_rows(result: Any, threshold: float) -> list[dict[str, Any]]:
    df = result.to_dataframe(threshold)
    rows = []
    for layer, group in df.groupby("layer", sort=True):
        excess = group.loc[~group["is_dead"], "excess_corr"].dropna().to_numpy()
        q = np.quantile(excess, [0.5, 0.9, 0.99]) if excess.size else [math.nan] * 3
        rows.append(
            {
                "layer": int(layer),
                "n_units": int(len(group)),
                "n_dead": int(group["is_dead"].sum()),
                "n_universal": int(group["is_universal"].sum()),
                "universal_share": float(group["is_universal"].mean()),
                "median_max_corr": float(group["mean_corr"].median()),
                "median_baseline": float(group["mean_baseline"].median()),
                "excess_p50": float(q[0]),
                "excess_p90": float(q[1]),
                "excess_p99": float(q[2]),
                "excess_max": float(excess.max()) if excess.size else math.nan,
            }
        )
    return rows


# -- where the checkpoints come from ---------------------------------------------------------------


@dataclass
class _Checkpoint:
    step: int
    tokens_seen: int
    models: list[Any]
    tokens: Any = None  # default tokens of this source (a family's held-out set)


def _family_checkpoints(
    family: Any, checkpoints: Sequence[int] | str, cache_dir: Any, device: str
) -> tuple[list[str], Iterator[_Checkpoint]]:
    from tl_universality.data.seeds import (
        SeedFamily,
        family_folder,
        load_family_folder,
    )

    folder = (
        family.folder
        if isinstance(family, SeedFamily)
        else family_folder(family, cache_dir=cache_dir)
    )
    if not (Path(folder) / "family.json").is_file():
        name = getattr(family, "name", family)
        raise FileNotFoundError(
            f"No cached seed family {name!r} in {folder}. Fix: run train_seed_family({name!r},"
            " checkpoints=[...]) first (the CLI's training-curve command does)."
        )
    final = load_family_folder(folder, device=device)
    steps = (
        list(final.info.get("checkpoints", [final.config.steps]))
        if checkpoints == "all"
        else list(checkpoints)
    )
    names = [f"{final.config.name}/seed{s}" for s in final.config.seeds]

    def generate() -> Iterator[_Checkpoint]:
        for step in steps:
            fam = (
                final
                if step == final.config.steps
                else load_family_folder(folder, device=device, checkpoint=int(step))
            )
            yield _Checkpoint(int(step), fam.tokens_seen, fam.models, final.held_out_tokens())

    return names, generate()


def _hub_tokens_per_step(name: str) -> int | None:
    for prefix, value in TOKENS_PER_STEP.items():
        if name.startswith(prefix):
            return value
    return None


def _hub_checkpoints(
    names: Sequence[str],
    checkpoints: Sequence[int],
    kind: str,
    loader: Loader | None,
    device: str,
    tokens_per_step: int | None,
) -> Iterator[_Checkpoint]:
    if loader is None:
        from transformer_lens import HookedTransformer

        loader = HookedTransformer.from_pretrained
    per_step = tokens_per_step if tokens_per_step is not None else _hub_tokens_per_step(names[0])
    for checkpoint in checkpoints:
        key = "checkpoint_index" if kind == "index" else "checkpoint_value"
        models = [loader(name, device=device, **{key: int(checkpoint)}) for name in names]
        cfg = models[0].cfg
        value = getattr(cfg, "checkpoint_value", None)
        step = int(value) if value is not None else int(checkpoint)
        label = getattr(cfg, "checkpoint_label_type", None) or "step"
        if label == "tokens":
            seen = step
        else:
            seen = step * per_step if per_step is not None else -1
        yield _Checkpoint(step, seen, models)


# -- the analysis ----------------------------------------------------------------------------------


def universality_over_training(
    families_or_model_names: Any,
    checkpoints: Sequence[int] | str = "all",
    tokens: Tokens = None,
    *,
    checkpoint_kind: str = "value",
    units: UnitsSpec = None,
    threshold: float = 0.5,
    baseline: str = "rotation",
    n_draws: int = 2,
    seed: int = 0,
    batch_size: int = 32,
    max_tokens: int | None = None,
    exclude_token_ids: Sequence[int] | None = None,
    tokens_per_step: int | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    loader: Loader | None = None,
    progress: bool = False,
    callback: Callable[[int, TrainingCurve], None] | None = None,
) -> TrainingCurve:
    """Universality of seed 0 against the other seeds at each training checkpoint.

    Args:
        families_or_model_names: An offline seed family (a preset name such as ``"demo"``, a
            :class:`~tl_universality.data.seeds.SeedFamilyConfig` or a loaded ``SeedFamily``),
            trained with ``checkpoints=``; or a list of TransformerLens model names with
            checkpoints, the first the reference (e.g. ``["stanford-gpt2-small-a",
            "stanford-gpt2-small-b"]``; needs the internet).
        checkpoints: The checkpoints, in order: training steps of a family (``"all"``: every
            saved one, the final weights last); for model names, values or indices (see
            ``checkpoint_kind``).
        tokens: The analysis tokens (anything ``correlate`` accepts); default a family's
            held-out set, else the embedded corpus. The same tokens at every checkpoint.
        checkpoint_kind: For model names: ``"value"`` (the training step, TransformerLens's
            ``checkpoint_value``) or ``"index"`` (``checkpoint_index``).
        units: Which units (default every layer's MLP neurons).
        threshold: Excess correlation above which a unit is universal (the paper's 0.5).
        baseline, n_draws, seed, batch_size, max_tokens, exclude_token_ids: As in
            :func:`~tl_universality.analyses.correlation.correlate` (the token convention
            defaults to the paper's: BOS, padding and newline positions left out).
        tokens_per_step: Training tokens per step of model names (default known for the
            Stanford GPT-2 runs: 512 x 1024; else tokens seen are -1).
        cache_dir: Where the seed families are cached.
        device: Where the models run.
        loader: ``loader(name, device=..., checkpoint_index=i | checkpoint_value=v)`` returning a
            model; default ``HookedTransformer.from_pretrained``.
        progress: Progress bars of each correlation.
        callback: Called as ``callback(i, curve_so_far)`` after each checkpoint.

    Returns:
        A :class:`TrainingCurve`.

    Examples:
        >>> from tl_universality.data.seeds import train_seed_family
        >>> _ = train_seed_family("tiny", checkpoints=[0, 30], progress=False)  # doctest: +SKIP
        >>> curve = universality_over_training("tiny", max_tokens=5000)  # doctest: +SKIP
        >>> curve.steps  # doctest: +SKIP
        [0, 30, 60]
    """
    from tl_universality.data.seeds import SeedFamily, SeedFamilyConfig
    from tl_universality.data.tokens import resolve_tokens

    spec = families_or_model_names
    if isinstance(spec, (str, SeedFamilyConfig, SeedFamily)):
        names, source_iter = _family_checkpoints(spec, checkpoints, cache_dir, device)
    else:
        names = [str(n) for n in spec]
        if len(names) < 2:
            raise ValueError("universality_over_training needs at least two model names.")
        if isinstance(checkpoints, str):
            raise ValueError(
                "Name the checkpoints of hub models (e.g. checkpoints=[0, 1000, 400000] with"
                " checkpoint_kind='value')."
            )
        if checkpoint_kind not in ("value", "index"):
            raise ValueError(
                f"checkpoint_kind must be 'value' or 'index', got {checkpoint_kind!r}."
            )
        source_iter = _hub_checkpoints(
            names, checkpoints, checkpoint_kind, loader, device, tokens_per_step
        )

    rows: list[dict[str, Any]] = []
    steps: list[int] = []
    seen: list[int] = []
    losses: list[float] = []
    max_corr: list[Tensor] = []
    base: list[Tensor] = []
    index: UnitIndex | None = None
    config: dict[str, Any] = {}
    curve: TrainingCurve | None = None
    for i, point in enumerate(source_iter):
        models = point.models
        source = resolve_tokens(
            tokens if tokens is not None else point.tokens, models, max_tokens=max_tokens
        )
        result = correlate(
            models[0], models[1:], source, units=units, baseline=baseline, n_draws=n_draws,
            seed=seed, batch_size=batch_size, exclude_token_ids=exclude_token_ids,
            progress=progress,
        )  # fmt: skip
        if index is None:
            index = result.units
            config = {
                "baseline": baseline,
                "n_draws": n_draws,
                "seed": seed,
                "tokens": source.name,
                "n_tokens": int(result.n_tokens),
                "exclude_token_ids": sorted(
                    excluded_token_ids(
                        source, getattr(models[0], "tokenizer", None), exclude_token_ids
                    )
                ),
                "token_convention": "paper (BOS, padding, newline)"
                if exclude_token_ids is None
                else "explicit",
            }
        pr = participation_ratios(
            models[0], source, units=units, batch_size=batch_size,
            exclude_token_ids=exclude_token_ids,
        )  # fmt: skip
        loss = _mean_loss(models[0], source, batch_size)
        for row in _layer_rows(result, threshold):
            rows.append(
                {"step": point.step, "tokens_seen": point.tokens_seen, "loss": loss, **row,
                 "participation_ratio": pr.get(row["layer"], math.nan)}
            )  # fmt: skip
        steps.append(point.step)
        seen.append(point.tokens_seen)
        losses.append(loss)
        max_corr.append(result.mean_corr.float())
        base.append(result.mean_baseline.float())
        curve = TrainingCurve(
            names=tuple(names), steps=list(steps), tokens_seen=list(seen), loss=list(losses),
            table=pd.DataFrame(rows, columns=list(COLUMNS)), units=index,
            max_corr=torch.stack(max_corr), baseline=torch.stack(base), threshold=threshold,
            config=config,
        )  # fmt: skip
        if callback is not None:
            callback(i, curve)
        del models, point
    if curve is None:
        raise ValueError("No checkpoint given: pass at least one step, index or value.")
    return curve


def training_curve(
    model: HookedModel,
    others: Sequence[Any],
    checkpoints: Sequence[int],
    tokens: Tokens = None,
    **kwargs: Any,
) -> TrainingCurve:
    """:func:`universality_over_training` of the hub model ``model`` (by its
    ``cfg.model_name``, e.g. a loaded ``stanford-gpt2-small-a``) and ``others`` (names or
    models): the accessor's form, ``model.universality.training_curve(others, checkpoints)``."""
    names = [_hub_name(model), *(_hub_name(o) if not isinstance(o, str) else o for o in others)]
    return universality_over_training(names, checkpoints, tokens, **kwargs)


def _hub_name(model: Any) -> str:
    name = getattr(getattr(model, "cfg", None), "model_name", None)
    if not name:
        raise ValueError(
            "training_curve needs models loaded by name (cfg.model_name). For an offline seed"
            " family, call universality_over_training(preset) instead."
        )
    return str(name)
