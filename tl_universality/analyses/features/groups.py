"""Feature groups: token sets, unigrams, positions, user features and labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_universality.analyses.features.catalogue import (
    POSITION,
    PREVIOUS_TOKEN,
    SYNTAX,
    UNIGRAM,
    get_family,
    token_set_family,
)
from tl_universality.analyses.features.context import FeatureContext, normalise_token

# ---------------------------------------------------------------------------------------------
# Feature groups


class FeatureGroup:
    """A block of features evaluated together. Subclass :class:`PartitionGroup` or
    :class:`IndicatorGroup`, not this."""

    names: tuple[str, ...]
    families: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:3]) + (", ..." if len(self.names) > 3 else "")
        return f"{type(self).__name__}({len(self)} features: {shown})"


class PartitionGroup(FeatureGroup):
    """Features that are unions of the cells of a partition: each token lies in at most one cell.

    Subclasses set ``names``, ``families``, ``cell_names`` and ``membership`` (``[features,
    cells]``: which cells make up each feature; the identity when features are the cells) and
    implement :meth:`cells`.
    """

    cell_names: tuple[str, ...]
    membership: Bool[np.ndarray, "features cells"]

    def cells(self, ctx: FeatureContext) -> Int[Tensor, " tok"]:
        """The cell of each kept token, -1 for none."""
        raise NotImplementedError


class IndicatorGroup(FeatureGroup):
    """Features that may overlap, evaluated as a ``[tokens, features]`` boolean matrix."""

    def indicators(self, ctx: FeatureContext) -> Bool[Tensor, "tok features"]:
        raise NotImplementedError


def _vocab_lookup(table: Tensor, ids: Tensor) -> Tensor:
    """Rows of a per-token-id table; the table's last row answers id -1 (no previous token)."""
    if ids.numel() and int(ids.max()) >= table.shape[0] - 1:
        raise IndexError(
            f"Token id {int(ids.max())} is outside the features' vocabulary of"
            f" {table.shape[0] - 1} tokens. Build the features for this model's d_vocab."
        )
    return table.to(ids.device)[ids]


class TokenSetFeatures(IndicatorGroup):
    """Membership of the current (or previous) token in named token sets (vocabulary masks).

    Feature names are ``token_set:<set>`` (``prev_token_set:<set>`` for the previous token).
    Current-token features belong to the family the catalogue gives the set
    (:func:`token_set_family`), previous-token ones to ``previous-token``.

    Args:
        masks: ``{set name: boolean mask over the vocabulary}``.
        previous: Read the previous token instead of the current one.
        families: Family of each set, overriding the catalogue (current token only).

    Examples:
        >>> g = TokenSetFeatures({"odd": np.array([False, True, False, True])}, previous=True)
        >>> g.names, g.families
        (('prev_token_set:odd',), ('previous-token',))
    """

    def __init__(
        self,
        masks: Mapping[str, Bool[np.ndarray, " d_vocab"]],
        *,
        previous: bool = False,
        families: Mapping[str, str] | None = None,
    ) -> None:
        if not masks:
            raise ValueError("TokenSetFeatures needs at least one mask.")
        sets = list(masks)
        self.masks = {s: np.asarray(masks[s], dtype=bool) for s in sets}
        matrix = np.stack(list(self.masks.values()), axis=1)
        pad = np.zeros((1, len(sets)), dtype=bool)
        self._table = torch.from_numpy(np.concatenate([matrix, pad]))
        self.set_names = tuple(sets)
        self.previous = previous
        prefix = "prev_token_set" if previous else "token_set"
        self.names = tuple(f"{prefix}:{s}" for s in sets)
        families = dict(families or {})
        self.families = tuple(
            PREVIOUS_TOKEN if previous else families.get(s, token_set_family(s)) for s in sets
        )

    @classmethod
    def from_registry(
        cls,
        vocab: Any,
        names: Iterable[str] | None = None,
        *,
        previous: bool = False,
        d_vocab: int | None = None,
        drop_empty: bool = True,
    ) -> TokenSetFeatures:
        """Features for registered token sets
        (:func:`~tl_universality.data.token_sets.token_set_masks`).

        Args:
            vocab: A tokenizer, a model with a tokenizer, or a list of token strings.
            names: Registered set names (default: all).
            previous: Read the previous token.
            d_vocab: Mask length (default: the model's ``cfg.d_vocab`` or the vocabulary size).
            drop_empty: Leave out sets with no token in this vocabulary.
        """
        from tl_universality.data.token_sets import token_set_masks

        masks = token_set_masks(vocab, names, d_vocab=d_vocab)
        if drop_empty:
            masks = {k: v for k, v in masks.items() if v.any()} or masks
        return cls(masks, previous=previous)

    def indicators(self, ctx: FeatureContext) -> Bool[Tensor, "tok features"]:
        ids = ctx.prev_token_ids if self.previous else ctx.token_ids
        return _vocab_lookup(self._table, ids)


