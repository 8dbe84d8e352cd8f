"""The top-activating examples of a neuron, as a table and as HTML."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_universality.analyses.families.explain import (
    neuron_frame,
    token_source,
)
from tl_universality.analyses.families.variance import (
    NeuronsSpec,
)
from tl_universality.core.protocol import HookedModel
from tl_universality.data.tokens.resolve import Tokens

# ---------------------------------------------------------------------------------------------
# Top-activating contexts


@dataclass
class ActivatingExample:
    """One top-activating token and its context."""

    activation: float
    sequence: int
    position: int
    tokens: list[str]
    activations: list[float]  # NaN at excluded (BOS/padding) positions
    center: int  # index of the activating token in ``tokens``


@dataclass
class TopActivations:
    """The contexts on which one neuron fires most, best first.

    Examples:
        >>> ex = ActivatingExample(2.0, 0, 1, ["<s>", "<b>"], [math.nan, 2.0], 1)
        >>> top = TopActivations(0, 3, [ex])
        >>> top.to_dataframe()[["rank", "activation", "token"]].values.tolist()
        [[1, 2.0, '<b>']]
        >>> "&lt;b&gt;" in top.to_html() and "<b>" not in top.to_html().split("<body>")[1]
        True
    """

    layer: int
    neuron: int
    examples: list[ActivatingExample] = field(default_factory=list)

    def to_dataframe(self) -> pd.DataFrame:
        """``rank, activation, sequence, position, token, left, right`` (context strings)."""
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(self.examples) + 1),
                "activation": [e.activation for e in self.examples],
                "sequence": [e.sequence for e in self.examples],
                "position": [e.position for e in self.examples],
                "token": [e.tokens[e.center] for e in self.examples],
                "left": ["".join(e.tokens[: e.center]) for e in self.examples],
                "right": ["".join(e.tokens[e.center + 1 :]) for e in self.examples],
            }
        )

    def rows_html(self) -> str:
        """The examples as an HTML ``<table>`` (no page around it): one row per example, tokens
        shaded by activation (red positive, blue negative, relative to the largest magnitude
        shown) and the activating token outlined (class ``top``); hover a token for its
        activation. Token text is escaped."""
        finite = [abs(a) for e in self.examples for a in e.activations if math.isfinite(a)]
        scale = max(finite, default=0.0) or 1.0
        rows = []
        for rank, e in enumerate(self.examples, 1):
            spans = []
            for j, (s, a) in enumerate(zip(e.tokens, e.activations, strict=True)):
                if math.isfinite(a):
                    alpha = min(1.0, abs(a) / scale)
                    rgb = "220,40,40" if a >= 0 else "40,90,220"
                    style = f"background-color: rgba({rgb},{alpha:.3f})"
                    title = f"{a:.4g}"
                else:
                    style, title = "color: #999", "excluded (BOS/padding)"
                cls = "tok top" if j == e.center else "tok"
                text = html.escape(s).replace("\n", "\u21b5")
                attrs = f'class="{cls}" style="{style}" title="{html.escape(title)}"'
                spans.append(f"<span {attrs}>{text}</span>")
            rows.append(
                f"<tr><td>{rank}</td><td>{e.activation:.4g}</td>"
                f"<td>{e.sequence}:{e.position}</td><td class='ctx'>{''.join(spans)}</td></tr>"
            )
        return (
            "<table class='contexts'>"
            "<tr><th>#</th><th>activation</th><th>seq:pos</th><th>context</th></tr>"
            + "".join(rows)
            + "</table>"
        )

    #: The styles :meth:`rows_html` needs.
    CSS = (
        " .ctx{font-family:monospace;white-space:pre;text-align:left}"
        " .tok{border-radius:2px} .top{outline:2px solid #000;font-weight:bold}"
    )

    def to_html(self) -> str:
        """A self-contained HTML page of :meth:`rows_html`."""
        title = html.escape(f"Layer {self.layer} neuron {self.neuron}: top activations")
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{title}</title><style>"
            "body{font-family:sans-serif} table{border-collapse:collapse}"
            " td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}"
            + self.CSS
            + f"</style></head><body><h3>{title}</h3>"
            + self.rows_html()
            + "</body></html>\n"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def save_html(self, path: str | Path) -> Path:
        """Write :meth:`to_html` to ``path``; returns the path."""
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def _display_vocab(model: HookedModel, vocab: Any) -> list[str] | None:
    from tl_universality.data.token_sets import vocab_strings

    source = vocab if vocab is not None else model
    if vocab is None and getattr(model, "tokenizer", None) is None:
        return None
    return vocab_strings(source, int(model.cfg.d_vocab))


def top_activations(
    model: HookedModel,
    tokens: Tokens,
    layer: int,
    neuron: int,
    *,
    k: int = 20,
    context: int = 10,
    after: int = 3,
    vocab: Any = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> TopActivations:
    """The ``k`` tokens of the stream on which neuron ``(layer, neuron)`` is most active.

    Args:
        model: Any TransformerLens hooked model with MLPs.
        tokens: Anything :func:`~tl_universality.data.tokens.as_token_source` accepts.
        layer, neuron: The MLP neuron (``blocks.{layer}.mlp.hook_post``).
        k: Examples kept.
        context: Tokens shown before the activating token.
        after: Tokens shown after it.
        vocab: Token strings when the model has no tokenizer (else ids are shown).
        batch_size, max_tokens, bos_token_id, progress: As for :func:`explain`.

    Returns:
        :class:`TopActivations` (``to_dataframe()``, ``to_html()``, ``save_html(path)``).
    """
    (top,) = top_activations_of(
        model, tokens, [(layer, neuron)], k=k, context=context, after=after, vocab=vocab,
        batch_size=batch_size, max_tokens=max_tokens, bos_token_id=bos_token_id,
        progress=progress,
    )  # fmt: skip
    return top


def top_activations_of(
    model: HookedModel,
    tokens: Tokens,
    neurons: NeuronsSpec,
    *,
    k: int = 20,
    context: int = 10,
    after: int = 3,
    vocab: Any = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> list[TopActivations]:
    """:func:`top_activations` of several neurons in one pass over the tokens, in the order of
    ``neurons`` (see :data:`NeuronsSpec`)."""
    from tl_universality.units.activations import stream_activations, unit_index

    frame = neuron_frame(model, neurons)
    pairs = [(int(layer), int(n)) for layer, n in zip(frame.layer, frame.neuron, strict=True)]
    hooks = [f"blocks.{layer}.mlp.hook_post" for layer in sorted({layer for layer, _ in pairs})]
    column = {p: unit_index(model, hooks).flat(*p) for p in pairs}  # in the batch's [tokens, units]
    strings = _display_vocab(model, vocab)
    source = token_source(model, tokens, max_tokens, bos_token_id)
    best: dict[tuple[int, int], list[ActivatingExample]] = {p: [] for p in pairs}
    for batch in stream_activations(
        model,
        source,
        units=hooks,
        batch_size=batch_size,
        bos_token_id=bos_token_id,
        progress=progress,
    ):
        n_valid = int(batch.keep.sum())
        if n_valid == 0:
            continue
        ids = batch.tokens.cpu()
        seq = ids.shape[1]
        keep = batch.keep.cpu()
        for layer, neuron in best:
            dense = torch.full(batch.tokens.shape, math.nan, dtype=torch.float64)
            dense[keep] = batch.acts[0][:, column[(layer, neuron)]].cpu().to(torch.float64)
            flat = torch.nan_to_num(dense.flatten(), nan=-math.inf)
            values, where = torch.topk(flat, min(k, n_valid))
            found = best[(layer, neuron)]
            for value, i in zip(values.tolist(), where.tolist(), strict=True):
                row, pos = divmod(i, seq)
                lo, hi = max(0, pos - context), min(seq, pos + after + 1)
                window = ids[row, lo:hi].tolist()
                found.append(
                    ActivatingExample(
                        activation=float(value),
                        sequence=int(batch.first_sequence) + row,
                        position=pos,
                        tokens=[strings[t] if strings is not None else f"<{t}>" for t in window],
                        activations=dense[row, lo:hi].tolist(),
                        center=pos - lo,
                    )
                )
            best[(layer, neuron)] = sorted(
                found, key=lambda e: (-e.activation, e.sequence, e.position)
            )[:k]
    return [TopActivations(layer, neuron, best[(layer, neuron)]) for layer, neuron in pairs]
