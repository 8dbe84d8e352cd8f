"""Train (once, cached) or load a whole seed family, and its training checkpoints.

The cache folder holds verified pieces (:mod:`tl_universality.data.seeds.files`), so damage is
found on load and repaired piece by piece: a damaged seed (or one of its checkpoints) retrains
that seed alone; a damaged tokenizer, held-out set or settings folder is rebuilt from the corpus
without retraining any intact seed. Each seed's record names the data it was trained on (a hash of
the tokenizer and the training and held-out tokens); seeds trained on other data are retrained.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tl_universality.core.cache import build_lock, cache_root, stable_hash
from tl_universality.core.errors import CorruptCacheError
from tl_universality.core.saving import atomic_write_json
from tl_universality.data.corpus import corpus_info, corpus_key, load_default_tokenizer
from tl_universality.data.seeds.config import FORMAT, PRESETS, SeedFamily, SeedFamilyConfig
from tl_universality.data.seeds.files import (
    load_seed_model,
    load_settings,
    load_tokenizer,
    load_tokens,
    read_json,
    read_train_record,
    save_seed_model,
    save_settings,
    save_tokenizer,
    save_tokens,
    tokenizer_hash,
    tokens_hash,
)
from tl_universality.data.seeds.training import batch_order, mean_loss, train_one
from tl_universality.data.tokens import (
    DefaultCorpusSource,
    TensorTokenSource,
    as_token_source,
)
from tl_universality.data.tokens.resolve import Tokens

SETTINGS_DIR, TOKENIZER_DIR, HELD_OUT_DIR, CHECKPOINTS_DIR = (
    "settings",
    "tokenizer",
    "held_out",
    "checkpoints",
)

# -- folders -------------------------------------------------------------------------------------


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


def checkpoint_folder(folder: Path, step: int, seed: int) -> Path:
    """Where the weights of ``seed`` after ``step`` training steps are saved in a family folder.

    Examples:
        >>> checkpoint_folder(Path("fam"), 100, 2).as_posix()
        'fam/checkpoints/step100/seed2'
    """
    return Path(folder) / CHECKPOINTS_DIR / f"step{int(step)}" / f"seed{int(seed)}"


def check_steps(steps: Iterable[int] | None, config: SeedFamilyConfig) -> tuple[int, ...]:
    """Validated checkpoint steps, sorted, without the final step (the family's own weights).

    Examples:
        >>> check_steps([50, 0, 60, 50], PRESETS["tiny"])
        (0, 50)
    """
    out = set()
    for step in steps or ():
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= config.steps:
            raise ValueError(
                f"Checkpoint steps must be integers in [0, steps={config.steps}], got {step!r}."
            )
        if step < config.steps:
            out.add(int(step))
    return tuple(sorted(out))


def _fingerprint(tokens: Tensor) -> str:
    return hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16]


def _data_hash(tok_hash: str, train: Tensor, held: Tensor) -> str:
    """What a seed was trained on: the tokenizer and the training and held-out tokens."""
    parts = (tok_hash, tokens_hash(train), tokens_hash(held))
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()


def _corpus_split(tokenizer: Any, config: SeedFamilyConfig) -> tuple[Tensor, Tensor]:
    """The training and held-out sequences of the default corpus."""
    train_src, held_src = DefaultCorpusSource(
        tokenizer, seq_len=config.n_ctx, include_source=config.include_source
    ).split(config.held_out, config.split_seed)
    return train_src.to_tensor(), held_src.to_tensor()


# -- loading -------------------------------------------------------------------------------------


class _OtherData(CorruptCacheError):
    """A valid seed trained on other data (the corpus changed under the same key)."""


def _checked_record(folder: Path, data_hash: str) -> dict[str, Any]:
    record = read_train_record(folder)
    try:
        float(record["held_out_loss"]), float(record["train_seconds"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptCacheError(f"{folder}/train.json lacks the training record ({err}).") from err
    if record.get("data_sha256") != data_hash:
        raise _OtherData(f"{folder} was trained on other data than this family's.")
    return record


def _checkpoint_record(folder: Path, step: int, seed: int, final: dict[str, Any]) -> dict[str, Any]:
    path = checkpoint_folder(folder, step, seed)
    record = _checked_record(path, final["data_sha256"])
    if record.get("run_id") != final.get("run_id") or record.get("step") != step:
        raise CorruptCacheError(
            f"{path} comes from another training run than {folder}/seed{seed} (or another step)."
        )
    return record


def _load_family(
    folder: Path,
    config: SeedFamilyConfig,
    device: str,
    checkpoint: int | None = None,
) -> SeedFamily:
    """Load a complete cached family (at a checkpoint); CorruptCacheError names what is wrong."""
    settings, verified_info = load_settings(folder / SETTINGS_DIR)
    if SeedFamilyConfig.from_dict(settings["config"]) != config:
        raise CorruptCacheError(f"{folder}/{SETTINGS_DIR} describes a different configuration.")
    tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
    held = load_tokens(folder / HELD_OUT_DIR)
    if tokenizer_hash(folder / TOKENIZER_DIR) != settings.get("tokenizer_sha256"):
        raise CorruptCacheError(f"{folder}/{TOKENIZER_DIR} is not the tokenizer of this family.")
    if tokens_hash(held) != settings.get("held_out_sha256"):
        raise CorruptCacheError(f"{folder}/{HELD_OUT_DIR} is not the held-out set of this family.")
    info = read_json(folder / "family.json")
    if info != verified_info:
        raise CorruptCacheError(
            f"{folder}/family.json differs from its verified copy in {folder}/{SETTINGS_DIR}."
        )
    data_hash = settings["data_sha256"]
    step = config.steps if checkpoint is None else int(checkpoint)
    models, losses, seconds = [], [], []
    for seed in config.seeds:
        record = _checked_record(folder / f"seed{seed}", data_hash)
        where = folder / f"seed{seed}"
        if step != config.steps:
            if not checkpoint_folder(folder, step, seed).exists():
                raise FileNotFoundError(
                    f"The seed family in {folder} has no checkpoint at step {step} for seed"
                    f" {seed} (it has {info.get('checkpoints', [])}). Fix: run"
                    f" train_seed_family({config.name!r}, checkpoints=[{step}]), which retrains"
                    " the seeds to save it."
                )
            record = _checkpoint_record(folder, step, seed, record)
            where = checkpoint_folder(folder, step, seed)
        models.append(load_seed_model(where, tokenizer, device=device))
        losses.append(float(record["held_out_loss"]))
        seconds.append(float(record["train_seconds"]))
    return SeedFamily(models, tokenizer, config, losses, seconds, folder, info, step=step)


def _missing_checkpoints(
    folder: Path, steps: tuple[int, ...], seed: int, final: dict[str, Any]
) -> list[int]:
    missing = []
    for step in steps:
        try:
            _checkpoint_record(folder, step, seed, final)
        except CorruptCacheError:
            missing.append(step)
    return missing


# -- training ------------------------------------------------------------------------------------


def train_seed_family(
    preset_or_config: str | SeedFamilyConfig = "demo",
    *,
    tokens: Tokens = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    num_threads: int | None = None,
    checkpoints: Iterable[int] | None = None,
) -> SeedFamily:
    """Train a seed family, or load it from the cache when it was trained before.

    Every seed sees the same training sequences in the same order and differs only in its
    initialisation seed (``HookedTransformerConfig(seed=...)`` and ``torch.manual_seed``).
    Training: AdamW, linear warm-up then cosine decay, gradient clipping; the held-out loss is
    measured at the end (and at every checkpoint). Every piece of the cache is verified on load; a
    damaged piece is rebuilt with a warning and the rest kept: a damaged seed (weights, record or
    one of its checkpoints) retrains that seed alone, a damaged tokenizer or held-out set is
    rebuilt from the corpus without retraining the seeds.

    Args:
        preset_or_config: ``"tiny"``, ``"demo"``, ``"gpu"`` or a :class:`SeedFamilyConfig`.
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
        checkpoints: Training steps (``0`` = the initialisation) at which to save every seed's
            weights as well, for :func:`load_seed_family` ``(..., checkpoint=step)``. A cached
            seed that lacks one is retrained (the same run: training is deterministic on a CPU
            and checkpoints draw no random numbers).

    Returns:
        The :class:`SeedFamily` (final weights).

    Examples:
        >>> family = train_seed_family("tiny", progress=False)  # doctest: +SKIP
        >>> [round(x, 2) for x in family.held_out_loss]  # doctest: +SKIP
        [5.29, 5.28, 5.31]
    """
    config = _resolve(preset_or_config)
    steps = check_steps(checkpoints, config)
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
    # Another process training this family (a torchrun rank, another job): wait, then load it.
    with build_lock(folder, quiet=not progress):
        if folder.exists():
            try:
                family = _load_family(folder, config, device)
                final = [read_train_record(folder / f"seed{s}") for s in config.seeds]
                if not any(
                    _missing_checkpoints(folder, steps, s, r)
                    for s, r in zip(config.seeds, final, strict=True)
                ):
                    if custom is not None:
                        family._train_source = TensorTokenSource(
                            custom[0], base_tokenizer.bos_token_id
                        )
                    return family
            except CorruptCacheError as err:
                warnings.warn(
                    f"The cached seed family in {folder} is incomplete or damaged ({err}); "
                    f"rebuilding the broken parts.",
                    stacklevel=2,
                )
        return _build(
            config,
            folder,
            base_tokenizer,
            custom,
            fingerprint,
            steps,
            progress,
            device,
            num_threads,
        )


def _repair_base(
    config: SeedFamilyConfig, folder: Path, base_tokenizer: Any, custom: Any, fingerprint: Any
) -> tuple[Any, Tensor, Tensor, dict[str, Any]]:
    """The tokenizer, the data and its hash; rebuilds damaged base pieces (no training)."""
    try:
        tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
        tok_hash = tokenizer_hash(folder / TOKENIZER_DIR)
    except CorruptCacheError:
        tok_hash = save_tokenizer(base_tokenizer, folder / TOKENIZER_DIR)
        tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
    train, held = custom if custom is not None else _corpus_split(tokenizer, config)
    try:
        stored_ok = torch.equal(load_tokens(folder / HELD_OUT_DIR), held)
    except CorruptCacheError:
        stored_ok = False
    if not stored_ok:
        save_tokens(held, folder / HELD_OUT_DIR)
    data_hash = _data_hash(tok_hash, train, held)
    settings = {
        "format": FORMAT,
        "config": config.to_dict(),
        "data": "custom tokens" if custom is not None else corpus_key(config.include_source),
        "data_fingerprint": fingerprint,
        "tokenizer_sha256": tok_hash,
        "held_out_sha256": tokens_hash(held),
        "data_sha256": data_hash,
    }
    try:
        current, _ = load_settings(folder / SETTINGS_DIR)
    except CorruptCacheError:
        current = None
    if current != settings:
        save_settings(folder / SETTINGS_DIR, settings)
    return tokenizer, train, held, settings


def _build(
    config: SeedFamilyConfig,
    folder: Path,
    base_tokenizer: Any,
    custom: tuple[Tensor, Tensor] | None,
    fingerprint: str | None,
    steps: tuple[int, ...],
    progress: bool,
    device: str,
    num_threads: int | None,
) -> SeedFamily:
    """Rebuild what is missing or damaged in ``folder``, training only the seeds that need it."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, train, held, settings = _repair_base(
        config, folder, base_tokenizer, custom, fingerprint
    )
    data_hash = settings["data_sha256"]
    order = batch_order(config, train.shape[0])
    models, records, stale = [], [], []
    old_threads = torch.get_num_threads()
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        for seed in config.seeds:
            seed_folder = folder / f"seed{seed}"
            try:
                record = _checked_record(seed_folder, data_hash)
                model = load_seed_model(seed_folder, tokenizer, device=device)
                if _missing_checkpoints(folder, steps, seed, record):
                    raise CorruptCacheError(f"checkpoints of seed {seed} are missing")
            except CorruptCacheError as err:
                if isinstance(err, _OtherData):
                    stale.append(seed)
                model, record = _train_and_save(
                    config, seed, folder, tokenizer, train, held, order, steps, data_hash,
                    progress=progress, device=device,
                )  # fmt: skip
            models.append(model)
            records.append(record)
    finally:
        torch.set_num_threads(old_threads)
    if stale:
        warnings.warn(
            f"The data of {folder} changed since seeds {stale} were trained; they were retrained.",
            stacklevel=3,
        )
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
        "tokens_per_step": config.batch_size * config.n_ctx,
        "checkpoints": available_checkpoints(folder, config, records),
        "seeds": records,
        "versions": _versions(),
    }
    info = json.loads(json.dumps(info, default=str))  # as it reads back
    save_settings(folder / SETTINGS_DIR, settings, info)
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