class UnigramFeatures(PartitionGroup):
    """ "The current (or previous) token is ``t``", for normalised token strings ``t``.

    Tokens are grouped by :func:`normalise_token` (``" The"`` and ``"the"`` are one unigram), so
    each token id is in at most one feature: a partition. Names are ``token:'t'`` (``prev_token:
    't'``); families ``unigram`` (``previous-token``).

    Args:
        vocab: Token strings of the vocabulary (index = token id).
        unigrams: The normalised strings to make features for (unknown ones are an error).
        previous: Read the previous token.

    Examples:
        >>> g = UnigramFeatures([" The", "the", " cat"], ["the", "cat"])
        >>> g.names, g.cells(FeatureContext.from_tokens(torch.tensor([[2, 0, 1]]))).tolist()
        (("token:'the'", "token:'cat'"), [1, 0, 0])
    """

    def __init__(
        self, vocab: Sequence[str], unigrams: Iterable[str], *, previous: bool = False
    ) -> None:
        unigrams = list(dict.fromkeys(unigrams))  # unique, order kept
        normalised = [normalise_token(s) if s else None for s in vocab]
        known = set(normalised) - {None}
        missing = [u for u in unigrams if u not in known]
        if missing:
            raise ValueError(
                f"Unigram(s) {missing[:5]} match no token of the vocabulary. Unigrams are"
                " normalised token strings (one leading space dropped, lower case)."
            )
        cell_of = {u: i for i, u in enumerate(unigrams)}
        table = [cell_of.get(n, -1) if n is not None else -1 for n in normalised]
        self._table = torch.tensor([*table, -1], dtype=torch.long)
        self.unigrams = tuple(unigrams)
        self.previous = previous
        prefix = "prev_token" if previous else "token"
        self.names = tuple(f"{prefix}:{u!r}" for u in unigrams)
        self.cell_names = self.names
        self.families = (PREVIOUS_TOKEN if previous else UNIGRAM,) * len(unigrams)
        self.membership = np.eye(len(unigrams), dtype=bool)

    @classmethod
    def most_frequent(
        cls,
        vocab: Sequence[str],
        counts: Int[np.ndarray, " d_vocab"],
        n: int,
        *,
        previous: bool = False,
    ) -> UnigramFeatures:
        """Features for the ``n`` most frequent normalised tokens, given per-id counts.

        Examples:
            >>> UnigramFeatures.most_frequent([" a", "A", "b"], np.array([1, 2, 2]), 1).unigrams
            ('a',)
        """
        return cls(vocab, most_frequent_unigrams(vocab, counts, n), previous=previous)

    def cells(self, ctx: FeatureContext) -> Int[Tensor, " tok"]:
        ids = ctx.prev_token_ids if self.previous else ctx.token_ids
        return _vocab_lookup(self._table, ids)


