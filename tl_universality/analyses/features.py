"""Feature tables over a token stream, and the catalogue of neuron families (docs/concepts.md,
"Neuron families").

A *feature* is a named boolean column over the tokens of a stream ("the current token is
``the``", "the previous token starts with a space", "position >= 32", "a parser says this token
is a verb"), with the *family* it belongs to. Features are evaluated batch by batch on the kept
(non-BOS, non-padding) positions of an :class:`~tl_universality.units.activations.ActivationBatch`,
so
a feature table never exists for more than one batch, and never as tokens × features × neurons.

Features come in groups of two kinds, which is what keeps them cheap:

- :class:`PartitionGroup` — every token lies in at most one *cell* (a unigram, a position bin, a
  part-of-speech tag). Per-cell statistics are a scatter-add, whatever the number of cells, and a
  feature may be any union of cells (``position >= 32`` is the union of the bins above 32).
- :class:`IndicatorGroup` — overlapping features (token sets, user columns): a ``[tokens, k]``
  boolean matrix, whose statistics are one matrix product.

Built-in groups: :class:`TokenSetFeatures` (the token-set registry of
:mod:`tl_universality.data.token_sets`, for the current or the previous token),
:class:`UnigramFeatures` ("current/previous token is t", normalised),
:class:`PositionFeatures` (bins of position, and thresholds), :class:`UserFeature` (any boolean
column: a function of the batch or an array aligned with the stream) and :class:`LabelFeatures`
(a categorical label per token, e.g. part of speech from a parser). :func:`default_features`
builds the paper's table for a model and a token stream.

Families (unigram, alphabet, previous-token, position, syntax, semantic, and token-property
families such as case or number) live in a small registry with the paper's membership thresholds
(variance reduction > 0.5; alphabet 0.35); :func:`register_family` adds one.

Examples:
    >>> vocab = ["<bos>", " the", "The", " cat", ","]
    >>> fs = FeatureSet([TokenSetFeatures.from_registry(vocab, ["capitalised"]),
    ...                  UnigramFeatures(vocab, ["the"]), PositionFeatures([0, 2])])
    >>> fs.names
    ('token_set:capitalised', "token:'the'", 'position:[0,2)', 'position:>=2')
    >>> ctx = FeatureContext.from_tokens(torch.tensor([[0, 2, 3, 1]]), bos_token_id=0,
    ...                                  vocab=vocab)
    >>> fs.table(ctx).astype(int).values.tolist()  # tokens "The", " cat", " the"
    [[1, 1, 1, 0], [0, 0, 0, 1], [0, 1, 0, 1]]
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# The family catalogue

UNIGRAM = "unigram"
ALPHABET = "alphabet"
PREVIOUS_TOKEN = "previous-token"
POSITION = "position"
SYNTAX = "syntax"
SEMANTIC = "semantic"
TOKEN_PROPERTY = "token-property"
NO_FAMILY = "none"
"""The label of a neuron that no feature explains well enough."""


@dataclass(frozen=True)
class Family:
    """A neuron family: its name, membership threshold and which token sets belong to it.

    Attributes:
        name: The family's label (``"unigram"``, ``"alphabet"``, ...).
        threshold: A neuron belongs to the family when its best feature of this family has a
            variance reduction above this.
        description: One line saying what the family's features are.
        token_sets: ``fnmatch`` patterns of token-set names (:mod:`tl_universality.data.token_sets`)
            whose current-token features belong to this family, e.g. ``("first_letter_*",)``.
    """

    name: str
    threshold: float = 0.5
    description: str = ""
    token_sets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A family needs a non-empty string name, got {self.name!r}.")
        if self.name == NO_FAMILY:
            raise ValueError(f"{NO_FAMILY!r} is the label of unexplained neurons, not a family.")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(
                f"Family {self.name!r}: threshold is a variance reduction in [0, 1], got"
                f" {self.threshold}."
            )
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "token_sets", tuple(self.token_sets))


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    threshold: float = 0.5,
    *,
    description: str = "",
    token_sets: Iterable[str] = (),
    replace: bool = False,
) -> Family:
    """Add a family to the catalogue; ``ValueError`` if the name is taken (unless ``replace``).

    Token sets are matched against the families' ``token_sets`` patterns newest first, so a
    family registered later can claim token sets from a built-in one.

    Examples:
        >>> fam = register_family("doc_currency", 0.4, token_sets=["doc_dollar*"])
        >>> token_set_family("doc_dollar_sign"), family_thresholds()["doc_currency"]
        ('doc_currency', 0.4)
        >>> register_family("doc_currency")
        Traceback (most recent call last):
        ...
        ValueError: A family named 'doc_currency' is already registered ...
        >>> unregister_family("doc_currency")
    """
    if name in _FAMILIES and not replace:
        raise ValueError(
            f"A family named {name!r} is already registered ({_FAMILIES[name].description!r}, "
            f"threshold {_FAMILIES[name].threshold}). Choose another name or pass replace=True."
        )
    family = Family(name, threshold, description, tuple(token_sets))
    _FAMILIES.pop(name, None)  # a replaced family moves to the end: newest patterns win
    _FAMILIES[name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family from the catalogue (``KeyError`` if there is none of that name)."""
    get_family(name)
    del _FAMILIES[name]


