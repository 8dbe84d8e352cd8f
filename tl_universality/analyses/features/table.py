"""Feature tables over a token stream, and the paper's default feature set."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_universality.analyses.features.catalogue import (
    get_family,
)
from tl_universality.analyses.features.context import FeatureContext
from tl_universality.analyses.features.groups import (
    FeatureGroup,
    IndicatorGroup,
    PartitionGroup,
    PositionFeatures,
    TokenSetFeatures,
    UnigramFeatures,
    most_frequent_unigrams,
)
from tl_universality.data.tokens.resolve import Tokens

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
    tokens: Tokens = None,
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
    from tl_universality.data.tokens import DEFAULT_MAX_SEQ_LEN, as_token_source, resolve_tokens
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
        if model is not None:
            source = resolve_tokens(
                tokens, model, seq_len=seq_len, max_tokens=max_tokens, bos_token_id=bos_token_id
            )
        else:  # a vocabulary without a model: the paper's length unless told
            source = as_token_source(
                tokens,
                hf_tokenizer,
                seq_len=seq_len or DEFAULT_MAX_SEQ_LEN,
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
