"""Train (once, cached) or load a whole seed family."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_universality.core.cache import cache_root, stable_hash
from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.saving import atomic_dir, atomic_write_bytes, atomic_write_json
from tl_universality.data.corpus import corpus_info, corpus_key, load_default_tokenizer
from tl_universality.data.seeds.config import FORMAT, PRESETS, SeedFamily, SeedFamilyConfig
from tl_universality.data.seeds.files import (
    load_seed_model,
    load_tensor,
    load_tokenizer,
    read_json,
    save_seed_model,
)
from tl_universality.data.seeds.training import batch_order, train_one
from tl_universality.data.tokens import (
    DefaultCorpusSource,
    TensorTokenSource,
    as_token_source,
)
from tl_universality.data.tokens.resolve import Tokens

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
        "format": FORMAT,
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
    info = read_json(folder / "family.json")
    if SeedFamilyConfig.from_dict(info.get("config", {})) != config:
        raise CorruptCacheError(f"{folder}/family.json describes a different configuration.")
    tokenizer = load_tokenizer(folder / "tokenizer")
    load_tensor(folder / "held_out_tokens.safetensors", "tokens")
    models, losses, seconds = [], [], []
    for seed in config.seeds:
        seed_folder = folder / f"seed{seed}"
        record = read_json(seed_folder / "train.json")
        models.append(load_seed_model(seed_folder, tokenizer, device=device))
        losses.append(float(record["held_out_loss"]))
        seconds.append(float(record["train_seconds"]))
    return SeedFamily(models, tokenizer, config, losses, seconds, folder, info)


def train_seed_family(
    preset_or_config: str | SeedFamilyConfig = "demo",
    *,
    tokens: Tokens = None,
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
        tokenizer = load_tokenizer(folder / "tokenizer")
        held_check = load_tensor(folder / "held_out_tokens.safetensors", "tokens")
    except CorruptCacheError:
        shutil.rmtree(folder, ignore_errors=True)
        held_check = None
        with atomic_dir(folder / "tokenizer") as tmp:
            base_tokenizer.save_pretrained(str(tmp))
        tokenizer = load_tokenizer(folder / "tokenizer")

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
                record = read_json(seed_folder / "train.json")
                model = load_seed_model(seed_folder, tokenizer, device=device)
                float(record["held_out_loss"]), float(record["train_seconds"])
            except (CorruptCacheError, KeyError, TypeError, ValueError):
                model, record = train_one(
                    config, seed, tokenizer, train, held, order, progress=progress, device=device
                )
                save_seed_model(model, seed_folder, record)
            models.append(model)
            records.append(record)
    finally:
        torch.set_num_threads(old_threads)

    info: dict[str, Any] = {
        "format": FORMAT,
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
    info = read_json(folder / "family.json")
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
