"""Causal tests of traced edges: project a writer's output into or out of the selected subspace.

For an edge ``A → B`` of a firing of head ``B`` (:mod:`.trace`), the selected directions of the
firing's side (query: ``u_k``, key: ``v_k``, ``k ∈ S``) are residual directions
``r_k = C d_k`` (the first ``d_model`` entries of the singular vector, centred where the LayerNorm
centres), and ``P`` is the orthogonal projector onto their span. The writer's output ``o`` at the
position where it was kept becomes

- ``o − P o`` (**out**: remove the signal B reads), or ``P o`` (**in**: keep only that signal),

either **globally**, in the residual stream, so every later component sees it, or **locally**, in
B's query (or key) input only (TransformerLens's ``blocks.{l}.hook_q_input`` / ``hook_k_input``),
so nothing but B changes. The control replaces ``P`` by the projector on a random subspace of the
same dimension drawn from the complement of the selected one (and of the all-ones direction, which
a centring LayerNorm ignores). Each run measures B's attention score at the firing's
(dest, src), as ``hook_attn_scores``, and, with ``logit_tokens``, a logit difference (e.g. IO − S).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.attention_decomposition.decompose import as_tokens, positions
from tl_universality.attention_decomposition.svd import attention_svd
from tl_universality.core.protocol import HookedModel, model_name
from tl_universality.core.result import Result, new_axes
from tl_universality.units.hooks import HookList, run_with_interventions, split_qkv_input

MODES = ("local", "global")
PROJECTIONS = ("out", "in")
SUBSPACES = ("selected", "random")
TRACEABLE = ("head", "mlp", "neuron", "embed", "pos_embed")
"""Writer kinds whose output can be projected (the bias is no single output)."""

TABLE_COLUMNS = [
    "source", "target", "side", "prompt", "dest", "src", "position", "n_directions", "mode",
    "projection", "subspace", "score_clean", "score", "score_change", "logit_diff_clean",
    "logit_diff", "logit_diff_change",
]  # fmt: skip


def subspace_projector(
    directions: Float[Tensor, "d m"], tol: float = 1e-10
) -> Float[Tensor, "d d"]:
    """The orthogonal projector onto the span of the columns of ``directions`` (float64).

    Examples:
        >>> P = subspace_projector(torch.tensor([[1.0], [1.0], [0.0]]))
        >>> P.round(decimals=6).tolist()
        [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
    """
    D = directions.to(torch.float64)
    if D.shape[1] == 0:
        return torch.zeros(D.shape[0], D.shape[0], dtype=torch.float64)
    left, sv, _ = torch.linalg.svd(D, full_matrices=False)
    basis = left[:, sv > tol * max(float(sv.max()), 1e-300)]
    return basis @ basis.T


def random_complement(
    projector: Float[Tensor, "d d"], m: int, generator: torch.Generator, centred: bool
) -> Float[Tensor, "d d"]:
    """The projector on ``m`` random directions orthogonal to ``projector``'s range (and to the
    all-ones direction when ``centred``)."""
    d = projector.shape[0]
    avoid = projector.clone()
    if centred:
        ones = torch.full((d, 1), d**-0.5, dtype=torch.float64)
        avoid = subspace_projector(torch.cat([avoid, ones], dim=1))
    draw = torch.randn(d, m, generator=generator, dtype=torch.float64)
    return subspace_projector(draw - avoid @ draw)


@dataclass(frozen=True, eq=False)
class ProjectSignal:
    """Replace a writer's output ``o`` at one position per row by ``o − P o`` (``out``) or
    ``P o`` (``in``), in the residual (``global``) or in one head's query/key input (``local``).

    Row ``i`` of the batch is changed at ``position[i]`` with ``projector[i]``. Writers:
    ``("head", layer, head)``, ``("mlp", layer, -1)``, ``("neuron", layer, n)``,
    ``("embed", -1, -1)``, ``("pos_embed", -1, -1)``; an ``mlp`` writer excludes the neurons in
    ``split_neurons`` (traced as writers of their own).

    Examples:
        >>> hooks = ProjectSignal(("head", 0, 1), (1, 0), "query", "local", "out",
        ...     torch.tensor([2]), torch.zeros(1, 8, 8)).fwd_hooks()
        >>> [name for name, _ in hooks]
        ['blocks.0.attn.hook_z', 'blocks.1.hook_q_input']
    """

    writer: tuple[str, int, int]
    target: tuple[int, int]
    side: str
    mode: str
    projection: str
    position: Int[Tensor, " rows"]
    projector: Float[Tensor, "rows d d"]
    W_O: Tensor | None = None
    w_out: Tensor | None = None
    split_neurons: tuple[tuple[int, Tensor], ...] = ()

    requires_split_qkv_input: ClassVar[bool] = True

    @property
    def hook_name(self) -> str:
        return self._target_hook()

    def _own_hook(self) -> str:
        """Where the writer's output is read."""
        kind, layer, _ = self.writer
        return {
            "head": f"blocks.{layer}.attn.hook_z",
            "neuron": f"blocks.{layer}.mlp.hook_post",
            "mlp": f"blocks.{layer}.hook_mlp_out",
        }.get(kind, f"hook_{kind}")

    def _target_hook(self) -> str:
        """Where the change is added."""
        kind, layer, _ = self.writer
        if self.mode == "local":
            which = "q" if self.side == "query" else "k"
            return f"blocks.{self.target[0]}.hook_{which}_input"
        if kind == "head":
            return f"blocks.{layer}.hook_attn_out"
        if kind in ("mlp", "neuron"):
            return f"blocks.{layer}.hook_mlp_out"
        return f"hook_{kind}"

    def fwd_hooks(self) -> HookList:
        kind, layer, index = self.writer
        recorded: dict[str, Tensor] = {}
        rows = torch.arange(self.position.shape[0])
        pos, local, target_head = self.position, self.mode == "local", self.target[1]

        def output_of(act: Tensor) -> Tensor:
            """The writer's output ``[rows, d_model]`` from the hook it is read at."""
            if kind == "head":
                assert self.W_O is not None
                return act[rows, pos, index] @ self.W_O.to(act)
            if kind == "neuron":
                assert self.w_out is not None
                return act[rows, pos, index][:, None] * self.w_out.to(act)[None]
            out = act[rows, pos]
            for n, w in self.split_neurons:  # an MLP writer without its traced neurons
                out = out - recorded["post"][rows, pos, n][:, None] * w.to(act)[None]
            return out

        def add_change(act: Tensor, o: Tensor) -> Tensor:
            P = self.projector.to(o)
            po = torch.einsum("rij,rj->ri", P, o)
            delta = -po if self.projection == "out" else po - o
            out = act.clone()
            if local:
                out[rows, pos, target_head] = act[rows, pos, target_head] + delta
            else:
                out[rows, pos] = act[rows, pos] + delta
            return out

        def record_post(act: Tensor, hook: Any) -> None:
            recorded["post"] = act

        def record_output(act: Tensor, hook: Any) -> None:
            recorded["o"] = output_of(act)

        def change_recorded(act: Tensor, hook: Any) -> Tensor:
            return add_change(act, recorded.pop("o"))

        def change_own(act: Tensor, hook: Any) -> Tensor:
            return add_change(act, output_of(act))

        hooks: HookList = []
        if kind == "mlp" and self.split_neurons:
            hooks.append((f"blocks.{layer}.mlp.hook_post", record_post))
        own, target = self._own_hook(), self._target_hook()
        if own == target:  # a global change of an MLP's or an embedding's own output
            hooks.append((own, change_own))
        else:
            hooks += [(own, record_output), (target, change_recorded)]
        return hooks


