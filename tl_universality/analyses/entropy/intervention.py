"""The entropy intervention: fix a neuron's activation and measure the total and the direct
(final-LayerNorm scale frozen) effect on entropy and loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_universality.analyses.entropy.scores import (
    LN_SCALE_HOOK,
    METRICS,
    NeuronSpec,
)
from tl_universality.core.names import neuron_name
from tl_universality.core.protocol import HookedModel, mlp_hook_names, model_name
from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder
from tl_universality.data.tokens.resolve import Tokens
from tl_universality.units.hooks import (
    FixNeuron,
    FreezeLNScale,
    run_with_interventions,
    token_batches,
)

# ---------------------------------------------------------------------------------------------
# Causal test
# ---------------------------------------------------------------------------------------------


def _as_neurons(model: HookedModel, neurons: NeuronSpec) -> list[tuple[int, int]]:
    if isinstance(neurons, pd.DataFrame):
        pairs = list(zip(neurons["layer"].tolist(), neurons["neuron"].tolist(), strict=True))
    elif (
        isinstance(neurons, tuple)
        and len(neurons) == 2
        and all(isinstance(x, (int, np.integer)) for x in neurons)
    ):
        pairs = [neurons]  # type: ignore[list-item]
    else:
        pairs = [tuple(p) for p in neurons]  # type: ignore[misc]
    out = [(int(layer), int(neuron)) for layer, neuron in pairs]
    if not out:
        raise ValueError("No neurons given: pass (layer, neuron) pairs.")
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    bad = [p for p in out if not (0 <= p[0] < n_layers and 0 <= p[1] < d_mlp)]
    if bad:
        raise IndexError(
            f"{model_name(model)} has layers 0..{n_layers - 1} with {d_mlp} neurons each;"
            f" got {bad}."
        )
    return list(dict.fromkeys(out))  # unique, in order


def matched_random_neurons(
    norms: Float[Tensor, "layer neuron"],
    candidates: Sequence[tuple[int, int]],
    n: int,
    seed: int = 0,
) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """For each candidate, ``n`` random neurons of its layer matched on output norm.

    Matching: the other neurons of the layer (candidates excluded) closest in ``log ‖w_out‖``,
    ``4 n`` of them (or all there are), of which ``n`` are drawn at random. The pool keeps the draw
    random while keeping norms close, even for a candidate whose norm is an outlier.

    Examples:
        >>> norms = torch.tensor([[1.0, 1.1, 5.0, 0.9, 4.0, 1.05, 0.1, 0.2, 0.3]])
        >>> matched = matched_random_neurons(norms, [(0, 2)], n=1)[(0, 2)]
        >>> len(matched), matched[0] in [(0, 4), (0, 1), (0, 5), (0, 0)]  # the 4 closest in norm
        (1, True)
    """
    rng = np.random.default_rng(seed)
    excluded = set(candidates)
    log_norm = torch.log(norms.to(torch.float64).clamp_min(1e-30)).numpy()
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for layer, neuron in candidates:
        others = np.array([j for j in range(norms.shape[1]) if (layer, j) not in excluded])
        if n <= 0 or others.size == 0:
            out[(layer, neuron)] = []
            continue
        distance = np.abs(log_norm[layer, others] - log_norm[layer, neuron])
        pool = others[np.argsort(distance, kind="stable")[: min(others.size, 4 * n)]]
        chosen = rng.choice(pool, size=min(n, pool.size), replace=False)
        out[(layer, neuron)] = [(layer, int(j)) for j in sorted(chosen)]
    return out


def _metric_sums(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    scale: Tensor | None,
) -> dict[str, float]:
    """Sums over predicted positions (all but the last) of each metric, plus their count."""
    logits = logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = tokens[:, 1:, None]
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    loss = -logp.gather(-1, targets).squeeze(-1)
    true_logit = logits.gather(-1, targets)
    rank = (logits > true_logit).sum(-1) + 1  # ties go in the true token's favour
    sums = {
        "entropy": float(entropy.sum(dtype=torch.float64)),
        "loss": float(loss.sum(dtype=torch.float64)),
        "reciprocal_rank": float((1.0 / rank.to(torch.float64)).sum()),
        "ln_scale": (
            float(scale[:, :-1].sum(dtype=torch.float64)) if scale is not None else float("nan")
        ),
        "count": float(entropy.numel()),
    }
    return sums


def _blocks(n_values: int, batch: int) -> list[slice]:
    """Rows of each value's copy of the batch in a stacked pass."""
    return [slice(j * batch, (j + 1) * batch) for j in range(n_values)]


def _add(into: dict[str, float], sums: dict[str, float]) -> None:
    for key, value in sums.items():
        into[key] = into.get(key, 0.0) + value