def _train_and_save(
    config: SeedFamilyConfig,
    seed: int,
    folder: Path,
    tokenizer: Any,
    train: Tensor,
    held: Tensor,
    order: Tensor,
    steps: tuple[int, ...],
    data_hash: str,
    *,
    progress: bool,
    device: str,
) -> tuple[Any, dict[str, Any]]:
    """Train one seed, saving its checkpoints on the way (the steps asked for and those it had);
    its old checkpoints, from another run, are removed first."""
    had = set()
    for old in (folder / CHECKPOINTS_DIR).glob(f"step*/seed{seed}"):
        step = old.parent.name.removeprefix("step")
        if step.isdigit() and int(step) < config.steps:
            had.add(int(step))
        shutil.rmtree(old, ignore_errors=True)
    steps = tuple(sorted(set(steps) | had))
    run = {"run_id": os.urandom(8).hex(), "data_sha256": data_hash}

    def save_checkpoint(step: int, model: Any) -> None:
        loss = mean_loss(model, held)
        record = {"seed": seed, "step": step, "held_out_loss": loss, "train_seconds": 0.0, **run}
        save_seed_model(model, checkpoint_folder(folder, step, seed), record)

    model, record = train_one(
        config, seed, tokenizer, train, held, order, progress=progress, device=device,
        checkpoints=steps, on_checkpoint=save_checkpoint,
    )  # fmt: skip
    record = {**record, "step": config.steps, **run}
    save_seed_model(model, folder / f"seed{seed}", record)
    return model, record


