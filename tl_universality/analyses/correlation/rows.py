"""Which rows of a block of the reduction a rank reduces, and in which chunks.

The reduction at the end of a pass works on row chunks of each block of the statistics (a
tile's reference rows against one model's columns) whose ``rows × columns`` entries stay within
``FINAL_CHUNK``, the room the plan budgets for it. In a data-parallel run every rank holds the
merged statistics, so each reduces only its own share of the rows the pass reduces, model by
model (:func:`deal_rows`), and then takes the others from their owners.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tl_universality.analyses.correlation.plan import FINAL_CHUNK


def deal_rows(spans: Sequence[tuple[int, int]], ranks: int) -> list[tuple[int, int]]:
    """Each rank's rows ``[lo, hi)`` among the rows of ``spans`` (ranges ``[start, stop)``,
    possibly overlapping): the sorted rows cut into ``ranks`` near-equal runs, rank ``k``'s run
    given by its first and past-its-last row; ``(0, 0)`` for a rank with none. A row of a span
    lies in exactly one rank's range.

    Examples:
        >>> deal_rows([(0, 4), (10, 14)], 2)
        [(0, 4), (10, 14)]
        >>> deal_rows([(0, 4), (10, 14)], 3)
        [(0, 2), (2, 11), (11, 14)]
    """
    rows = torch.cat([torch.arange(s, e) for s, e in spans] or [torch.zeros(0, dtype=torch.long)])
    rows = rows.unique()  # sorted
    out = []
    for k in range(ranks):
        i0, i1 = owned_range(rows.numel(), k, ranks)
        out.append((int(rows[i0]), int(rows[i1 - 1]) + 1) if i1 > i0 else (0, 0))
    return out


def owned_range(n: int, rank: int, ranks: int) -> tuple[int, int]:
    """The ``rank``-th of ``ranks`` contiguous near-equal ranges of ``n`` rows.

    Examples:
        >>> [owned_range(10, r, 3) for r in range(3)]
        [(0, 3), (3, 6), (6, 10)]
    """
    return n * rank // ranks, n * (rank + 1) // ranks


def row_chunks(
    start: int, stop: int, offset: int, width: int, owned: tuple[int, int]
) -> list[tuple[int, int, slice]]:
    """Row chunks ``(r0, r1, the model's rows)`` of a block's rows ``[start, stop)`` (row
    ``start`` is the model's row ``offset``) against ``width`` columns: those in the model's rows
    ``owned``, with at most ``FINAL_CHUNK`` entries each (what the plan budgets for the
    reduction).

    Examples:
        >>> row_chunks(2, 9, 10, 3, owned=(0, 15))
        [(2, 7, slice(10, 15, None))]
    """
    step = max(1, FINAL_CHUNK // max(1, width))
    lo, hi = owned
    first, last = max(start, start + lo - offset), min(stop, start + hi - offset)
    out = []
    for r0 in range(first, last, step):
        r1 = min(last, r0 + step)
        out.append((r0, r1, slice(offset + r0 - start, offset + r1 - start)))
    return out
