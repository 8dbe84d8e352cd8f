"""Training small SAEs offline on a seed family (sae-lens's trainer, our data path), cached."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.errors import HookError
from tl_universality.core.protocol import HookedModel
from tl_universality.data.tokens.resolve import Tokens

# -- training small SAEs offline -----------------------------------------------------------------

_SAE_FORMAT = 1  # bump when the training recipe or the cache folder layout changes
_RECORD = "train.json"


def model_fingerprint(model: Any) -> str:
    """A short hash of a model's weights (names, shapes, dtypes and bytes of its state dict).

    Two models with equal weights get the same fingerprint, whatever object holds them; any change
    to a weight changes it. Used to key cached SAEs by the model they were trained on.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
        ...                               act_fn="relu", seed=0)
        >>> model_fingerprint(HookedTransformer(cfg)) == model_fingerprint(HookedTransformer(cfg))
        True
    """
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _tokens_fingerprint(tokens: Tensor) -> str:
    import hashlib

    return hashlib.sha256(tokens.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def _shuffled_batches(
    model: Any,
    source: Any,
    hook_name: str,
    *,
    batch_size: int,
    buffer_size: int,
    generator: torch.Generator,
    model_batch_size: int,
) -> Iterator[Float[Tensor, "batch d_in"]]:
    """Endless ``[batch_size, d_in]`` batches of ``hook_name`` activations, shuffled.

    Activations of consecutive tokens are strongly correlated, so they pass through a mixing
    buffer: once it holds ``buffer_size`` rows it is shuffled and half of it is handed out, the
    other half waits to be mixed with fresh rows. The token source is read again (an epoch) when it
    runs out, so a short stream can feed a long training.
    """
    from tl_universality.core.errors import EmptyTokenSourceError
    from tl_universality.units.activations import stream_activations

    chunks: list[Tensor] = []
    held = 0
    while True:
        seen = 0
        for batch in stream_activations(
            model, source, units=[hook_name], batch_size=model_batch_size, progress=False
        ):
            acts = batch.acts[0]
            seen += acts.shape[0]
            chunks.append(acts)
            held += acts.shape[0]
            if held < buffer_size:
                continue
            buffer = torch.cat(chunks)
            buffer = buffer[torch.randperm(held, generator=generator).to(buffer.device)]
            n_out = (held // 2) // batch_size * batch_size
            yield from buffer[:n_out].split(batch_size)
            chunks, held = [buffer[n_out:]], held - n_out
        if seen == 0:
            raise EmptyTokenSourceError(
                f"The token source {getattr(source, 'name', source)!r} gave no activation at"
                f" {hook_name}: every position was excluded or the source is empty."
            )


@contextmanager
def _quiet_sae_lens(quiet: bool) -> Iterator[None]:
    """Silence sae-lens's training progress bars for the duration of the block."""
    # SAETrainer.fit and the norm estimate open tqdm bars with no option to disable them (and tqdm
    # reads TQDM_DISABLE only at import), so their module-level ``tqdm`` is swapped for the block.
    if not quiet:
        yield
        return
    import functools
    import importlib

    modules = [
        importlib.import_module(f"sae_lens.training.{name}")
        for name in ("sae_trainer", "activation_scaler")
    ]
    originals = [module.tqdm for module in modules]
    try:
        for module, original in zip(modules, originals, strict=True):
            module.tqdm = functools.partial(original, disable=True)
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.tqdm = original


_SAE_TAG = "tl_universality.sae"  # the cache folder's manifest tag (core.saving)


def _load_cached_sae(folder: Path, key: dict[str, Any], device: str) -> Any:
    """The SAE cached in ``folder`` if it was trained with ``key``; CorruptCacheError if broken.

    Every file is checked against the folder's manifest (size and SHA-256) before sae-lens reads
    it, so a flipped byte in the weights is found, not loaded.
    """
    from sae_lens import SAE

    from tl_universality.core.errors import CorruptCacheError
    from tl_universality.core.saving import open_saved

    fix = f"delete {folder}; train_sae retrains it."
    with open_saved(folder, _SAE_TAG, _SAE_FORMAT, what="SAE cache entry", fix=fix) as saved:
        record = saved.json(_RECORD.removesuffix(".json"))
        for name in ("cfg.json", "sae_weights.safetensors"):
            saved.path(name)
        if record.get("key") != json.loads(json.dumps(key, default=str)):
            raise CorruptCacheError(f"{folder / _RECORD} was written for other settings")
        try:
            sae = SAE.load_from_disk(folder, device=device)
        except Exception as err:  # unknown fields, a newer sae-lens layout
            raise CorruptCacheError(f"{type(err).__name__}: {err}") from err
    with torch.no_grad():
        # The loaded tensors may be memory-mapped from the cache file; own copies keep the SAE
        # valid if the cache entry is later rebuilt, deleted or damaged.
        for param in sae.parameters():
            param.data = param.data.clone()
    sae.cfg.metadata.hook_name = key["hook_name"]
    return sae