def most_frequent_unigrams(
    vocab: Sequence[str], counts: Int[np.ndarray, " d_vocab"], n: int
) -> list[str]:
    """The ``n`` normalised token strings with the highest total count (ties: first seen id).

    Examples:
        >>> most_frequent_unigrams([" a", "A", "b", ""], np.array([1, 2, 2, 9]), 2)
        ['a', 'b']
    """
    counts = np.asarray(counts)
    frame = pd.DataFrame(
        {
            "unigram": [normalise_token(s) for s in vocab[: len(counts)]],
            "count": counts[: len(vocab)],
            "id": np.arange(min(len(vocab), len(counts))),
        }
    )
    frame = frame[(frame["unigram"] != "") & (frame["count"] > 0)]
    totals = frame.groupby("unigram", sort=False).agg(count=("count", "sum"), id=("id", "min"))
    totals = totals.sort_values(["count", "id"], ascending=[False, True])
    return totals.index[: max(0, int(n))].tolist()


class PositionFeatures(PartitionGroup):
    """Bins of position, and thresholds "position >= e" at every inner bin start.

    ``starts = [0, 8, 16]`` makes the bins ``position:[0,8)``, ``position:[8,16)``,
    ``position:>=16`` and the thresholds ``position:>=8``. Thresholds catch neurons that change
    monotonically with position (a linear function of position is explained far better by
    "position >= middle" than by any single bin); bins catch neurons tuned to a range.
    Tokens before the first start are in no feature. Family ``position``.

    Args:
        starts: Increasing bin starts.
        thresholds: Add the "position >= e" features.

    Examples:
        >>> PositionFeatures([0, 8, 16]).names
        ('position:[0,8)', 'position:[8,16)', 'position:>=16', 'position:>=8')
        >>> PositionFeatures.uniform(64, 4).starts
        (0, 16, 32, 48)
    """

    def __init__(self, starts: Sequence[int], *, thresholds: bool = True) -> None:
        starts = [int(s) for s in starts]
        if not starts or any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
            raise ValueError(f"Position bin starts must be non-empty and increasing: {starts}.")
        self.starts = tuple(starts)
        ends = [*starts[1:], None]
        self.cell_names = tuple(
            f"position:[{a},{b})" if b is not None else f"position:>={a}"
            for a, b in zip(starts, ends, strict=True)
        )
        n = len(starts)
        rows = [np.eye(n, dtype=bool)]
        names = list(self.cell_names)
        if thresholds and n > 2:
            upper = np.triu(np.ones((n, n), dtype=bool))[1:-1]  # cells i.. for i = 1 .. n-2
            rows.append(upper)
            names += [f"position:>={s}" for s in starts[1:-1]]
        self.membership = np.concatenate(rows)
        self.names = tuple(names)
        self.families = (POSITION,) * len(names)
        self._starts = torch.tensor(starts, dtype=torch.long)

    @classmethod
    def uniform(
        cls, seq_len: int, n_bins: int = 16, *, thresholds: bool = True
    ) -> PositionFeatures:
        """``n_bins`` bins of (nearly) equal width over positions ``0 .. seq_len - 1``."""
        n_bins = max(1, min(int(n_bins), int(seq_len)))
        starts = np.unique(np.floor(np.linspace(0, seq_len, n_bins + 1)[:-1]).astype(int))
        return cls(starts.tolist(), thresholds=thresholds)

    def cells(self, ctx: FeatureContext) -> Int[Tensor, " tok"]:
        starts = self._starts.to(ctx.positions.device)
        return torch.searchsorted(starts, ctx.positions, right=True) - 1


UserValues = Callable[[FeatureContext], Any] | np.ndarray | Tensor
"""A user feature's values: ``fn(ctx) -> [tokens]`` for the kept tokens of a batch, or an array
``[n_sequences, seq]`` aligned with the token stream (one entry per position, BOS included)."""


def _aligned(values: Any, ctx: FeatureContext, what: str) -> Tensor:
    """Evaluate a user function, or read a stream-aligned array, for the kept tokens."""
    if callable(values):
        out = torch.as_tensor(np.asarray(values(ctx)))
        if out.shape != (ctx.n_tokens,):
            raise ValueError(
                f"{what}: the function returned shape {tuple(out.shape)}, expected"
                f" ({ctx.n_tokens},) (one value per kept token of the batch)."
            )
        return out.to(ctx.token_ids.device)
    array = torch.as_tensor(values)
    if array.ndim != 2:
        raise ValueError(
            f"{what}: a precomputed array must be [n_sequences, seq] (aligned with the token"
            f" stream), got shape {tuple(array.shape)}."
        )
    if ctx.n_tokens and (
        int(ctx.sequence_ids.max()) >= array.shape[0] or int(ctx.positions.max()) >= array.shape[1]
    ):
        raise ValueError(
            f"{what}: the precomputed array has shape {tuple(array.shape)} but the stream reached"
            f" sequence {int(ctx.sequence_ids.max())}, position {int(ctx.positions.max())}."
            " Align it with the token stream (one row per sequence, one column per position)."
        )
    # Index where the array lives, then move only the batch's values.
    seq, pos = ctx.sequence_ids.to(array.device), ctx.positions.to(array.device)
    return array[seq, pos].to(ctx.token_ids.device)