@dataclass
class SignalIntervention(Result):
    """Effects of projecting traced signals, one row per (edge event, condition).

    Attributes:
        table: Columns ``source, target, side, prompt, dest, src, position, n_directions, mode``
            (local/global), ``projection`` (out/in), ``subspace`` (selected/random), then
            ``score_clean, score, score_change`` (B's ``hook_attn_scores`` at (dest, src)) and
            ``logit_diff_clean, logit_diff, logit_diff_change`` (NaN without ``logit_tokens``).
        settings: The arguments.
    """

    FORMAT = "tl_universality.signal_intervention"
    VERSION = 1

    table: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        """The per-event table."""
        return self.table.copy()

    def by_edge(self) -> pd.DataFrame:
        """Mean changes per (edge, side, mode, projection, subspace), with the event count."""
        keys = ["source", "target", "side", "mode", "projection", "subspace"]
        grouped = self.table.groupby(keys, sort=True)
        return grouped.agg(
            n_events=("score_change", "size"),
            mean_score_change=("score_change", "mean"),
            mean_logit_diff_change=("logit_diff_change", "mean"),
        ).reset_index()

    def summary(self) -> dict[str, Any]:
        """Event count and the mean score change of each (mode, projection, subspace)."""
        event = ["source", "target", "side", "prompt", "dest", "src", "position"]
        out: dict[str, Any] = {"n_events": int(len(self.table[event].drop_duplicates()))}
        for (mode, proj, sub), part in self.table.groupby(["mode", "projection", "subspace"]):
            out[f"score_change_{mode}_{proj}_{sub}"] = float(part["score_change"].mean())
        return out

    def plot(self, ax: Any = None) -> Any:
        """Mean change of the attention score per condition, selected vs random subspace."""
        fig, ax = new_axes(ax)
        t = self.table
        labels, sel, rnd = [], [], []
        for mode in MODES:
            for proj in PROJECTIONS:
                part = t[(t["mode"] == mode) & (t["projection"] == proj)]
                labels.append(f"{mode}\n{proj}")
                sel.append(part.loc[part["subspace"] == "selected", "score_change"].mean())
                rnd.append(part.loc[part["subspace"] == "random", "score_change"].mean())
        x = np.arange(len(labels))
        ax.bar(x - 0.2, sel, width=0.4, label="selected subspace")
        ax.bar(x + 0.2, rnd, width=0.4, label="random subspace")
        ax.set_xticks(x, labels)
        ax.axhline(0, color="grey", lw=1)
        ax.set_ylabel("mean change of the attention score")
        ax.legend()
        return fig

    def _write(self, out: Any, meta: dict[str, Any]) -> None:
        meta["settings"] = self.settings
        out.write_table("effects", self.table)

    @classmethod
    def _read(cls, saved: Any) -> SignalIntervention:
        return cls(table=saved.table("effects"), settings=dict(saved.meta.get("settings", {})))


