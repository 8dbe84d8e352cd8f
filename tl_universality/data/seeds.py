"""An offline seed family: small GPT-2-style models trained from different random seeds.

The paper compares GPT-2 models that differ only in their random seed. Those checkpoints need a
download; this module trains a small family on the embedded standard-library corpus
(:mod:`tl_universality.data.corpus`) on a CPU instead, so every analysis can run offline. All seeds
see
the same data in the same order; they differ only in the initialisation seed.

A family is cached under ``cache_root()/seeds/<preset>-<hash>/``::

    family.json                  # config, corpus and token counts, losses, times
    tokenizer/                   # save_pretrained; every model uses this one
    held_out_tokens.safetensors  # the held-out sequences the losses were measured on
    seed0/model.safetensors      # weights (safetensors only: loading never runs code)
    seed0/config.json            # HookedTransformerConfig fields
    seed0/train.json             # held-out loss and training time of this seed
    seed1/...

Each piece is written atomically; a second call loads instead of retraining, and a broken piece is
detected and rebuilt with a warning (see :func:`train_seed_family`, :func:`load_seed_model`).

See ``docs/seed_family.md`` for the presets' measured sizes, times and losses.

Examples:
    >>> PRESETS["tiny"].n_layers, len(PRESETS["tiny"].seeds)
    (2, 3)
    >>> SeedFamilyConfig.from_dict(PRESETS["demo"].to_dict()) == PRESETS["demo"]
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tl_universality.core.cache import cache_root, stable_hash
from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.saving import atomic_dir, atomic_write_bytes, atomic_write_json
from tl_universality.data.corpus import corpus_info, corpus_key, load_default_tokenizer
from tl_universality.data.tokens import (
    DefaultCorpusSource,
    TensorTokenSource,
    TokenSource,
    as_token_source,
)

_FORMAT = 1  # bump when the training recipe or the folder layout changes
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
#: docs/seed_family.md for how it was chosen and what it measures).
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
    """

    models: list[Any]
    tokenizer: PreTrainedTokenizerBase
    config: SeedFamilyConfig
    held_out_loss: list[float]
    train_seconds: list[float]
    folder: Path
    info: dict[str, Any] = field(default_factory=dict)
    _train_source: TokenSource | None = field(default=None, repr=False)

    def held_out_tokens(self) -> TokenSource:
        """The held-out sequences (the ones the losses were measured on)."""
        return TensorTokenSource(
            _load_tensor(self.folder / "held_out_tokens.safetensors", "tokens"),
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


# -- files ---------------------------------------------------------------------------------------


def _load_tensor(path: Path, key: str) -> Tensor:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CorruptCacheError(
            f"{path} is missing. Fix: delete {path.parent} and run train_seed_family() again."
        )
    try:
        return load_file(str(path))[key]
    except Exception as err:  # any failure to parse means the file is unusable
        raise CorruptCacheError(
            f"{path} is unreadable ({type(err).__name__}: {err}). "
            f"Fix: delete {path.parent} and run train_seed_family() again."
        ) from err


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CorruptCacheError(f"{path} is missing.") from err
    except (OSError, ValueError) as err:
        raise CorruptCacheError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise CorruptCacheError(f"{path} does not hold a JSON object.")
    return data


def _json_safe_cfg(cfg: Any) -> dict[str, Any]:
    data = dict(cfg.to_dict())  # a copy: to_dict may hand out the live __dict__
    data["dtype"] = str(data["dtype"]).removeprefix("torch.")
    data["device"] = None if data.get("device") is None else str(data["device"])
    return json.loads(json.dumps(data, default=str))


def save_seed_model(model: Any, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Save a model as ``model.safetensors`` + ``config.json`` (+ ``train.json``), atomically.

    Examples:
        >>> import tempfile, torch
        >>> from tl_universality.data.seeds import PRESETS
        >>> from transformer_lens import HookedTransformer
        >>> model = HookedTransformer(PRESETS["tiny"].model_config(seed=0, d_vocab=300))
        >>> folder = Path(tempfile.mkdtemp()) / "seed0"
        >>> save_seed_model(model, folder)
        >>> toks = torch.tensor([[0, 5, 7]])
        >>> torch.equal(load_seed_model(folder)(toks), model(toks))
        True
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(Path(folder)) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "config.json", _json_safe_cfg(model.cfg))
        if extra is not None:
            atomic_write_json(tmp / "train.json", extra)


def load_seed_model(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    device: str = "cpu",
) -> Any:
    """Load one model saved by :func:`save_seed_model` (never unpickles anything).

    Args:
        folder: The model folder (``.../seed<k>``).
        tokenizer: The tokenizer to attach; by default the family's ``../tokenizer`` if present.
        device: Where to put the model.

    Returns:
        A ``HookedTransformer`` in eval mode.

    Raises:
        CorruptCacheError: A file is missing or unreadable, or the weights do not fit the config.
    """
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = Path(folder)
    fix = f"Fix: delete {folder} and run train_seed_family() again, which rebuilds it."
    try:
        cfg_dict = _read_json(folder / "config.json")
        cfg_dict["dtype"] = getattr(torch, cfg_dict["dtype"])
        cfg_dict["device"] = device
        cfg = HookedTransformerConfig(**cfg_dict)
    except CorruptCacheError as err:
        raise CorruptCacheError(f"Seed model folder {folder} is corrupt: {err} {fix}") from err
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as err:
        raise CorruptCacheError(
            f"Seed model folder {folder} has an invalid config.json ({err}). {fix}"
        ) from err
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CorruptCacheError(f"Seed model folder {folder} has no model.safetensors. {fix}")
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise CorruptCacheError(
            f"Seed model folder {folder}: model.safetensors is unreadable "
            f"({type(err).__name__}: {err}). {fix}"
        ) from err
    if tokenizer is None and (folder.parent / "tokenizer" / "tokenizer.json").is_file():
        tokenizer = _load_tokenizer(folder.parent / "tokenizer")
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CorruptCacheError(
            f"Seed model folder {folder}: the weights do not match config.json ({err}). {fix}"
        ) from err
    return model.eval()


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # any failure means the folder is unusable
        raise CorruptCacheError(
            f"The tokenizer in {folder} is unreadable ({type(err).__name__}: {err})."
        ) from err


# -- training ------------------------------------------------------------------------------------


def _lr_lambda(config: SeedFamilyConfig) -> Callable[[int], float]:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at the last step."""

    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def batch_order(config: SeedFamilyConfig, n_sequences: int) -> Int[Tensor, "steps batch"]:
    """Indices of the training sequences in each step's batch, shared by all seeds.

    Epochs are shuffled with ``data_seed`` (not the model seed), so every seed sees the same data
    in the same order.

    Examples:
        >>> order = batch_order(PRESETS["tiny"], n_sequences=100)
        >>> order.shape, bool((order < 100).all())
        (torch.Size([60, 16]), True)
    """
    gen = torch.Generator().manual_seed(config.data_seed)
    needed = config.steps * config.batch_size
    epochs = [torch.randperm(n_sequences, generator=gen) for _ in range(-(-needed // n_sequences))]
    return torch.cat(epochs)[:needed].reshape(config.steps, config.batch_size)


@torch.no_grad()
def mean_loss(model: Any, tokens: Int[Tensor, "n seq"], batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over ``tokens`` (all positions).

    Examples:
        >>> import torch
        >>> from transformer_lens import HookedTransformer
        >>> model = HookedTransformer(PRESETS["tiny"].model_config(seed=0, d_vocab=300))
        >>> 4 < mean_loss(model, torch.randint(0, 300, (3, 16))) < 8
        True
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(device)
        loss = model(batch, return_type="loss")
        total += float(loss) * batch.shape[0]
        count += batch.shape[0]
    return total / count


def _train_one(
    config: SeedFamilyConfig,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    train: Int[Tensor, "n seq"],
    held: Int[Tensor, "m seq"],
    order: Int[Tensor, "steps batch"],
    *,
    progress: bool,
    device: str,
) -> tuple[Any, dict[str, Any]]:
    """Train the model of one seed; returns it and its train.json record."""
    from tqdm.auto import tqdm
    from transformer_lens import HookedTransformer

    torch.manual_seed(seed)
    model = HookedTransformer(
        config.model_config(seed, len(tokenizer), device), tokenizer=tokenizer
    )
    model.train()
    # Decay matrices only: decaying LayerNorm gains and biases just hurts small models.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=config.betas,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(order, desc=f"seed {seed}", disable=not progress, leave=False)
    loss_value = float("nan")
    for step_indices in bar:
        batch = train[step_indices].to(device)
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    seconds = time.perf_counter() - start
    # CPU time too: on a shared machine wall-clock time depends on what else is running.
    cpu_seconds = time.process_time() - cpu_start
    model.eval()
    held_loss = mean_loss(model, held)
    record = {
        "seed": seed,
        "held_out_loss": held_loss,
        "final_train_loss": loss_value,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "steps": config.steps,
        "threads": torch.get_num_threads(),
    }
    return model, record


# -- the family ----------------------------------------------------------------------------------


def _resolve(preset_or_config: str | SeedFamilyConfig) -> SeedFamilyConfig:
    if isinstance(preset_or_config, SeedFamilyConfig):
        return preset_or_config
    if preset_or_config not in PRESETS:
        raise ValueError(
            f"Unknown seed-family preset {preset_or_config!r}. Choose one of {sorted(PRESETS)} "
            f"or pass a SeedFamilyConfig."
        )
    return PRESETS[preset_or_config]


def _family_key(config: SeedFamilyConfig, data_fingerprint: str | None) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "config": config.to_dict(),
        "data": data_fingerprint or corpus_key(config.include_source),
    }


def family_folder(
    preset_or_config: str | SeedFamilyConfig = "demo",
    *,
    cache_dir: str | Path | None = None,
    data_fingerprint: str | None = None,
) -> Path:
    """The cache folder of a family trained on the default corpus (or on other data).

    Examples:
        >>> family_folder("tiny").name.startswith("tiny-")
        True
    """
    config = _resolve(preset_or_config)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "seeds"
    return root / f"{config.name}-{stable_hash(_family_key(config, data_fingerprint))}"


def _fingerprint(tokens: Tensor) -> str:
    import hashlib

    return hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16]


def _load_family(
    folder: Path,
    config: SeedFamilyConfig,
    device: str,
) -> SeedFamily:
    """Load a complete cached family; CorruptCacheError names anything wrong."""
    info = _read_json(folder / "family.json")
    if SeedFamilyConfig.from_dict(info.get("config", {})) != config:
        raise CorruptCacheError(f"{folder}/family.json describes a different configuration.")
    tokenizer = _load_tokenizer(folder / "tokenizer")
    _load_tensor(folder / "held_out_tokens.safetensors", "tokens")
    models, losses, seconds = [], [], []
    for seed in config.seeds:
        seed_folder = folder / f"seed{seed}"
        record = _read_json(seed_folder / "train.json")
        models.append(load_seed_model(seed_folder, tokenizer, device=device))
        losses.append(float(record["held_out_loss"]))
        seconds.append(float(record["train_seconds"]))
    return SeedFamily(models, tokenizer, config, losses, seconds, folder, info)


def train_seed_family(
    preset_or_config: str | SeedFamilyConfig = "demo",
    *,
    tokens: Any = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    num_threads: int | None = None,
) -> SeedFamily:
    """Train a seed family, or load it from the cache when it was trained before.

    Every seed sees the same training sequences in the same order and differs only in its
    initialisation seed (``HookedTransformerConfig(seed=...)`` and ``torch.manual_seed``).
    Training: AdamW, linear warm-up then cosine decay, gradient clipping; the held-out loss is
    measured at the end. A cached folder that is incomplete or damaged is rebuilt with a warning,
    keeping the pieces that are still valid (each seed is trained independently).

    Args:
        preset_or_config: ``"tiny"``, ``"demo"`` or a :class:`SeedFamilyConfig`.
        tokens: Train on these instead of the default corpus: anything :func:`as_token_source`
            accepts (text is tokenized with the family's tokenizer; token ids must be below its
            vocabulary size). ``config.held_out`` of it is held out.
        cache_dir: Folder holding the families (default ``cache_root() / "seeds"``).
        progress: Show a tqdm progress bar per seed.
        device: Where to train and put the models.
        num_threads: CPU threads for torch while training (restored afterwards); None keeps
            torch's setting. Use 1 on a busy machine: waiting OpenMP threads spin, and small
            models gain little from a second thread (on a loaded 2-core machine a ``tiny`` step
            took 26 ms with 1 thread and 1 s with 2).

    Returns:
        The :class:`SeedFamily`.

    Examples:
        >>> family = train_seed_family("tiny", progress=False)  # doctest: +SKIP
        >>> [round(x, 2) for x in family.held_out_loss]  # doctest: +SKIP
        [5.29, 5.28, 5.31]
    """
    config = _resolve(preset_or_config)
    base_tokenizer = load_default_tokenizer(config.vocab_size, include_source=config.include_source)

    # Custom data is keyed by its content, so it must be read before looking in the cache.
    custom: tuple[Tensor, Tensor] | None = None
    fingerprint = None
    if tokens is not None:
        source = as_token_source(tokens, base_tokenizer, seq_len=config.n_ctx)
        if source.seq_len > config.n_ctx:
            raise ValueError(
                f"Training sequences of {source.seq_len} tokens exceed n_ctx={config.n_ctx}. "
                f"Fix: pass tokens with seq_len <= {config.n_ctx}."
            )
        train_src, held_src = source.split(config.held_out, config.split_seed)
        custom = (train_src.to_tensor(), held_src.to_tensor())
        if int(custom[0].max()) >= len(base_tokenizer):
            raise ValueError(
                f"Token ids up to {int(custom[0].max())} do not fit the family's vocabulary of "
                f"{len(base_tokenizer)}. Fix: pass text, or ids from tl_universality's tokenizer."
            )
        fingerprint = _fingerprint(torch.cat([custom[0].flatten(), custom[1].flatten()]))

    folder = family_folder(config, cache_dir=cache_dir, data_fingerprint=fingerprint)
    if folder.exists():
        try:
            family = _load_family(folder, config, device)
            if custom is not None:
                family._train_source = TensorTokenSource(custom[0], base_tokenizer.bos_token_id)
            return family
        except CorruptCacheError as err:
            warnings.warn(
                f"The cached seed family in {folder} is incomplete or damaged ({err}); "
                f"rebuilding the broken parts.",
                stacklevel=2,
            )

    # The tokenizer folder and the held-out tokens are the base everything else depends on:
    # if either is broken, start the folder afresh.
    try:
        tokenizer = _load_tokenizer(folder / "tokenizer")
        held_check = _load_tensor(folder / "held_out_tokens.safetensors", "tokens")
    except CorruptCacheError:
        shutil.rmtree(folder, ignore_errors=True)
        held_check = None
        with atomic_dir(folder / "tokenizer") as tmp:
            base_tokenizer.save_pretrained(str(tmp))
        tokenizer = _load_tokenizer(folder / "tokenizer")

    if custom is not None:
        train, held = custom
    else:
        train_src, held_src = DefaultCorpusSource(
            tokenizer, seq_len=config.n_ctx, include_source=config.include_source
        ).split(config.held_out, config.split_seed)
        train, held = train_src.to_tensor(), held_src.to_tensor()
    if held_check is None or not torch.equal(held_check, held):
        from safetensors.torch import save

        if held_check is not None:
            # The data changed under the same key (e.g. an edited standard library): models
            # trained on the old data and their losses are stale.
            warnings.warn(f"The data of {folder} changed; retraining every seed.", stacklevel=2)
            for seed in config.seeds:
                shutil.rmtree(folder / f"seed{seed}", ignore_errors=True)
        atomic_write_bytes(folder / "held_out_tokens.safetensors", save({"tokens": held}))

    order = batch_order(config, train.shape[0])
    models, records = [], []
    old_threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        for seed in config.seeds:
            seed_folder = folder / f"seed{seed}"
            try:
                record = _read_json(seed_folder / "train.json")
                model = load_seed_model(seed_folder, tokenizer, device=device)
                float(record["held_out_loss"]), float(record["train_seconds"])
            except (CorruptCacheError, KeyError, TypeError, ValueError):
                model, record = _train_one(
                    config, seed, tokenizer, train, held, order, progress=progress, device=device
                )
                save_seed_model(model, seed_folder, record)
            models.append(model)
            records.append(record)
    finally:
        torch.set_num_threads(old_threads)

    info: dict[str, Any] = {
        "format": _FORMAT,
        "config": config.to_dict(),
        "data": "custom tokens" if custom is not None else "default corpus",
        "data_fingerprint": fingerprint,
        "corpus": None if custom is not None else corpus_info(config.include_source),
        "vocab_size": len(tokenizer),
        "n_params": sum(p.numel() for p in models[0].parameters()),
        "n_train_sequences": int(train.shape[0]),
        "n_train_tokens": int(train.numel()),
        "n_held_out_sequences": int(held.shape[0]),
        "n_held_out_tokens": int(held.numel()),
        "tokens_seen_per_seed": config.steps * config.batch_size * config.n_ctx,
        "seeds": records,
        "versions": _versions(),
    }
    atomic_write_json(folder / "family.json", info)
    family = SeedFamily(
        models,
        tokenizer,
        config,
        [float(r["held_out_loss"]) for r in records],
        [float(r["train_seconds"]) for r in records],
        folder,
        info,
    )
    if custom is not None:
        family._train_source = TensorTokenSource(custom[0], tokenizer.bos_token_id)
    return family


def _versions() -> dict[str, str]:
    """Library versions recorded in family.json (results may change with them)."""
    import sys
    from importlib.metadata import version

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
        "tokenizers": version("tokenizers"),
    }


def load_family_folder(folder: str | Path, *, device: str = "cpu") -> SeedFamily:
    """Load the seed family saved in ``folder`` (one holding ``family.json``), never training.

    Examples:
        >>> load_family_folder("~/.cache/tl_universality/seeds/demo-3a2e83f90776")  # doctest: +SKIP
    """
    folder = Path(folder).expanduser()
    info = _read_json(folder / "family.json")
    return _load_family(folder, SeedFamilyConfig.from_dict(info.get("config", {})), device)


def load_seed_family(
    preset_or_config: str | SeedFamilyConfig = "demo",
    *,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> SeedFamily:
    """Load a family trained on the default corpus from the cache, never training.

    Raises:
        FileNotFoundError: The family was never trained with these settings.
        CorruptCacheError: The cached folder is damaged (``train_seed_family`` repairs it).

    Examples:
        >>> load_seed_family("demo").config.name  # doctest: +SKIP
        'demo'
    """
    config = _resolve(preset_or_config)
    folder = family_folder(config, cache_dir=cache_dir)
    if not (folder / "family.json").is_file():
        raise FileNotFoundError(
            f"No cached seed family {config.name!r} in {folder}. Fix: run "
            f"tl_universality.data.seeds.train_seed_family({config.name!r}) once (it trains and "
            f"caches it)."
        )
    try:
        return _load_family(folder, config, device)
    except CorruptCacheError as err:
        raise CorruptCacheError(
            f"The cached seed family in {folder} is damaged ({err}). Fix: run "
            f"train_seed_family({config.name!r}), which rebuilds the broken parts."
        ) from err