def train_sae(
    model: HookedModel,
    tokens: Tokens,
    hook_name: str,
    *,
    d_sae: int,
    architecture: str = "standard",
    l1_coefficient: float = 3.0,
    k: int | None = None,
    total_tokens: int = 1_000_000,
    batch_size: int = 1024,
    lr: float = 3e-3,
    seed: int = 0,
    buffer_tokens: int | None = None,
    normalize: bool = True,
    sae_kwargs: dict[str, Any] | None = None,
    model_batch_size: int = 32,
    bos_token_id: int | None = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Any:
    """Train a small sae-lens SAE on ``hook_name`` of ``model`` from a local token stream.

    Training is sae-lens's own (``SAETrainer`` with a ``StandardTrainingSAE``, ``TopKTrainingSAE``
    or any registered training architecture); only the data path is ours: activations come from
    :func:`~tl_universality.units.activations.stream_activations` (BOS/padding positions dropped),
    pass
    through a shuffling buffer, and the token stream is re-read when it runs out. Nothing touches
    the Hugging Face hub.

    Two choices make short trainings work on small models, whose activations may carry a constant
    offset far larger than their variation (the MLP output of a ``tiny`` seed-family model: mean
    norm² ~12 times its variance). The decoder bias starts at the mean activation, so no step is
    spent learning the offset, and the inputs are scaled during training so that their *centred*
    squared norm is ``d_in`` on average (sae-lens's ``expected_average_only_in`` measures it about
    zero, which lets the offset dilute the L1 penalty). The scale is folded into the weights at
    the end by sae-lens, so the returned SAE reads raw activations.

    The SAE is cached under ``cache_root()/saes/<hook>-<architecture>-<d_sae>-<hash>/`` (the hash
    covers the model's weights, the tokens read and every setting) as sae-lens writes it
    (``sae_weights.safetensors`` + ``cfg.json``, no pickle) plus ``train.json``, written
    atomically with a checksummed ``manifest.json`` (:mod:`tl_universality.core.saving`). A second
    call with the same settings verifies and loads it with ``SAE.load_from_disk``; a damaged
    folder (any flipped byte) is rebuilt with a warning.

    Args:
        model: the model whose activations the SAE reconstructs.
        tokens: anything :func:`~tl_universality.data.tokens.as_token_source` accepts; at most
            ``total_tokens`` of it are read (and re-read if it is shorter).
        hook_name: the full hook name the SAE reads, e.g. ``"blocks.1.hook_mlp_out"``; its width
            per position is ``d_in``. Stored as ``sae.cfg.metadata.hook_name``.
        d_sae: number of latents.
        architecture: a sae-lens training architecture: ``"standard"`` (ReLU + L1),
            ``"topk"``, ``"batchtopk"``, ``"jumprelu"``, ...
        l1_coefficient: sparsity penalty of architectures that have one (``l1_coefficient``).
            The defaults (3.0, ``lr=3e-3``) were chosen on the ``demo`` family's last MLP output
            (d_sae = 4 d_in, 1M tokens: explained variance 0.90 at L0 15 of 512).
        k: active latents per token of the top-k architectures (default ``min(32, d_sae)``).
        total_tokens: training activations (tokens), BOS positions excluded.
        batch_size: activations per optimiser step.
        lr: Adam learning rate (5% linear warm-up, linear decay to 0 over the last 20%).
        seed: seeds the SAE initialisation and the shuffling (the global RNG is left as it was).
        buffer_tokens: size of the shuffling buffer (default a quarter of ``total_tokens``, at
            most 32768 and at least ``2 * batch_size``).
        normalize: scale the inputs during training (see above); False trains on raw values.
        sae_kwargs: further fields of the training config (e.g. ``{"l1_warm_up_steps": 0}``).
        model_batch_size: sequences per forward pass of ``model``.
        bos_token_id: BOS id of a token tensor when the model has no tokenizer.
        device: where to train (default: the model's device).
        cache_dir: folder holding the cached SAEs (default ``cache_root() / "saes"``).
        progress: show sae-lens's progress bar.

    Returns:
        A sae-lens inference ``SAE`` (e.g. ``StandardSAE``) on ``device``, in eval mode;
        ``sae.cfg.metadata`` carries ``hook_name``, ``model_name`` and the training summary
        (``l0``, ``num_dead_features``); the cache folder is ``sae.cfg.metadata.cache_folder``.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=16, d_head=4,
        ...                               d_vocab=50, d_mlp=64, act_fn="relu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> toks = torch.randint(1, 50, (64, 16)); toks[:, 0] = 0
        >>> sae = train_sae(model, toks, "blocks.0.hook_mlp_out", d_sae=32, total_tokens=4096,
        ...                 batch_size=256, bos_token_id=0, progress=False)
        >>> sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name
        (16, 32, 'blocks.0.hook_mlp_out')
    """
    import dataclasses
    import time

    from sae_lens.config import SAETrainerConfig
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    from tl_universality.core.cache import build_lock, cache_root, stable_hash
    from tl_universality.core.errors import CorruptCacheError
    from tl_universality.core.protocol import model_name
    from tl_universality.core.saving import save_folder
    from tl_universality.core.validate import check_device, check_int, check_number
    from tl_universality.data.tokens import as_token_source
    from tl_universality.units.activations import model_device, unit_index

    d_sae = check_int("d_sae", d_sae, minimum=1)
    total_tokens = check_int("total_tokens", total_tokens, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    model_batch_size = check_int("model_batch_size", model_batch_size, minimum=1)
    buffer_tokens = check_int("buffer_tokens", buffer_tokens, minimum=2, optional=True)
    lr = check_number("lr", lr, minimum=0, strict_minimum=True)
    check_device("device", device)
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise ValueError(
            f"Unknown SAE architecture {architecture!r}; sae-lens can train"
            f" {sorted(SAE_TRAINING_CLASS_REGISTRY)}."
        )
    if d_sae < 1 or total_tokens < batch_size or batch_size < 1:
        raise ValueError(
            f"Need d_sae >= 1 and total_tokens >= batch_size >= 1; got d_sae={d_sae},"
            f" total_tokens={total_tokens}, batch_size={batch_size}."
        )
    index = unit_index(model, [hook_name])  # raises a HookError naming close matches
    if len(index.hook_names) != 1 or index.hook_names[0] != hook_name:
        raise HookError(f"hook_name must be one full hook name, got {hook_name!r}.")
    d_in = index.widths[0]
    device = str(device) if device is not None else str(model_device(model))
    buffer_size = int(buffer_tokens or max(2 * batch_size, min(32768, total_tokens // 4)))
    if buffer_size < 2 * batch_size:
        raise ValueError(f"buffer_tokens must be at least 2 * batch_size, got {buffer_size}.")

    seq_len = min(512, int(model.cfg.n_ctx))
    source = as_token_source(
        tokens, getattr(model, "tokenizer", None), seq_len=seq_len, bos_token_id=bos_token_id
    )
    # Training reads at most total_tokens (plus the norm estimate); materialising them keys the
    # cache by content, so the same tokens from a file or a tensor find the same SAE.
    data = source.limit(max(total_tokens, source.seq_len)).to_tensor()
    from tl_universality.data.tokens import TensorTokenSource

    data_source = TensorTokenSource(data, source.bos_token_id, name=source.name)

    training_cls, config_cls = get_sae_training_class(architecture)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    steps = total_tokens // batch_size
    arch: dict[str, Any] = {}
    if "l1_coefficient" in fields:
        arch["l1_coefficient"] = float(l1_coefficient)
        arch["l1_warm_up_steps"] = steps // 20
    if "k" in fields:
        arch["k"] = int(k if k is not None else min(32, d_sae))
    arch.update(sae_kwargs or {})
    if unknown := set(arch) - fields:
        raise ValueError(f"{config_cls.__name__} has no field(s) {sorted(unknown)}.")

    key = {
        "format": _SAE_FORMAT,
        "model": model_fingerprint(model),
        "tokens": _tokens_fingerprint(data),
        "hook_name": hook_name,
        "d_in": d_in,
        "d_sae": int(d_sae),
        "architecture": architecture,
        "arch": arch,
        "total_tokens": int(total_tokens),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "seed": int(seed),
        "buffer_size": buffer_size,
        "normalize": bool(normalize),
        "model_batch_size": int(model_batch_size),
    }
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "saes"
    folder = root / f"{hook_name}-{architecture}-{d_sae}-{stable_hash(key)}"
    # Another process training this SAE (a torchrun rank, another job): wait, then load it.
    with build_lock(folder, quiet=not progress):
        if folder.exists():
            try:
                sae = _load_cached_sae(folder, key, device)
                sae.cfg.metadata.cache_folder = str(folder)
                return sae.eval()
            except CorruptCacheError as err:
                warnings.warn(
                    f"The cached SAE in {folder} is incomplete or damaged ({err}); retraining it.",
                    stacklevel=2,
                )

        metadata = SAEMetadata(
            hook_name=hook_name,
            model_name=model_name(model),
            context_size=data.shape[1],
            prepend_bos=True,
            dataset_path=source.name,
        )
        start = time.perf_counter()
        # Seeded without touching the caller's global RNG (sae-lens initialises from it).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sae_cfg = config_cls(
                d_in=d_in,
                d_sae=int(d_sae),
                device=device,
                # The trainer applies our scale (set below), folds it into the weights at the end.
                normalize_activations="expected_average_only_in" if normalize else "none",
                # Attention z has a head axis; the inference SAE flattens it (training data: flat).
                reshape_activations="hook_z" if hook_name.endswith("hook_z") else "none",
                metadata=metadata,
                **arch,
            )
            training_sae = training_cls(sae_cfg)
            generator = torch.Generator().manual_seed(seed)
            provider = _shuffled_batches(
                model,
                data_source,
                hook_name,
                batch_size=batch_size,
                buffer_size=buffer_size,
                generator=generator,
                model_batch_size=model_batch_size,
            )
            trainer_cfg = SAETrainerConfig(
                total_training_samples=steps * batch_size,
                train_batch_size_samples=batch_size,
                lr=lr,
                lr_end=lr,  # the decay runs linearly from lr to 0
                lr_warm_up_steps=steps // 20,
                lr_decay_steps=steps // 5,
                device=device,
                dead_feature_window=max(1, steps // 4),
                feature_sampling_window=max(1, steps),
            )
            trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=provider)
            # Start statistics from a few batches (consumed, as sae-lens's own norm estimate would).
            sample = torch.cat([next(provider) for _ in range(min(20, max(1, steps // 10)))])
            mean = sample.mean(0)
            scale = 1.0
            if normalize:
                spread = float((sample - mean).pow(2).sum(-1).mean())
                scale = math.sqrt(d_in / spread) if spread > 0 else 1.0
                trainer.activation_scaler.scaling_factor = scale
            with torch.no_grad():
                training_sae.b_dec.copy_(mean * scale)
            with _quiet_sae_lens(not progress):
                trainer.fit()
        record = {
            "key": key,
            "train_seconds": time.perf_counter() - start,
            "l0": training_sae.cfg.metadata.l0,
            "num_dead_features": training_sae.cfg.metadata.num_dead_features,
            "n_training_tokens": trainer.n_training_samples,
            "model_name": model_name(model),
            "sae_lens_version": training_sae.cfg.metadata.sae_lens_version,
        }
        with save_folder(folder, _SAE_TAG, _SAE_FORMAT, meta={"key": key}) as out:
            training_sae.save_inference_model(out.root)
            for file in sorted(out.root.iterdir()):
                out.add_file(file.name)  # sae-lens's files, checksummed as written
            out.write_json(_RECORD.removesuffix(".json"), record)
        # Return what the cache holds, so a first and a later call give identical objects.
        sae = _load_cached_sae(folder, key, device)
        sae.cfg.metadata.cache_folder = str(folder)
        return sae.eval()


def train_family_saes(
    family: Any, hook_name: str, *, tokens: Tokens = None, **kwargs: Any
) -> list[Any]:
    """One SAE per model of a seed family, each trained with :func:`train_sae`.

    Every seed's SAE sees the same tokens (default: the family's training split, so the held-out
    split stays unseen for the analyses) and the same settings, including the SAE's seed: the
    SAEs differ only through the model they read.

    Args:
        family: a :class:`~tl_universality.data.seeds.SeedFamily` (``.models``,
            ``.train_tokens()``).
        hook_name: the hook every SAE reads.
        tokens: training tokens (default ``family.train_tokens()``).
        **kwargs: passed on to :func:`train_sae` (``d_sae`` is required).

    Examples:
        >>> from tl_universality.data.seeds import train_seed_family
        >>> family = train_seed_family("tiny", progress=False)  # doctest: +SKIP
        >>> saes = train_family_saes(family, "blocks.0.hook_mlp_out", d_sae=128)  # doctest: +SKIP
        >>> len(saes) == len(family.models)  # doctest: +SKIP
        True
    """
    source = tokens if tokens is not None else family.train_tokens()
    return [train_sae(model, source, hook_name, **kwargs) for model in family.models]


def load_pretrained_sae(release: str, sae_id: str, *, device: str = "cpu", **kwargs: Any) -> Any:
    """A published SAE by its sae-lens release name (needs the internet the first time).

    A thin wrapper over ``sae_lens.SAE.from_pretrained``: the result works as units like any other
    (``SAEUnits(sae)``), at the hook it names in ``sae.cfg.metadata.hook_name``.

    Examples:
        >>> sae = load_pretrained_sae(  # doctest: +SKIP
        ...     "gpt2-small-res-jb", "blocks.8.hook_resid_pre"
        ... )
        >>> SAEUnits(sae).hook_name  # doctest: +SKIP
        'blocks.8.hook_resid_pre'
    """
    from sae_lens import SAE

    return SAE.from_pretrained(release, sae_id, device=device, **kwargs)
