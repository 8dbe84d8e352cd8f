"""Which rows of a block of the reduction a rank reduces, and in which chunks.

The reduction at the end of a pass works on row chunks of each block of the statistics (a
tile's reference rows against one model's columns) whose ``rows × columns`` entries stay within
``FINAL_CHUNK``, the room the plan budgets for it. In a data-parallel run every rank holds the
merged statistics, so each reduces only its own contiguous share of every model's rows
(:func:`owned_range`) and then takes the others from their owners.
"""

from __future__ import annotations

from tl_universality.analyses.correlation.plan import FINAL_CHUNK


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