def available_checkpoints(
    folder: Path, config: SeedFamilyConfig, records: list[dict[str, Any]] | None = None
) -> list[int]:
    """Checkpoint steps saved for every seed of the family in ``folder`` (the final step last)."""
    if records is None:
        records = [read_train_record(folder / f"seed{s}") for s in config.seeds]
    found = []
    for path in sorted((Path(folder) / CHECKPOINTS_DIR).glob("step*")):
        try:
            step = int(path.name.removeprefix("step"))
        except ValueError:
            continue
        if all(
            checkpoint_folder(folder, step, s).is_dir() and r.get("run_id")
            for s, r in zip(config.seeds, records, strict=True)
        ):
            found.append(step)
    return sorted(found) + [config.steps]


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


def load_family_folder(
    folder: str | Path, *, device: str = "cpu", checkpoint: int | None = None
) -> SeedFamily:
    """Load the seed family saved in ``folder`` (at a checkpoint step), never training.

    Examples:
        >>> load_family_folder("~/.cache/tl_universality/seeds/demo-3a2e83f90776")  # doctest: +SKIP
    """
    folder = Path(folder).expanduser()
    settings, _ = load_settings(folder / SETTINGS_DIR)
    return _load_family(folder, SeedFamilyConfig.from_dict(settings["config"]), device, checkpoint)


