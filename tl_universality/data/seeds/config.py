"""Seed-family settings (:class:`SeedFamilyConfig`, the presets) and the loaded family."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from tl_universality.data.seeds.files import load_tokens
from tl_universality.data.tokens import (
    DefaultCorpusSource,
    TensorTokenSource,
    TokenSource,
)

FORMAT = 2  # bump when the training recipe or the folder layout changes (2: verified pieces)
_SUPPORTED_ACT_FNS = ("relu", "gelu", "gelu_new", "gelu_fast", "silu", "solu_ln")


@dataclass(frozen=True)
class SeedFamilyConfig:
    """Architecture, training recipe and data of a seed family.

    Attributes:
        name: Label used in the cache folder name (the preset's name).
        n_layers, d_model, n_heads, d_head, d_mlp, n_ctx, act_fn, normalization_type: The
            ``HookedTransformerConfig`` of every model (``d_vocab`` comes from the tokenizer).
        vocab_size: Size of the byte-level BPE vocabulary trained on the corpus.
        steps: Optimiser steps per seed.
        batch_size: Sequences of ``n_ctx`` tokens per step.
        lr: Peak learning rate of AdamW.
        warmup: Linear warm-up steps, followed by a cosine decay to ``min_lr_ratio * lr``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        weight_decay: AdamW weight decay (matrices only; biases and LayerNorm are not decayed).
        betas: AdamW betas.
        grad_clip: Maximum global gradient norm.
        seeds: The initialisation seeds, one model each; the first is the reference.
        include_source: Add the standard library's source code to the corpus.
        held_out: Fraction of documents held out for the loss and for analyses.
        split_seed: Seed of the train / held-out split.
        data_seed: Seed of the (shared) order in which training sequences are visited.

    Examples:
        >>> cfg = SeedFamilyConfig(steps=10, warmup=2, seeds=(0, 1))
        >>> cfg.n_params_estimate > 0
        True
        >>> SeedFamilyConfig(seeds=(0, 0))
        Traceback (most recent call last):
        ...
        ValueError: seeds must be distinct, got (0, 0).
    """

    name: str = "custom"
    n_layers: int = 1
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    d_mlp: int = 256
    n_ctx: int = 64
    act_fn: str = "gelu_new"
    normalization_type: str | None = "LN"
    vocab_size: int = 1024
    steps: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seeds: tuple[int, ...] = (0, 1, 2)
    include_source: bool = False
    held_out: float = 0.05
    split_seed: int = 0
    data_seed: int = 0

    def __post_init__(self) -> None:
        # Lists from JSON become tuples, so configs compare and hash the same after a round trip.
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        for key in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}.")
        if self.n_ctx < 2:
            raise ValueError(f"n_ctx must be at least 2 (BOS plus a token), got {self.n_ctx}.")
        if self.vocab_size < 258:
            raise ValueError(
                f"vocab_size must be at least 258 (bytes + BOS), got {self.vocab_size}."
            )
        if self.act_fn not in _SUPPORTED_ACT_FNS:
            raise ValueError(f"act_fn must be one of {_SUPPORTED_ACT_FNS}, got {self.act_fn!r}.")
        if self.normalization_type not in ("LN", "LNPre", None):
            raise ValueError(
                "normalization_type must be 'LN', 'LNPre' or None, "
                f"got {self.normalization_type!r}."
            )
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup must be in [0, steps={self.steps}), got {self.warmup}.")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, min_lr_ratio in [0, 1] and weight_decay >= 0.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}.")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip}.")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}.")
        if not 0 < self.held_out < 1:
            raise ValueError(f"held_out must be a fraction in (0, 1), got {self.held_out}.")
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a non-empty folder name, got {self.name!r}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of every field."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["seeds"] = list(self.seeds)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedFamilyConfig:
        """Rebuild a config from :meth:`to_dict` output (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - known:
            raise ValueError(f"Unknown SeedFamilyConfig fields: {sorted(unknown)}.")
        data = dict(data)
        for key in ("betas", "seeds"):  # JSON has lists where the config has tuples
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def replace(self, **changes: Any) -> SeedFamilyConfig:
        """A copy with some fields changed (validated again).

        Examples:
            >>> PRESETS["tiny"].replace(steps=20).steps
            20
        """
        return dataclasses.replace(self, **changes)

    @property
    def n_params_estimate(self) -> int:
        """Parameters of one model (embeddings, attention, MLP, LayerNorms, unembedding)."""
        d, v = self.d_model, self.vocab_size
        attn = 4 * d * self.n_heads * self.d_head + 3 * self.n_heads * self.d_head + d
        mlp = 2 * d * self.d_mlp + self.d_mlp + d
        ln = 4 * d if self.normalization_type == "LN" else 0
        return v * d + self.n_ctx * d + self.n_layers * (attn + mlp + ln) + 2 * d + d * v + v

    def model_config(self, seed: int, d_vocab: int, device: str = "cpu") -> Any:
        """The ``HookedTransformerConfig`` of the model with this initialisation seed."""
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=d_vocab,
            act_fn=self.act_fn,
            normalization_type=self.normalization_type,
            seed=seed,
            device=device,
            default_prepend_bos=True,
        )


#: Named settings. ``tiny`` is for tests (seconds); ``demo`` shows the phenomenon (see
#: docs/seed_family.md for how it was chosen and what it measures); ``gpu`` is sized for a
#: GPU (4 layers, d_model 256, the corpus with the standard library's source, 65M training
#: tokens per seed: a few minutes per seed on an H100-class card, days on a CPU).
PRESETS: dict[str, SeedFamilyConfig] = {
    "tiny": SeedFamilyConfig(
        name="tiny",
        n_layers=2,
        d_model=32,
        n_heads=2,
        d_head=16,
        d_mlp=128,
        n_ctx=64,
        vocab_size=512,
        steps=60,
        batch_size=16,
        lr=5e-3,
        warmup=6,
        seeds=(0, 1, 2),
    ),
    "demo": SeedFamilyConfig(
        name="demo",
        n_layers=2,
        d_model=128,
        n_heads=4,
        d_head=32,
        d_mlp=512,
        n_ctx=128,
        vocab_size=4096,
        steps=400,
        batch_size=16,
        lr=3e-3,
        warmup=30,
        seeds=(0, 1, 2),
    ),
    "gpu": SeedFamilyConfig(
        name="gpu",
        n_layers=4,
        d_model=256,
        n_heads=8,
        d_head=32,
        d_mlp=1024,
        n_ctx=256,
        vocab_size=8192,
        steps=4000,
        batch_size=64,
        lr=2e-3,
        warmup=200,
        seeds=(0, 1, 2),
        include_source=True,
    ),
}


@dataclass
class SeedFamily:
    """A trained (or loaded) seed family.

    Attributes:
        models: One ``HookedTransformer`` per seed, in ``config.seeds`` order (``models[0]`` is
            the reference).
        tokenizer: The shared tokenizer, reloaded from ``folder / "tokenizer"``.
        config: The family's settings.
        held_out_loss: Mean next-token cross-entropy (nats) on the held-out sequences, per seed.
        train_seconds: Wall-clock training time per seed (0 for nothing, as measured when trained).
        folder: The cache folder.
        info: The contents of ``family.json`` (corpus and token counts, versions, ...).
        step: The training step of these weights: ``config.steps`` for the final models, or the
            checkpoint asked for with ``load_seed_family(..., checkpoint=step)``.
    """

    models: list[Any]
    tokenizer: PreTrainedTokenizerBase
    config: SeedFamilyConfig
    held_out_loss: list[float]
    train_seconds: list[float]
    folder: Path
    info: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    _train_source: TokenSource | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.step is None:
            self.step = self.config.steps

    @property
    def tokens_seen(self) -> int:
        """Training tokens each model had seen at :attr:`step`."""
        return int(self.step or 0) * self.config.batch_size * self.config.n_ctx

    def held_out_tokens(self) -> TokenSource:
        """The held-out sequences (the ones the losses were measured on)."""
        return TensorTokenSource(
            load_tokens(self.folder / "held_out"),
            self.tokenizer.bos_token_id,
            name=f"held-out tokens of seed family {self.folder.name}",
        )

    def train_tokens(self) -> TokenSource:
        """The training sequences (a lazy source; tokenizes the corpus when read)."""
        if self._train_source is not None:
            return self._train_source
        train, _ = DefaultCorpusSource(
            self.tokenizer, seq_len=self.config.n_ctx, include_source=self.config.include_source
        ).split(self.config.held_out, self.config.split_seed)
        return train
