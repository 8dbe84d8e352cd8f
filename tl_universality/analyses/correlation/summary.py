"""Running per-row reductions of a correlation run: max/argmax, min/argmin, top-k, baseline
draws, and for a screening run the most anti-correlated units and the co-moments of both lists
(and, to follow the baseline, each row's best mixed units per draw)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Summary:
    """Running per-row reductions of the correlation of reference ``r`` with model ``c``."""

    FIELDS = ("max_val", "max_idx", "min_val", "min_idx", "top_val", "top_idx", "base")
    # with ``screen``: the K most anti-correlated units too, and the co-moments of both lists
    SCREEN_FIELDS = ("low_val", "low_idx", "top_com", "low_com")
    # with ``follow=B``: per draw, each row's B + 1 best mixed units of the other model (their
    # unit index in it: the layer's first unit plus the mixing row), correlation, co-moment with
    # the row and sum of squares, all over the screening tokens
    FOLLOW_FIELDS = ("mix_val", "mix_idx", "mix_com", "mix_m2")

    def __init__(
        self,
        n_rows: int,
        top_k: int,
        n_draws: int,
        device: torch.device,
        screen: int = 0,
        follow: int = 0,
    ) -> None:
        f64 = dict(dtype=torch.float64, device=device)
        i64 = dict(dtype=torch.int64, device=device)
        self.screen = screen
        if screen:
            self.low_val = torch.full((n_rows, screen), torch.inf, **f64)  # type: ignore[arg-type]
            self.low_idx = torch.full((n_rows, screen), -1, **i64)  # type: ignore[arg-type]
            self.top_com = torch.full((n_rows, top_k), torch.nan, **f64)  # type: ignore[arg-type]
            self.low_com = torch.full((n_rows, screen), torch.nan, **f64)  # type: ignore[arg-type]
        self.max_val = torch.full((n_rows,), -torch.inf, **f64)  # type: ignore[arg-type]
        self.max_idx = torch.full((n_rows,), -1, **i64)  # type: ignore[arg-type]
        self.min_val = torch.full((n_rows,), torch.inf, **f64)  # type: ignore[arg-type]
        self.min_idx = torch.full((n_rows,), -1, **i64)  # type: ignore[arg-type]
        self.top_val = torch.full((n_rows, top_k), -torch.inf, **f64)  # type: ignore[arg-type]
        self.top_idx = torch.full((n_rows, top_k), -1, **i64)  # type: ignore[arg-type]
        self.base = torch.full((n_draws, n_rows), torch.nan, **f64)  # type: ignore[arg-type]
        self.follow = follow
        if follow:
            shape = (n_draws, n_rows, follow + 1)
            self.mix_val = torch.full(shape, -torch.inf, **f64)  # type: ignore[arg-type]
            self.mix_idx = torch.full(shape, -1, **i64)  # type: ignore[arg-type]
            self.mix_com = torch.full(shape, torch.nan, **f64)  # type: ignore[arg-type]
            self.mix_m2 = torch.full(shape, torch.nan, **f64)  # type: ignore[arg-type]

    def update(
        self, rows: slice, corr: Tensor, col_offset: int, comoment: Tensor | None = None
    ) -> None:
        nan = corr.isnan()
        has_nan = bool(nan.any())
        # NaN (dead) never wins a max or a min; copies only when there is one.
        high = corr.masked_fill(nan, -torch.inf) if has_nan else corr
        val, idx = high.max(1)
        better = val > self.max_val[rows]
        self.max_val[rows] = torch.where(better, val, self.max_val[rows])
        self.max_idx[rows] = torch.where(better, idx + col_offset, self.max_idx[rows])
        val, idx = (corr.masked_fill(nan, torch.inf) if has_nan else corr).min(1)
        better = val < self.min_val[rows]
        self.min_val[rows] = torch.where(better, val, self.min_val[rows])
        self.min_idx[rows] = torch.where(better, idx + col_offset, self.min_idx[rows])
        k = self.top_val.shape[1]
        if k:
            tv, ti = high.topk(min(k, high.shape[1]), dim=1)
            vals = torch.cat([self.top_val[rows], tv], 1)
            idxs = torch.cat([self.top_idx[rows], ti + col_offset], 1)
            best, order = vals.topk(k, dim=1)
            self.top_val[rows] = best
            self.top_idx[rows] = idxs.gather(1, order)
            if self.screen and comoment is not None:
                coms = torch.cat([self.top_com[rows], comoment.gather(1, ti)], 1)
                self.top_com[rows] = coms.gather(1, order)
        if self.screen and comoment is not None:
            low = corr.masked_fill(nan, torch.inf) if has_nan else corr
            lv, li = low.topk(min(self.screen, low.shape[1]), dim=1, largest=False)
            vals = torch.cat([self.low_val[rows], lv], 1)
            order = vals.topk(self.screen, dim=1, largest=False).indices
            self.low_val[rows] = vals.gather(1, order)
            idxs = torch.cat([self.low_idx[rows], li + col_offset], 1)
            self.low_idx[rows] = idxs.gather(1, order)
            coms = torch.cat([self.low_com[rows], comoment.gather(1, li)], 1)
            self.low_com[rows] = coms.gather(1, order)

    def add_baseline(self, draw: int, rows: slice, best: Tensor) -> None:
        self.base[draw, rows] = torch.fmax(self.base[draw, rows], best)

    def add_mixed_top(
        self, draw: int, rows: slice, corr: Tensor, first_unit: int, m2_x: Tensor, m2_z: Tensor
    ) -> None:
        """Keep each row's ``follow + 1`` best mixed units of one layer and draw: ``corr`` is
        ``[rows, d]``, mixed unit ``j`` is unit ``first_unit + j`` of the other model, ``m2_x``
        and ``m2_z`` the rows' and the mixed units' sums of squares (their co-moments are
        ``corr · sqrt(m2_x m2_z)``, exact to rounding)."""
        high = corr.nan_to_num(-torch.inf)
        val, j = high.topk(min(self.follow + 1, high.shape[1]), dim=1)
        vals = torch.cat([self.mix_val[draw, rows], val], 1)
        best, order = vals.topk(self.follow + 1, dim=1)
        for name, new in (
            ("mix_idx", (j + first_unit).masked_fill(val.isinf(), -1)),
            ("mix_com", corr.gather(1, j) * (m2_x[:, None] * m2_z[j]).sqrt()),
            ("mix_m2", m2_z[j]),
        ):
            both = torch.cat([getattr(self, name)[draw, rows], new.to(getattr(self, name))], 1)
            getattr(self, name)[draw, rows] = both.gather(1, order)
        self.mix_val[draw, rows] = best

    @classmethod
    def row_dim(cls, field: str) -> int:
        """The dimension of ``field`` that runs over the rows (the baseline's draws come first)."""
        return 1 if field == "base" or field in cls.FOLLOW_FIELDS else 0

    def fields(self) -> tuple[str, ...]:
        extra = (self.SCREEN_FIELDS if self.screen else ()) + (
            self.FOLLOW_FIELDS if self.follow else ()
        )
        return self.FIELDS + extra

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}{f}": getattr(self, f) for f in self.fields()}

    def merge(self, gathered: dict[str, Sequence[Tensor]]) -> None:
        """Combine every rank's reductions (``gathered[field]``, one tensor per rank) exactly.

        Ties go to the lower column index, whatever the rank order, so every rank gets the same
        result, and the one process gets when it meets the columns in order. Columns met by two
        ranks (a repeated merge) count once, so merging merged reductions changes nothing.
        """
        for val, idx, sign in (("max_val", "max_idx", 1.0), ("min_val", "min_idx", -1.0)):
            vals, idxs = ranked(sign * torch.stack(list(gathered[val]), 1), gathered[idx])
            setattr(self, val, sign * vals[:, 0])
            setattr(self, idx, idxs[:, 0])
        k = self.top_val.shape[1]
        if k:
            vals, idxs = ranked(torch.cat(list(gathered["top_val"]), 1), gathered["top_idx"])
            self.top_val, self.top_idx = vals[:, :k].contiguous(), idxs[:, :k].contiguous()
        base = gathered["base"][0]
        for other in gathered["base"][1:]:
            base = torch.fmax(base, other)  # NaN (nothing seen by that rank) never wins
        self.base = base.clone()

    def load(self, state: dict[str, Tensor], prefix: str) -> None:
        for f in self.fields():
            setattr(self, f, state[f"{prefix}{f}"].to(getattr(self, f).device).clone())

    def finished(self) -> dict[str, Tensor]:
        """Values with "nothing seen" (every entry NaN) turned into NaN and index -1."""
        out = {}
        for v, i in (("max_val", "max_idx"), ("min_val", "min_idx"), ("top_val", "top_idx")):
            val, idx = getattr(self, v), getattr(self, i)
            missing = torch.isinf(val)
            out[v] = val.masked_fill(missing, torch.nan).cpu()
            out[i] = idx.masked_fill(missing, -1).cpu()
        out["base"] = self.base.cpu()
        return out


def ranked(vals: Tensor, idx_parts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Each row's entries in order of value (descending) then column index (ascending, -1 last),
    a column index that occurs twice in a row kept once."""
    idxs = torch.cat([i.reshape(vals.shape[0], -1) for i in idx_parts], 1)
    key = idxs.masked_fill(idxs < 0, torch.iinfo(torch.int64).max)
    key, order = torch.sort(key, dim=1, stable=True)
    vals, idxs = vals.gather(1, order), idxs.gather(1, order)
    repeat = torch.zeros_like(idxs, dtype=torch.bool)
    repeat[:, 1:] = (key[:, 1:] == key[:, :-1]) & (idxs[:, 1:] >= 0)
    vals, idxs = vals.masked_fill(repeat, -torch.inf), idxs.masked_fill(repeat, -1)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, idxs.gather(1, order)