def get_family(name: str) -> Family:
    """The registered :class:`Family` called ``name``, with the known names if it is unknown."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(
            f"No family named {name!r}. Registered: {', '.join(_FAMILIES)}. Add one with"
            f" tl_universality.analyses.features.register_family({name!r}, threshold=...)."
        ) from None


def list_families() -> pd.DataFrame:
    """The catalogue as a table: ``family, threshold, description, token_sets``.

    Examples:
        >>> table = list_families().set_index("family")
        >>> table.loc[["unigram", "alphabet"], "threshold"].tolist()
        [0.5, 0.35]
    """
    return pd.DataFrame(
        {
            "family": [f.name for f in _FAMILIES.values()],
            "threshold": [f.threshold for f in _FAMILIES.values()],
            "description": [f.description for f in _FAMILIES.values()],
            "token_sets": [", ".join(f.token_sets) for f in _FAMILIES.values()],
        }
    )


def family_thresholds(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """``{family: threshold}`` of the catalogue, with ``overrides`` applied (unknown: KeyError).

    Examples:
        >>> family_thresholds({"alphabet": 0.3})["alphabet"]
        0.3
    """
    thresholds = {name: f.threshold for name, f in _FAMILIES.items()}
    for name, value in (overrides or {}).items():
        get_family(name)
        thresholds[name] = float(value)
    return thresholds


def token_set_family(set_name: str) -> str:
    """The family of the current-token feature of a token set (newest matching family first).

    Token sets no family claims are :data:`TOKEN_PROPERTY`.

    Examples:
        >>> token_set_family("first_letter_q"), token_set_family("year")
        ('alphabet', 'number')
    """
    for family in reversed(_FAMILIES.values()):
        if any(fnmatch.fnmatchcase(set_name, p) for p in family.token_sets):
            return family.name
    return TOKEN_PROPERTY


def _register_builtin_families() -> None:
    builtins = [
        (UNIGRAM, 0.5, "the current token is one given token (normalised)", ()),
        (ALPHABET, 0.35, "the current token starts with a given letter", ("first_letter_*",)),
        (PREVIOUS_TOKEN, 0.5, "a unigram or token-set feature of the previous token", ()),
        (POSITION, 0.5, "the token's position in its sequence (bins and thresholds)", ()),
        (SYNTAX, 0.5, "a syntactic label from a parser (part of speech, dependency, ...)", ()),
        (SEMANTIC, 0.5, "a topic or meaning label (user features)", ()),
        ("case", 0.5, "letter case of the token", ("capitalised", "all_caps", "lowercase_word")),
        ("number", 0.5, "digits, years", ("numeric", "year", "single_digit")),
        (
            "punctuation",
            0.5,
            "punctuation classes",
            ("punctuation", "sentence_end", "comma", "colon_semicolon", "quote", "dash")
            + ("open_bracket", "close_bracket"),
        ),
        (
            "space",
            0.5,
            "leading space, whitespace, newlines",
            ("leading_space", "whitespace", "newline"),
        ),
        ("morphology", 0.5, "common prefixes and suffixes", ("prefix_*", "suffix_*")),
        ("word-list", 0.5, "months, weekdays, pronoun classes", ("months", "weekdays", "pronoun*")),
        (TOKEN_PROPERTY, 0.5, "any other token set (e.g. a user-registered one)", ()),
    ]
    for name, threshold, description, sets in builtins:
        register_family(name, threshold, description=description, token_sets=sets)


_register_builtin_families()

BUILTIN_FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
"""Names of the families defined here, in catalogue order."""


# ---------------------------------------------------------------------------------------------
# What a feature sees of a batch


def normalise_token(s: str) -> str:
    """The unigram key of a token string: one leading space dropped, lower case.

    ``" The"``, ``"the"`` and ``" THE"`` are one unigram; a lone space stays a space.

    Examples:
        >>> [normalise_token(s) for s in [" The", "the", " ", "\\n"]]
        ['the', 'the', ' ', '\\n']
    """
    if len(s) > 1 and s[0] == " ":
        s = s[1:]
    return s.lower()


@dataclass
class FeatureContext:
    """The kept positions of one batch, as features see them (one entry per kept token).

    Attributes:
        token_ids: The current token.
        prev_token_ids: The token one position earlier; -1 at position 0.
        positions: Position of the token in its sequence.
        sequence_ids: Index in the stream of the token's sequence.
        vocab: Token strings of the vocabulary (index = token id), if known.
    """

    token_ids: Int[Tensor, " tok"]
    prev_token_ids: Int[Tensor, " tok"]
    positions: Int[Tensor, " tok"]
    sequence_ids: Int[Tensor, " tok"]
    vocab: tuple[str, ...] | None = None

    @classmethod
    def from_tokens(
        cls,
        tokens: Int[Tensor, "batch seq"],
        keep: Bool[Tensor, "batch seq"] | None = None,
        *,
        first_sequence: int = 0,
        bos_token_id: int | None = None,
        vocab: Sequence[str] | None = None,
    ) -> FeatureContext:
        """The context of a ``[batch, seq]`` block of sequences.

        Args:
            tokens: Token ids.
            keep: Positions to keep (default: those not equal to ``bos_token_id``, or all).
            first_sequence: Stream index of the first row.
            bos_token_id: Positions holding it are dropped when ``keep`` is not given.
            vocab: Token strings, for features that read strings.
        """
        if keep is None:
            keep = (
                torch.ones_like(tokens, dtype=torch.bool)
                if bos_token_id is None
                else tokens != bos_token_id
            )
        prev = torch.roll(tokens, shifts=1, dims=1)
        prev[:, 0] = -1
        pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        seq = torch.arange(tokens.shape[0], device=tokens.device) + int(first_sequence)
        seq = seq[:, None].expand_as(tokens)
        return cls(
            tokens[keep],
            prev[keep],
            pos[keep],
            seq[keep],
            None if vocab is None else tuple(vocab),
        )

    @classmethod
    def from_batch(cls, batch: Any, vocab: Sequence[str] | None = None) -> FeatureContext:
        """The context of an :class:`~tl_universality.units.activations.ActivationBatch`."""
        return cls.from_tokens(
            batch.tokens, batch.keep, first_sequence=int(batch.first_sequence), vocab=vocab
        )

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    def _strings(self, ids: Tensor) -> np.ndarray:
        if self.vocab is None:
            raise ValueError(
                "This feature reads token strings but the features were built without a"
                " vocabulary. Build them with FeatureSet(..., vocab=tokenizer_strings)."
            )
        table = np.asarray((*self.vocab, ""), dtype=object)  # id -1 (no previous token) -> ""
        return table[ids.cpu().numpy()]

    @property
    def strings(self) -> np.ndarray:
        """Token string of each kept token (an object array)."""
        return self._strings(self.token_ids)

    @property
    def prev_strings(self) -> np.ndarray:
        """Token string of each kept token's predecessor (``""`` at position 0)."""
        return self._strings(self.prev_token_ids)


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