def load_seed_family(
    preset_or_config: str | SeedFamilyConfig = "demo",
    *,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    checkpoint: int | None = None,
) -> SeedFamily:
    """Load a family trained on the default corpus from the cache, never training.

    Args:
        preset_or_config: The preset name or config it was trained with.
        cache_dir: Folder holding the families (default ``cache_root() / "seeds"``).
        device: Where to put the models.
        checkpoint: A training step saved with ``train_seed_family(..., checkpoints=[...])``
            (``0`` = the initialisation); default the final weights.

    Raises:
        FileNotFoundError: The family (or that checkpoint) was never trained with these settings.
        CorruptCacheError: The cached folder is damaged (``train_seed_family`` repairs it).

    Examples:
        >>> load_seed_family("demo", checkpoint=100).step  # doctest: +SKIP
        100
    """
    config = _resolve(preset_or_config)
    if checkpoint is not None:
        check_steps([checkpoint], config)
    folder = family_folder(config, cache_dir=cache_dir)
    with build_lock(folder):  # not while another process trains or repairs it
        if not (folder / "family.json").is_file():
            raise FileNotFoundError(
                f"No cached seed family {config.name!r} in {folder}. Fix: run "
                f"tl_universality.data.seeds.train_seed_family({config.name!r}) once (it trains"
                f" and caches it)."
            )
        try:
            return _load_family(folder, config, device, checkpoint)
        except CorruptCacheError as err:
            raise CorruptCacheError(
                f"The cached seed family in {folder} is damaged ({err}). Fix: run "
                f"train_seed_family({config.name!r}), which rebuilds only the broken parts."
            ) from err