def _events(trace: Any, edges: Sequence[tuple[str, str]] | None, max_events: int | None) -> Any:
    c = trace.contributions
    kinds = trace.nodes.set_index("node")["kind"]
    c = c[c["source"].map(kinds).isin(TRACEABLE)]
    if edges is not None:
        wanted = {(str(s), str(t)) for s, t in edges}
        known = set(zip(trace.edges["source"], trace.edges["target"], strict=True))
        if missing := sorted(wanted - known):
            raise ValueError(
                f"edges={missing[:3]} are not edges of the trace: pick (source, target) pairs"
                " from trace.edges."
            )
        c = c[[(s, t) in wanted for s, t in zip(c["source"], c["target"], strict=True)]]
    c = c.sort_values(["firing", "side", "source"]).merge(
        trace.firings[["firing", "layer", "head", "dest", "src", "directions"]], on="firing"
    )
    return c if max_events is None else c.head(int(max_events))


def intervene_on_signal(
    model: HookedModel,
    tokens: Any,
    trace: Any,
    *,
    edges: Sequence[tuple[str, str]] | None = None,
    modes: Sequence[str] = MODES,
    max_events: int | None = 256,
    logit_tokens: Any = None,
    logit_position: Any = -1,
    seed: int = 0,
) -> SignalIntervention:
    """Project traced signals into/out of their selected subspace and measure the effects.

    Args:
        model: The model the trace was computed on.
        tokens: The same prompts.
        trace: A :class:`~tl_universality.attention_decomposition.trace.CircuitTrace`.
        edges: ``(source, target)`` pairs to test (default every edge whose source is a head, an
            MLP, a neuron or an embedding).
        modes: ``"local"`` (the head's input only) and/or ``"global"`` (the residual).
        max_events: Test at most this many (firing, side, writer) events (None: all).
        logit_tokens: ``[batch, 2]`` token ids (correct, wrong) per prompt for the logit
            difference, e.g. IO and S of an IOI prompt; None skips it.
        logit_position: Where the logits are read: an int or one position per prompt.
        seed: Seed of the random control subspaces.

    Returns:
        A :class:`SignalIntervention` (one row per event and condition; ``by_edge()``).

    Examples:
        >>> from tl_universality.attention_decomposition.planted import planted_circuit
        >>> from tl_universality.attention_decomposition.trace import trace_circuit
        >>> model, tokens = planted_circuit()
        >>> trace = trace_circuit(model, tokens, ["L1H0"])
        >>> effects = intervene_on_signal(model, tokens, trace, edges=[("L0H0", "L1H0")])
        >>> t = effects.by_edge().set_index(["mode", "projection", "subspace"])
        >>> bool(t.loc[("local", "out", "selected"), "mean_score_change"] < -1.0)
        True
        >>> bool(abs(t.loc[("local", "out", "random"), "mean_score_change"]) < 1e-4)
        True
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes={list(modes)!r}: pick from {MODES}.")
    for column in ("contributions", "firings", "nodes", "edges"):
        if not hasattr(trace, column):
            raise ValueError(
                f"trace has no {column!r} table: pass the CircuitTrace that trace_circuit(...)"
                " returned for these tokens."
            )
    ids = as_tokens(model, tokens)
    batch, n_pos = ids.shape
    n_prompts = trace.settings.get("n_prompts")
    if n_prompts is not None and int(n_prompts) != batch:
        raise ValueError(
            f"tokens has {batch} prompts but the trace was computed on {n_prompts}: pass the"
            " tokens the trace was computed on."
        )
    good_bad = None
    if logit_tokens is not None:
        good_bad = torch.as_tensor(logit_tokens, dtype=torch.long).reshape(batch, 2)
    logit_pos = positions(logit_position, batch, n_pos, "logit_position")
    events = _events(trace, edges, max_events)
    generator = torch.Generator().manual_seed(int(seed))
    splits = tuple((int(layer), int(n)) for layer, n in trace.settings.get("neurons", []))
    kinds = trace.nodes.set_index("node")[["kind", "layer", "index"]]
    rows: list[dict[str, Any]] = []
    group_keys = ["source", "layer", "head", "side"]
    with split_qkv_input(model):
        for (source, t_layer, t_head, side), group in events.groupby(group_keys, sort=True):
            t_layer, t_head = int(t_layer), int(t_head)
            svd = attention_svd(model, t_layer, t_head)
            D = (svd.U if side == "query" else svd.V)[:-1]
            if svd.centred:
                D = D - D.mean(0, keepdim=True)
            selected_P, random_P = [], []
            for directions in group["directions"]:
                cols = [int(k) for k in str(directions).split()]
                P = subspace_projector(D[:, cols])
                selected_P.append(P)
                random_P.append(random_complement(P, len(cols), generator, svd.centred))
            kind, w_layer, w_index = kinds.loc[source]
            writer = (str(kind), int(w_layer), int(w_index))
            prompt = torch.tensor(group["prompt"].to_numpy())
            position = torch.tensor(group["position"].to_numpy())
            dest = torch.tensor(group["dest"].to_numpy())
            src = torch.tensor(group["src"].to_numpy())
            batch_ids = ids[prompt.to(ids.device)]
            extra = _writer_weights(model, writer, splits)
            measure = _measurer(t_layer, t_head, dest, src, prompt, good_bad, logit_pos)
            clean = measure(run_with_interventions(model, batch_ids, capture=measure.hooks))
            for mode in modes:
                for projection in PROJECTIONS:
                    for subspace, Ps in (("selected", selected_P), ("random", random_P)):
                        change = ProjectSignal(
                            writer, (t_layer, t_head), side, mode, projection, position,
                            torch.stack(Ps), **extra,
                        )  # fmt: skip
                        after = measure(
                            run_with_interventions(
                                model, batch_ids, [change], capture=measure.hooks
                            )
                        )
                        for i in range(len(group)):
                            rows.append({
                                "source": source, "target": group["target"].iloc[i], "side": side,
                                "prompt": int(prompt[i]), "dest": int(dest[i]), "src": int(src[i]),
                                "position": int(position[i]),
                                "n_directions": int(torch.linalg.matrix_rank(selected_P[i])),
                                "mode": mode, "projection": projection, "subspace": subspace,
                                "score_clean": float(clean[0][i]), "score": float(after[0][i]),
                                "score_change": float(after[0][i] - clean[0][i]),
                                "logit_diff_clean": float(clean[1][i]),
                                "logit_diff": float(after[1][i]),
                                "logit_diff_change": float(after[1][i] - clean[1][i]),
                            })  # fmt: skip
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    settings = {
        "model_name": model_name(model), "modes": list(modes), "max_events": max_events,
        "seed": int(seed), "logit_diff": good_bad is not None,
    }  # fmt: skip
    return SignalIntervention(table, settings)


def _writer_weights(
    model: HookedModel, writer: tuple[str, int, int], splits: tuple[tuple[int, int], ...]
) -> dict[str, Any]:
    kind, layer, index = writer
    if kind == "head":
        return {"W_O": model.W_O[layer, index].detach()}  # type: ignore[attr-defined]
    if kind == "neuron":
        return {"w_out": model.W_out[layer, index].detach()}  # type: ignore[attr-defined]
    if kind == "mlp":
        own = tuple(
            (n, model.W_out[layer, n].detach())  # type: ignore[attr-defined]
            for n_layer, n in splits
            if n_layer == layer
        )
        return {"split_neurons": own}
    return {}


@dataclass(frozen=True)
class _Measure:
    hooks: list[str]
    fn: Any

    def __call__(self, run: tuple[Tensor, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        return self.fn(*run)


def _measurer(
    layer: int, head: int, dest: Tensor, src: Tensor, prompt: Tensor, good_bad: Tensor | None,
    logit_pos: Tensor | None,
) -> _Measure:  # fmt: skip
    name = f"blocks.{layer}.attn.hook_attn_scores"
    rows = torch.arange(dest.shape[0])

    def fn(logits: Tensor, cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        score = cache[name][rows, head, dest, src].double().cpu()
        if good_bad is None:
            return score, torch.full_like(score, float("nan"))
        at = logit_pos[prompt] if logit_pos is not None else torch.full_like(prompt, -1)
        chosen = logits[rows, at].double().cpu()
        pair = good_bad[prompt]
        diff = chosen[rows, pair[:, 0]] - chosen[rows, pair[:, 1]]
        return score, diff

    return _Measure([name], fn)


__all__ = [
    "ProjectSignal",
    "SignalIntervention",
    "intervene_on_signal",
    "random_complement",
    "subspace_projector",
]