# ---------------------------------------------------------------------------------------------
# The feature set


@dataclass
class FeatureBatch:
    """The features of one batch: indicator columns and the cell of each token per partition."""

    indicators: Bool[Tensor, "tok indicator_features"]
    cells: list[Int[Tensor, " tok"]]


class FeatureSet:
    """An ordered collection of feature groups with unique feature names.

    Args:
        groups: The feature groups.
        vocab: Token strings of the vocabulary (for features that read strings and for
            :attr:`FeatureContext.strings`).

    Examples:
        >>> fs = FeatureSet([PositionFeatures([0, 4])]) + FeatureSet([PositionFeatures([0, 4])])
        Traceback (most recent call last):
        ...
        ValueError: Feature names must be unique; repeated: ['position:[0,4)', 'position:>=4'].
    """

    def __init__(self, groups: Iterable[FeatureGroup], *, vocab: Sequence[str] | None = None):
        self.groups: tuple[FeatureGroup, ...] = tuple(groups)
        for g in self.groups:
            if not isinstance(g, (PartitionGroup, IndicatorGroup)):
                raise TypeError(
                    f"{g!r} is not a feature group: subclass PartitionGroup or IndicatorGroup."
                )
            for family in set(g.families):
                get_family(family)
        self.vocab = None if vocab is None else tuple(vocab)
        names = [n for g in self.groups for n in g.names]
        repeated = [n for n, count in Counter(names).items() if count > 1]
        if repeated:
            raise ValueError(f"Feature names must be unique; repeated: {repeated[:5]}.")
        if not names:
            raise ValueError("A FeatureSet needs at least one feature.")
        self.names: tuple[str, ...] = tuple(names)
        self.families: tuple[str, ...] = tuple(f for g in self.groups for f in g.families)
        self.partitions = tuple(g for g in self.groups if isinstance(g, PartitionGroup))
        self.indicator_groups = tuple(g for g in self.groups if isinstance(g, IndicatorGroup))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_features(self) -> int:
        return len(self.names)

    def __add__(self, other: FeatureSet) -> FeatureSet:
        return FeatureSet([*self.groups, *other.groups], vocab=self.vocab or other.vocab)

    def __repr__(self) -> str:
        counts = pd.Series(self.families).value_counts()
        return (
            f"FeatureSet({len(self)} features: {', '.join(f'{k} {v}' for k, v in counts.items())})"
        )

    @property
    def position_group(self) -> PositionFeatures | None:
        """The first :class:`PositionFeatures` group (its bins give the position information)."""
        return next((g for g in self.groups if isinstance(g, PositionFeatures)), None)

    def to_frame(self) -> pd.DataFrame:
        """``feature, family, group`` for every feature, in order."""
        return pd.DataFrame(
            {
                "feature": list(self.names),
                "family": list(self.families),
                "group": [type(g).__name__ for g in self.groups for _ in g.names],
            }
        )

    def context(self, batch: Any) -> FeatureContext:
        """The :class:`FeatureContext` of an ``ActivationBatch`` (or a context, returned as is)."""
        if isinstance(batch, FeatureContext):
            return batch
        return FeatureContext.from_batch(batch, self.vocab)

    def evaluate(self, batch: Any) -> FeatureBatch:
        """Indicator columns (of all indicator groups, in order) and cells (per partition)."""
        ctx = self.context(batch)
        if self.indicator_groups:
            indicators = torch.cat([g.indicators(ctx) for g in self.indicator_groups], dim=1)
        else:
            indicators = torch.zeros(ctx.n_tokens, 0, dtype=torch.bool, device=ctx.token_ids.device)
        return FeatureBatch(indicators, [g.cells(ctx) for g in self.partitions])

    def table(self, batch: Any) -> pd.DataFrame:
        """The ``[tokens, features]`` boolean table of one batch (for inspection and tests).

        Materialises every feature of the batch; the analyses never call it.
        """
        ctx = self.context(batch)
        fb = self.evaluate(ctx)
        columns: list[np.ndarray] = []
        ind = fb.indicators.cpu().numpy()
        i_ind = i_part = 0
        for g in self.groups:
            if isinstance(g, IndicatorGroup):
                columns.append(ind[:, i_ind : i_ind + len(g)])
                i_ind += len(g)
            else:
                cells = fb.cells[i_part].cpu().numpy()
                i_part += 1
                hit = np.zeros((len(cells), len(g.cell_names)), dtype=bool)
                hit[np.flatnonzero(cells >= 0), cells[cells >= 0]] = True
                columns.append(hit @ g.membership.T.astype(np.int64) > 0)
        return pd.DataFrame(np.concatenate(columns, axis=1), columns=list(self.names))