def _means(sums: dict[str, float]) -> dict[str, float]:
    count = sums.get("count", 0.0)
    return {m: sums.get(m, float("nan")) / count if count else float("nan") for m in METRICS}


@dataclass(repr=False)
class EntropyInterventionResult(Result):
    """What :func:`entropy_intervention` measured.

    Attributes:
        table: One row per neuron × value × effect: ``kind`` (``"candidate"`` or ``"random"``),
            ``layer, neuron``, ``candidate_layer, candidate_neuron`` (the candidate a random neuron
            is matched to; itself for a candidate), ``w_out_norm, value``, ``effect``
            (``"total"`` or ``"direct"``) and the mean ``entropy, loss, reciprocal_rank, ln_scale``.
        neurons: One row per neuron: ``kind, layer, neuron, candidate_layer, candidate_neuron,
            w_out_norm`` and ``clean_mean_activation``.
        clean: The same metrics without any intervention.
        values: The activation values tried.
        has_final_ln: Whether the model has a final normalisation with a scale to freeze.
        note: What the direct effect means for this model (said when direct = total).
        n_tokens: Predicted positions averaged over.
    """

    FORMAT = "tl_universality.entropy_intervention"

    table: pd.DataFrame
    neurons: pd.DataFrame
    clean: dict[str, float]
    values: list[float]
    has_final_ln: bool
    note: str
    n_tokens: int
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        """The long table (one row per neuron × value × effect)."""
        return self.table.copy()

    def summary(self) -> dict[str, Any]:
        """Headline numbers: the clean entropy, and for the candidate and value with the largest
        total entropy change, that change, its direct part and the matched random neurons' mean
        change (``direct_share`` = direct / total: near 0 for an entropy neuron)."""
        out: dict[str, Any] = {
            "n_candidates": int((self.neurons["kind"] == "candidate").sum()),
            "n_tokens": int(self.n_tokens),
            "clean_entropy": float(self.clean.get("entropy", float("nan"))),
        }
        eff = self.effects(["entropy"])
        total = eff[eff["effect"] == "total"]
        if len(total) and total["entropy_change"].abs().notna().any():
            best = total.loc[total["entropy_change"].abs().idxmax()]
            direct = eff[
                (eff["effect"] == "direct")
                & (eff["layer"] == best["layer"])
                & (eff["neuron"] == best["neuron"])
                & (eff["value"] == best["value"])
            ]
            direct_change = float(direct["entropy_change"].iloc[0]) if len(direct) else np.nan
            out.update(
                best_neuron=neuron_name(best["layer"], best["neuron"]),
                best_value=float(best["value"]),
                total_entropy_change=float(best["entropy_change"]),
                direct_entropy_change=direct_change,
                baseline_entropy_change=float(best["baseline_entropy_change"]),
                direct_share=direct_change / float(best["entropy_change"])
                if best["entropy_change"]
                else np.nan,
            )
        return out

    def effects(self, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
        """Per candidate, value and effect: the change of each metric from the clean run, and the
        mean and standard deviation of that change over the candidate's matched random neurons.

        Columns: ``layer, neuron, value, effect`` and, per metric ``m``: ``m_change``,
        ``baseline_m_change`` and ``baseline_m_change_std``.
        """
        t = self.table
        keys = ["candidate_layer", "candidate_neuron", "value", "effect"]
        cand = t[t["kind"] == "candidate"].set_index(keys)
        rand = t[t["kind"] == "random"].groupby(keys)
        out = pd.DataFrame(index=cand.index)
        for m in metrics:
            out[f"{m}_change"] = cand[m] - self.clean[m]
            out[f"baseline_{m}_change"] = rand[m].mean() - self.clean[m]
            out[f"baseline_{m}_change_std"] = rand[m].std(ddof=0)
        out = out.reset_index().rename(
            columns={"candidate_layer": "layer", "candidate_neuron": "neuron"}
        )
        return out

    def plot(self, ax: Any = None, metric: str = "entropy") -> Any:
        """Plot ``metric`` against the fixed value: each candidate's total (solid) and direct
        (dashed) effect, its random baseline (mean ± std of the total effect, shaded) and the clean
        level (grey). Returns the matplotlib figure."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
        fig, ax = new_axes(ax, figsize=(6, 4))
        t = self.table
        for (layer, neuron), group in t[t["kind"] == "candidate"].groupby(["layer", "neuron"]):
            total = group[group["effect"] == "total"].sort_values("value")
            direct = group[group["effect"] == "direct"].sort_values("value")
            (line,) = ax.plot(
                total["value"], total[metric], "-o", label=f"{neuron_name(layer, neuron)} total"
            )
            if self.has_final_ln:
                ax.plot(
                    direct["value"],
                    direct[metric],
                    "--",
                    color=line.get_color(),
                    label=f"{neuron_name(layer, neuron)} direct",
                )
            rand = t[
                (t["kind"] == "random")
                & (t["candidate_layer"] == layer)
                & (t["candidate_neuron"] == neuron)
                & (t["effect"] == "total")
            ]
            if len(rand):
                stats = rand.groupby("value")[metric].agg(["mean", "std"]).fillna(0.0)
                ax.fill_between(
                    stats.index,
                    stats["mean"] - stats["std"],
                    stats["mean"] + stats["std"],
                    color=line.get_color(),
                    alpha=0.15,
                    label=f"{neuron_name(layer, neuron)} random baseline",
                )
        if np.isfinite(self.clean[metric]):
            ax.axhline(self.clean[metric], color="grey", lw=1, label="clean")
        ax.set_xlabel("fixed activation")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"Entropy intervention{f' ({self.model_name})' if self.model_name else ''}")
        ax.legend(fontsize="small")
        return fig

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_table("table", self.table.reset_index(drop=True))
        out.write_table("neurons", self.neurons.reset_index(drop=True))
        meta.update(
            clean=self.clean,
            values=self.values,
            has_final_ln=self.has_final_ln,
            note=self.note,
            n_tokens=self.n_tokens,
            model_name=self.model_name,
            extra=self.extra,
        )

    @classmethod
    def _read(cls, saved: SavedFolder) -> EntropyInterventionResult:
        meta = saved.meta
        return cls(
            table=saved.table("table"),
            neurons=saved.table("neurons"),
            clean={k: float(v) for k, v in meta["clean"].items()},
            values=[float(v) for v in meta["values"]],
            has_final_ln=bool(meta["has_final_ln"]),
            note=str(meta["note"]),
            n_tokens=int(meta["n_tokens"]),
            model_name=str(meta.get("model_name", "")),
            extra=dict(meta.get("extra") or {}),
        )

    @classmethod
    def _load_fix(cls) -> str:
        return "run entropy_intervention(...) again and save it, or point to the right folder."


def _direct_effect_note(model: HookedModel, has_final_ln: bool) -> str:
    norm_type = getattr(model.cfg, "normalization_type", None)
    if not has_final_ln:
        return (
            f"{model_name(model)} has no final normalisation (normalization_type={norm_type!r}):"
            " there is no LayerNorm scale for a neuron to act through, so the direct effect equals"
            " the total effect and ln_scale is NaN."
        )
    return (
        f"Direct effect: the final normalisation's scale ({LN_SCALE_HOOK},"
        f" normalization_type={norm_type!r}) frozen to its clean value; for a neuron before the"
        " last layer it still includes paths through later layers."
    )


def entropy_intervention(
    model: HookedModel,
    neurons: NeuronSpec,
    values: Sequence[float | int] | Float[Tensor, " values"] | np.ndarray,
    tokens: Tokens,
    *,
    n_random_baseline: int = 5,
    seed: int = 0,
    batch_size: int = 4,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> EntropyInterventionResult:
    """Fix each neuron to each value at every position; measure entropy, loss, rank and LN scale.

    For every neuron and value two runs are made (all values of a neuron share one forward pass of
    ``batch_size × len(values)`` sequences): the **total** effect (only the neuron fixed, with
    :class:`~tl_universality.units.hooks.FixNeuron`) and the **direct** effect (also the final
    LayerNorm
    scale frozen to the clean run's, with :class:`~tl_universality.units.hooks.FreezeLNScale`). An
    entropy neuron moves the entropy a lot in total and hardly at all directly. A model without a
    final normalisation (``normalization_type=None``) has no scale path: the direct rows then repeat
    the total ones and ``result.note`` says so. Each metric is averaged over every position that
    predicts a next token (all but the last of each sequence). The baseline repeats everything for
    ``n_random_baseline`` random neurons per candidate, from its layer, matched on output norm
    (:func:`matched_random_neurons`).

    Args:
        model: Any TransformerLens model with MLPs.
        neurons: The candidates (:data:`NeuronSpec`).
        values: Activation values to fix the neurons to.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` takes (a ``[n, seq]``
            tensor of BOS-first rows, a file, ``None`` for the default corpus, ...).
        n_random_baseline: Random matched neurons per candidate (0 for none).
        seed: Seed of the random baseline.
        batch_size: Sequences per batch (an intervened pass runs ``batch_size * len(values)``).
        max_tokens: Use at most this many tokens.
        bos_token_id: BOS id for a token tensor (default: the tokenizer's, else the first token).
        progress: Show a progress bar over batches.

    Returns:
        An :class:`EntropyInterventionResult`.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu", seed=0))
        >>> toks = torch.tensor([[0, 3, 5, 7], [0, 2, 4, 6]])
        >>> result = entropy_intervention(model, (0, 1), [0.0, 5.0], toks, n_random_baseline=1)
        >>> result.to_dataframe().shape  # 2 neurons x 2 values x (total, direct)
        (8, 12)
    """
    mlp_hook_names(model)
    candidates = _as_neurons(model, neurons)
    raw = values.detach().cpu() if isinstance(values, Tensor) else values
    values_list = [float(v) for v in np.asarray(raw, dtype=np.float64).reshape(-1)]
    if not values_list:
        raise ValueError("No values given: pass the activations to fix the neurons to.")
    norms = model.W_out.detach().to("cpu", torch.float64).norm(dim=-1)  # type: ignore[attr-defined]
    matched = matched_random_neurons(norms, candidates, n_random_baseline, seed)
    runs: list[tuple[str, tuple[int, int], tuple[int, int]]] = [
        ("candidate", c, c) for c in candidates
    ]
    runs += [("random", r, c) for c in candidates for r in matched[c]]

    has_final_ln = LN_SCALE_HOOK in model.hook_dict
    scale_capture = [LN_SCALE_HOOK] if has_final_ln else []
    layers = sorted({neuron[0] for _, neuron, _ in runs})
    clean_capture = scale_capture + [f"blocks.{layer}.mlp.hook_post" for layer in layers]

    clean_sums: dict[str, float] = {}
    act_sums = {neuron: 0.0 for _, neuron, _ in runs}
    act_count = 0
    sums: dict[tuple[int, int, str], dict[str, float]] = {}
    batches = token_batches(
        model, tokens, batch_size=batch_size, bos_token_id=bos_token_id, max_tokens=max_tokens
    )
    for batch in tqdm(batches, disable=not progress, desc="entropy intervention", unit="batch"):
        logits, cache = run_with_interventions(model, batch, capture=clean_capture)
        clean_scale = cache.get(LN_SCALE_HOOK)
        _add(clean_sums, _metric_sums(logits, batch, clean_scale))
        act_count += batch[:, :-1].numel()
        for _, (layer, neuron), _ in runs:
            acts = cache[f"blocks.{layer}.mlp.hook_post"][:, :-1, neuron]
            act_sums[(layer, neuron)] += float(acts.sum(dtype=torch.float64))
        # All values in one forward pass: the batch repeated once per value, block j fixed to
        # values[j] (fewer, larger passes than one per value).
        n = batch.shape[0]
        stacked = batch.repeat(len(values_list), 1)
        per_row = torch.tensor(values_list, dtype=torch.float64, device=batch.device)
        per_row = per_row.repeat_interleave(n)[:, None]  # [values * batch, 1]
        frozen = (
            [FreezeLNScale(clean_scale.repeat(len(values_list), 1, 1))]
            if clean_scale is not None
            else []
        )
        for i, (_, (layer, neuron), _) in enumerate(runs):
            fix = FixNeuron(layer, neuron, per_row)
            logits, cache = run_with_interventions(model, stacked, [fix], capture=scale_capture)
            total_scale = cache.get(LN_SCALE_HOOK)
            for j, block in enumerate(_blocks(len(values_list), n)):
                scale = total_scale[block] if total_scale is not None else None
                total = _metric_sums(logits[block], batch, scale)
                _add(sums.setdefault((i, j, "total"), {}), total)
            if frozen:
                del logits  # one [values * batch, pos, d_vocab] tensor at a time
                logits, _ = run_with_interventions(model, stacked, [fix, *frozen])
                for j, block in enumerate(_blocks(len(values_list), n)):
                    direct = _metric_sums(logits[block], batch, clean_scale)
                    _add(sums.setdefault((i, j, "direct"), {}), direct)
            else:  # no final normalisation: nothing to freeze, direct = total (same running sums)
                for j in range(len(values_list)):
                    sums[(i, j, "direct")] = sums[(i, j, "total")]

    rows = []
    neuron_rows = []
    for i, (kind, (layer, neuron), (c_layer, c_neuron)) in enumerate(runs):
        base = {
            "kind": kind,
            "layer": layer,
            "neuron": neuron,
            "candidate_layer": c_layer,
            "candidate_neuron": c_neuron,
            "w_out_norm": float(norms[layer, neuron]),
        }
        neuron_rows.append(
            {**base, "clean_mean_activation": act_sums[(layer, neuron)] / max(act_count, 1)}
        )
        for j, value in enumerate(values_list):
            for effect in ("total", "direct"):
                rows.append(
                    {**base, "value": value, "effect": effect, **_means(sums[(i, j, effect)])}
                )
    return EntropyInterventionResult(
        table=pd.DataFrame(rows),
        neurons=pd.DataFrame(neuron_rows),
        clean=_means(clean_sums),
        values=values_list,
        has_final_ln=has_final_ln,
        note=_direct_effect_note(model, has_final_ln),
        n_tokens=int(clean_sums.get("count", 0)),
        model_name=model_name(model),
    )