class UserFeature(IndicatorGroup):
    """One boolean feature supplied by the user: the hook for parser or topic labels.

    Args:
        name: The feature's name.
        values: ``fn(ctx: FeatureContext) -> bool [tokens]`` (reads ``ctx.token_ids``,
            ``ctx.strings``, ``ctx.positions``, ``ctx.sequence_ids`` ...), or a boolean array
            ``[n_sequences, seq]`` aligned with the token stream.
        family: A registered family (``"syntax"``, ``"semantic"`` or one of yours).

    Examples:
        >>> verb = UserFeature("pos:VERB", lambda ctx: np.isin(ctx.strings, [" is", " runs"]))
        >>> ctx = FeatureContext.from_tokens(torch.tensor([[0, 1, 2]]), vocab=["<s>", " is", "x"])
        >>> verb.indicators(ctx)[:, 0].tolist()
        [False, True, False]
    """

    def __init__(self, name: str, values: UserValues, *, family: str = SYNTAX) -> None:
        get_family(family)
        self.values = values
        self.names = (str(name),)
        self.families = (family,)

    def indicators(self, ctx: FeatureContext) -> Bool[Tensor, "tok features"]:
        out = _aligned(self.values, ctx, f"User feature {self.names[0]!r}")
        if out.dtype != torch.bool:
            raise TypeError(
                f"User feature {self.names[0]!r} gave {out.dtype} values; a feature is a boolean"
                " column (use LabelFeatures for categorical labels)."
            )
        return out[:, None]


class LabelFeatures(PartitionGroup):
    """One feature per value of a categorical token label (part of speech, entity type, topic).

    Each token has at most one label, so the features are a partition and cost one scatter-add
    whatever their number. Names are ``<prefix>:<label>``.

    Args:
        prefix: Name prefix, e.g. ``"pos"``.
        labels: The label names; label ``i`` is the value ``i``.
        values: ``fn(ctx) -> int [tokens]`` or an integer array ``[n_sequences, seq]`` aligned
            with the token stream; -1 (or any value outside ``0 .. len(labels) - 1``) = no label.
        family: A registered family.

    Examples:
        >>> pos = LabelFeatures("pos", ["NOUN", "VERB"], np.array([[-1, 0, 1, 0]]))
        >>> pos.names, pos.cells(FeatureContext.from_tokens(torch.tensor([[0, 5, 6, 5]]),
        ...                                               bos_token_id=0)).tolist()
        (('pos:NOUN', 'pos:VERB'), [0, 1, 0])
    """

    def __init__(
        self, prefix: str, labels: Sequence[str], values: UserValues, *, family: str = SYNTAX
    ) -> None:
        get_family(family)
        if not labels:
            raise ValueError("LabelFeatures needs at least one label.")
        self.values = values
        self.names = tuple(f"{prefix}:{label}" for label in labels)
        self.cell_names = self.names
        self.families = (family,) * len(labels)
        self.membership = np.eye(len(labels), dtype=bool)

    def cells(self, ctx: FeatureContext) -> Int[Tensor, " tok"]:
        out = _aligned(self.values, ctx, f"Label features {self.names[0].split(':')[0]!r}")
        if out.dtype.is_floating_point or out.dtype == torch.bool:
            raise TypeError("Label values must be integers (label index, -1 for none).")
        out = out.to(torch.long)
        return torch.where((out >= 0) & (out < len(self.names)), out, -1)