# ---------------------------------------------------------------------------------------------
# The paper's feature table


def token_frequencies(
    source: Any, d_vocab: int, *, exclude_token_ids: Iterable[int] = ()
) -> Int[np.ndarray, " d_vocab"]:
    """How often each token id occurs in a token source (excluded ids count 0). Reads no model.

    Examples:
        >>> from tl_universality.data.tokens import as_token_source
        >>> src = as_token_source(torch.tensor([[0, 1, 1, 2]]), bos_token_id=0)
        >>> token_frequencies(src, 4, exclude_token_ids=[0]).tolist()
        [0, 2, 1, 0]
    """
    counts = torch.zeros(d_vocab, dtype=torch.long)
    for batch in source.batches(256):
        counts += torch.bincount(batch.flatten(), minlength=d_vocab)[:d_vocab]
    for i in exclude_token_ids:
        if 0 <= int(i) < d_vocab:
            counts[int(i)] = 0
    return counts.numpy()


def default_features(
    vocab: Any,
    tokens: Any = None,
    *,
    d_vocab: int | None = None,
    token_sets: Iterable[str] | None = None,
    n_unigrams: int = 500,
    unigrams: Iterable[str] | None = None,
    previous: bool = True,
    position_bins: int | Sequence[int] | None = 16,
    user: Iterable[FeatureGroup] = (),
    bos_token_id: int | None = None,
    seq_len: int | None = None,
    max_tokens: int | None = None,
) -> FeatureSet:
    """The paper's feature table (docs/concepts.md, "Neuron families") for a vocabulary and a token
    stream.

    Current-token token sets (every registered one that has a token in this vocabulary), unigrams
    for the ``n_unigrams`` most frequent normalised tokens of the stream, previous-token versions
    of both, position bins and thresholds, and the user's groups.

    Args:
        vocab: A model (its tokenizer and ``cfg.d_vocab``), a tokenizer, or a list of token
            strings.
        tokens: The stream the unigrams are counted on: anything
            :func:`~tl_universality.data.tokens.as_token_source` accepts (``None``: the default
            corpus). Read once, without a model.
        d_vocab: Vocabulary size (default: the model's ``cfg.d_vocab``, else ``len(vocab)``).
        token_sets: Registered token-set names (default: all registered).
        n_unigrams: How many unigrams to count (ignored when ``unigrams`` is given).
        unigrams: Explicit normalised unigrams instead of the most frequent ones.
        previous: Add previous-token versions of token sets and unigrams.
        position_bins: Number of uniform bins over the sequence, explicit bin starts, or None.
        user: Further groups (e.g. :class:`UserFeature`, :class:`LabelFeatures`).
        bos_token_id: BOS id of a token tensor when there is no tokenizer.
        seq_len: Sequence length of text streams (default: ``min(512, cfg.n_ctx)`` for a model).
        max_tokens: Count unigrams on the first ``max_tokens`` tokens only.

    Examples:
        >>> vocab = ["<s>", " the", "The", " cat", "."]
        >>> toks = torch.tensor([[0, 1, 3, 4, 2, 3]])
        >>> fs = default_features(vocab, toks, bos_token_id=0, n_unigrams=2, position_bins=2)
        >>> [n for n in fs.names if n.startswith(("token:", "position"))]
        ["token:'the'", "token:'cat'", 'position:[0,3)', 'position:>=3']
    """
    from tl_universality.data.token_sets import vocab_strings
    from tl_universality.data.tokens import as_token_source
    from tl_universality.units.activations import excluded_token_ids

    model = vocab if hasattr(vocab, "cfg") else None
    tokenizer = getattr(vocab, "tokenizer", None) if model is not None else vocab
    if model is not None and d_vocab is None:
        d_vocab = int(model.cfg.d_vocab)
    strings = vocab_strings(vocab, d_vocab)
    d_vocab = len(strings)
    hf_tokenizer = None if isinstance(tokenizer, (list, tuple)) else tokenizer

    sets = TokenSetFeatures.from_registry(strings, token_sets, d_vocab=d_vocab)
    need_stream = unigrams is None and n_unigrams > 0
    source = None
    if need_stream or (position_bins is not None and not _explicit(position_bins)):
        if tokens is None and hf_tokenizer is None:
            raise ValueError(
                "default_features needs a token stream to count unigrams and size the position"
                " bins, and without a tokenizer the default corpus cannot be used: pass tokens=."
            )
        if seq_len is None and model is not None:
            seq_len = min(512, int(model.cfg.n_ctx))
        source = as_token_source(
            tokens,
            hf_tokenizer,
            seq_len=seq_len or 128,
            max_tokens=max_tokens,
            bos_token_id=bos_token_id,
        )
    if need_stream:
        assert source is not None
        exclude = excluded_token_ids(source, hf_tokenizer)
        counts = token_frequencies(source, d_vocab, exclude_token_ids=exclude)
        unigrams = most_frequent_unigrams(strings, counts, n_unigrams)
    unigram_list = list(unigrams or [])
    # Order matters only for exact ties in variance reduction, which go to the earlier feature:
    # the most specific one (a unigram) first.
    groups: list[FeatureGroup] = []
    if unigram_list:
        groups.append(UnigramFeatures(strings, unigram_list))
    groups.append(sets)
    if previous:
        if unigram_list:
            groups.append(UnigramFeatures(strings, unigram_list, previous=True))
        groups.append(TokenSetFeatures(sets.masks, previous=True))
    if position_bins is not None:
        if _explicit(position_bins):
            groups.append(PositionFeatures(list(position_bins)))  # type: ignore[arg-type]
        else:
            assert source is not None
            groups.append(PositionFeatures.uniform(source.seq_len, int(position_bins)))  # type: ignore[arg-type]
    groups.extend(user)
    return FeatureSet(groups, vocab=strings)


def _explicit(position_bins: Any) -> bool:
    return not isinstance(position_bins, (int, np.integer))


__all__ = [
    "ALPHABET",
    "BUILTIN_FAMILIES",
    "Family",
    "FeatureBatch",
    "FeatureContext",
    "FeatureGroup",
    "FeatureSet",
    "IndicatorGroup",
    "LabelFeatures",
    "NO_FAMILY",
    "POSITION",
    "PREVIOUS_TOKEN",
    "PartitionGroup",
    "PositionFeatures",
    "SEMANTIC",
    "SYNTAX",
    "TOKEN_PROPERTY",
    "TokenSetFeatures",
    "UNIGRAM",
    "UnigramFeatures",
    "UserFeature",
    "default_features",
    "family_thresholds",
    "get_family",
    "list_families",
    "most_frequent_unigrams",
    "normalise_token",
    "register_family",
    "token_frequencies",
    "token_set_family",
    "unregister_family",
]
