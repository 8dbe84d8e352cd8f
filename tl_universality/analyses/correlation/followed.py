"""The chance baseline of a screened run, followed over every token:
``correlate(..., candidates=K, baseline_candidates=B)`` (docs/concepts.md, "Screened exact
correlation").

Without it a screened run takes the baseline from the screening tokens, where it is a maximum
over noisier correlations and so lies higher than over the whole stream; units near the
universality threshold can then fall on the other side of it. With it, the screening stage also
keeps each unit's ``B + 1`` best mixed units ``z = R y`` of every other model and draw (their
correlations, co-moments with the unit and sums of squares, from the same statistics as the
baseline itself). Stage 2 makes the followed mixed units of each other model from its centred
activations, one product with the mixing rows per layer (:class:`MixedUnits`), and accumulates
exact statistics of the pairs (unit, followed mixed unit) like the candidates'. Each draw's
baseline is then the best followed value over all tokens, certified (by the candidates' rule)
when it exceeds the screening value of the best mixed unit not followed by
``certificate_sigmas`` standard errors: up to that margin it is the exhaustive run's baseline.

Cost per token: the mixed units of each other model and draw (at most its ``b`` units, ``d``
products each for layers of ``d`` units: ``1/L`` of one exhaustive pair for ``L`` equal layers)
and ``a · B`` pair products.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_universality.stats.baselines import mixing_matrix
from tl_universality.stats.pair_moments import PairMoments, Sequences, storage

if TYPE_CHECKING:
    from tl_universality.analyses.correlation.run import CorrelationRun


class MixedUnits:
    """The followed mixed units of one other model and baseline draw.

    Args:
        units: Sorted distinct unit indices into the model's mix (the mixed unit ``j`` of the
            layer starting at unit ``s`` is unit ``s + j``, as in the screening summaries).
        offsets: The model's layer offsets (``UnitIndex.offsets``).
        kind, seed, model, draw: Which mixing matrices: layer ``h`` uses :func:`mixing_matrix`
            of ``kind`` and ``seed`` with key ``(model, h, draw)``, as the exhaustive baseline
            does.
        device: Where the mixing rows live.
        matrices: Those matrices by layer where already made (the screening stage's); the
            others are made here.

    Examples:
        >>> from tl_universality.stats.pair_moments import sequence_chunks
        >>> y = torch.randn(50, 6, dtype=torch.float64)
        >>> mixed = MixedUnits(torch.tensor([1, 3, 5]), (0, 2, 6), "rotation", 0, model=1, draw=0)
        >>> chunk = sequence_chunks(y, None, torch.zeros(6, dtype=torch.float64))[0]
        >>> z = mixed.project(chunk).rows[0].T  # [tokens, 3]
        >>> r0 = mixing_matrix("rotation", 2, seed=0, key=(1, 0, 0))
        >>> r1 = mixing_matrix("rotation", 4, seed=0, key=(1, 1, 0))
        >>> want = torch.cat([y[:, :2] @ r0[[1]].T, y[:, 2:] @ r1[[1, 3]].T], 1)
        >>> bool(torch.allclose(z, want))
        True
    """

    def __init__(
        self,
        units: Int[Tensor, " u"],
        offsets: Sequence[int],
        kind: str,
        seed: int,
        *,
        model: int,
        draw: int,
        device: torch.device | str | None = None,
        matrices: Mapping[int, Tensor] | None = None,
    ) -> None:
        self.units = units.to("cpu", torch.int64)
        if self.units.numel() and bool((self.units[1:] <= self.units[:-1]).any()):
            raise ValueError("units must be sorted and distinct")
        self.device = torch.device(device if device is not None else "cpu")
        # per layer with followed units: (first position, end position, layer start, layer end,
        # its mixing rows in float64)
        self.layers: list[tuple[int, int, int, int, Tensor]] = []
        for h in range(len(offsets) - 1):
            lo, hi = int(offsets[h]), int(offsets[h + 1])
            where = ((self.units >= lo) & (self.units < hi)).nonzero()[:, 0]
            if where.numel() == 0:
                continue
            mix = (matrices or {}).get(h)
            if mix is None:
                mix = mixing_matrix(kind, hi - lo, seed=seed, key=(model, h, draw), device=device)
            rows = mix[self.units[where] - lo].to(self.device, torch.float64)
            self.layers.append((int(where[0]), int(where[-1]) + 1, lo, hi, rows))
        self._cast: dict[torch.dtype, list[Tensor]] = {}
        self._buffers: list[Tensor] = []

    @property
    def n_units(self) -> int:
        return int(self.units.numel())

    def apply(self, values: Float[Tensor, " b"]) -> Float[Tensor, " u"]:
        """The followed mixed units of per-unit ``values`` (a mean, a shift), in float64."""
        v = values.to(self.device, torch.float64)
        out = torch.empty(self.n_units, dtype=torch.float64, device=self.device)
        for p0, p1, lo, hi, rows in self.layers:
            out[p0:p1] = rows @ v[lo:hi]
        return out

    def project(self, chunk: Sequences, slot: int = 0) -> Sequences:
        """The followed mixed units of a centred chunk, in its dtype (about the :meth:`apply` of
        its shift; padding stays zero). ``slot`` picks reusable storage (one per chunk)."""
        data = chunk.data
        s, _, w = data.shape
        dt = data.dtype
        if dt not in self._cast:
            self._cast[dt] = [rows.to(dt) for *_, rows in self.layers]
        flat = storage(self._buffers, slot, s * self.n_units * w, data.device, dt)
        out = flat.view(s, self.n_units, w)
        for (p0, p1, lo, hi, _), rows in zip(self.layers, self._cast[dt], strict=True):
            torch.bmm(rows.expand(s, -1, -1), data[:, lo:hi, :], out=out[:, p0:p1, :])
        return Sequences(out, chunk.lengths)


class FollowedBaseline:
    """Stage-2 statistics of the followed baseline of every direction ``(r, c)`` and draw.

    Built by :meth:`from_stage1` (or :meth:`from_state` on resume); :meth:`add` takes the centred
    chunks of a batch, :meth:`draws` gives a direction's baseline per draw and its certificate.
    """

    def __init__(self, follow: int, n1: int) -> None:
        self.follow, self.n1 = follow, n1
        self.mixed: dict[tuple[int, int], MixedUnits] = {}  # (model c, draw)
        self.pairs: dict[tuple[int, int, int], PairMoments] = {}  # (r, c, draw)
        self.rival: dict[tuple[int, int, int], Tensor] = {}  # best mixed unit not followed

    @classmethod
    def from_stage1(
        cls,
        run: CorrelationRun,
        follow: int,
        offsets: Sequence[Sequence[int]],
        *,
        keep_sums: bool,
        device: torch.device,
        product: torch.dtype,
    ) -> FollowedBaseline:
        out = cls(follow, run.n_tokens)
        wanted: dict[tuple[int, int], list[Tensor]] = {}  # (model c, draw): units to follow
        for (_, c), s in run.summaries.items():
            for d in range(s.mix_idx.shape[0]):
                idx = s.mix_idx[d, :, :follow].cpu()
                wanted.setdefault((c, d), []).append(idx[idx >= 0])
        for (c, d), parts in wanted.items():
            units = torch.cat(parts).unique()
            units = units if units.numel() else torch.zeros(1, dtype=torch.int64)
            used = (run.mixing_used or {}).items()
            made = {h: m for (mc, h, md), m in used if (mc, md) == (c, d)}
            out.mixed[(c, d)] = MixedUnits(
                units, offsets[c], str(run.baseline), run.seed, model=c, draw=d, device=device,
                matrices=made,
            )  # fmt: skip
        for (r, c), s in run.summaries.items():
            for d in range(s.mix_idx.shape[0]):
                mixed = out.mixed[(c, d)]
                idx = s.mix_idx[d, :, :follow].cpu()
                missing = idx < 0  # a dead row: any followed unit, sums 0
                cols = torch.searchsorted(mixed.units, idx.masked_fill(missing, mixed.units[0]))
                com = s.mix_com[d, :, :follow].cpu().masked_fill(missing, 0.0)
                m2_z = torch.zeros(mixed.n_units, dtype=torch.float64)
                m2_z[cols[~missing]] = s.mix_m2[d, :, :follow].cpu()[~missing]
                shift_y = run.means[c].to(product).to(torch.float64)  # the candidates' shift
                out.pairs[(r, c, d)] = PairMoments.from_moments(
                    cols, run.n_tokens, run.means[r], run.m2s[r], mixed.apply(run.means[c]).cpu(),
                    m2_z, com, device=device, keep_sums=keep_sums, shift_dtype=product,
                    shift_y=mixed.apply(shift_y).cpu(),
                )  # fmt: skip
                rival = s.mix_val[d, :, follow].cpu()
                out.rival[(r, c, d)] = rival.masked_fill(s.mix_idx[d, :, follow].cpu() < 0, -1.0)
        if run.mixing_used is not None:
            run.mixing_used.clear()  # the rows are taken
        return out

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for (c, d), mixed in self.mixed.items():
            out[f"follow.units.{c}.{d}"] = mixed.units
        for (r, c, d), pm in self.pairs.items():
            out.update({f"follow.pairs.{r}.{c}.{d}.{n}": v for n, v in pm.state_dict().items()})
            out[f"follow.rival.{r}.{c}.{d}"] = self.rival[(r, c, d)]
        return out

    def meta(self) -> dict[str, object]:
        return {
            "follow": self.follow,
            "mixed": [list(k) for k in self.mixed],
            "pairs": [list(k) for k in self.pairs],
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Tensor],
        meta: dict[str, object],
        n1: int,
        offsets: Sequence[Sequence[int]],
        kind: str,
        seed: int,
        device: torch.device,
    ) -> FollowedBaseline:
        out = cls(int(meta["follow"]), n1)  # type: ignore[call-overload]
        for c, d in meta["mixed"]:  # type: ignore[attr-defined]
            out.mixed[(c, d)] = MixedUnits(
                state[f"follow.units.{c}.{d}"], offsets[c], kind, seed, model=c, draw=d,
                device=device,
            )  # fmt: skip
        for r, c, d in meta["pairs"]:  # type: ignore[attr-defined]
            p = f"follow.pairs.{r}.{c}.{d}."
            sub = {n[len(p) :]: v for n, v in state.items() if n.startswith(p)}
            out.pairs[(r, c, d)] = PairMoments.from_state_dict(sub, device=device)
            out.rival[(r, c, d)] = state[f"follow.rival.{r}.{c}.{d}"]
        return out

    def project(self, chunks: dict[int, list[Sequences]]) -> dict[tuple[int, int], list[Sequences]]:
        """The followed mixed units of every (model, draw), chunk by chunk."""
        return {
            (c, d): [mixed.project(ch, slot) for slot, ch in enumerate(chunks[c])]
            for (c, d), mixed in self.mixed.items()
        }

    def add(
        self, chunks: dict[int, list[Sequences]], mixed: dict[tuple[int, int], list[Sequences]]
    ) -> None:
        for (r, c, d), pm in self.pairs.items():
            for x, z in zip(chunks[r], mixed[(c, d)], strict=True):
                pm.add(x, z)

    def summed(self, reduce) -> FollowedBaseline:
        """A copy whose pair statistics are summed over the ranks; ``self`` keeps its own."""
        out = copy.copy(self)
        out.pairs = {key: pm.summed(reduce) for key, pm in self.pairs.items()}
        return out

    def draws(self, key: tuple[int, int], sigmas: float) -> tuple[Tensor, Tensor, Tensor]:
        """``([draws, a] baseline over all tokens, [a] certified for every draw, [draws, a]
        ceiling)`` of direction ``key``: each draw's best followed value (a lower bound of the
        draw's maximum over all mixed units), certified by the candidates' rule, and the upper
        bound at that rule's margin (:meth:`PairMoments.ceiling`)."""
        values, ceilings, certified = [], [], None
        d = 0
        while (*key, d) in self.pairs:
            pm = self.pairs[(*key, d)]
            corr, se = pm.corr().cpu(), pm.standard_error().cpu()
            best = corr.nan_to_num(-torch.inf).amax(1)
            best = best.masked_fill(best.isinf(), torch.nan)
            rival = self.rival[(*key, d)]
            ok, ceiling = pm.certify(best, rival, se, self.n1, sigmas)
            values.append(best)
            ceilings.append(ceiling)
            certified = ok if certified is None else certified & ok
            d += 1
        assert certified is not None
        return torch.stack(values), certified, torch.stack(ceilings)
