"""SAE latents as units: sae-lens SAEs stand in wherever units are chosen.

``SAEUnits(sae)`` reads the SAE's input hook (``sae.cfg.metadata.hook_name``) and yields the SAE's
latents (its ``hook_sae_acts_post``) as the units. By default it only observes: the model's
outputs are unchanged. ``splice=True`` replaces the hook's output with the SAE reconstruction, as
``HookedSAETransformer`` does with an attached SAE. A ``HookedSAETransformer`` whose SAEs are
attached needs no wrapper: its ``<hook>.hook_sae_acts_post`` hook names are units like any other.

The rest of the module builds on that:

- offline SAEs: :func:`train_sae` / :func:`train_family_saes` train small SAEs with sae-lens's own
  trainer on a local token stream and cache them (safetensors + JSON); :func:`load_pretrained_sae`
  loads a published one by release name (needs the internet);
- analyses: :func:`latent_universality` (universal features across seeds),
  :func:`neuron_latent_correlation` (which neurons a feature is made of, which features a neuron
  carries), :func:`decoder_similarity` (the same match seen in the decoder weights) and
  :func:`sae_unit_stats` (the unit table for latents).

sae-lens is an optional dependency (``pip install tl_universality[sae]``); it is imported only by
the functions that need it. See ``docs/sae.md``.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from tl_universality.core.errors import HookError
from tl_universality.core.protocol import HookedModel


def _sae_hook_name(sae: Any) -> str | None:
    metadata = getattr(sae.cfg, "metadata", None)
    name = getattr(metadata, "hook_name", None) if metadata is not None else None
    return name or getattr(sae.cfg, "hook_name", None)


@dataclass(frozen=True, eq=False)
class SAEUnits:
    """The latents of ``sae`` as units, read at ``hook_name`` (default: the SAE's own hook).

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=48))
        >>> units = SAEUnits(sae, hook_name="blocks.0.hook_resid_post")
        >>> units.width, units.label
        (48, 'blocks.0.hook_resid_post.hook_sae_acts_post')
    """

    sae: Any
    hook_name: str = ""
    splice: bool = False

    def __post_init__(self) -> None:
        name = self.hook_name or _sae_hook_name(self.sae)
        if not name:
            raise ValueError(
                "This SAE does not say which hook it reads (sae.cfg.metadata.hook_name is empty)."
                " Pass it: SAEUnits(sae, hook_name='blocks.0.hook_resid_post')."
            )
        object.__setattr__(self, "hook_name", name)

    @property
    def label(self) -> str:
        return f"{self.hook_name}.hook_sae_acts_post"

    @property
    def width(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    def __call__(self, act: Float[Tensor, "batch pos ..."]) -> Float[Tensor, "batch pos d_sae"]:
        if act.shape[-1] != self.d_in and int(act[0, 0].numel()) != self.d_in:
            raise HookError(
                f"The SAE expects inputs of width d_in={self.d_in}, but hook {self.hook_name}"
                f" gives {tuple(act.shape[2:])} per position. Attach the SAE at the hook it was"
                " trained on (sae.cfg.metadata.hook_name) or pass the matching hook_name."
            )
        with torch.no_grad():
            sae_dtype = next(self.sae.parameters()).dtype
            return self.sae.encode(act.to(sae_dtype))

    def replacement(self, act: Tensor, units: Tensor) -> Tensor:
        """The SAE reconstruction of ``act``, shaped like it (used when spliced)."""
        with torch.no_grad():
            return self.sae.decode(units).reshape(act.shape).to(act.dtype)


def attached_sae_units(model: Any) -> list[str]:
    """The latent hook names of the SAEs attached to a ``HookedSAETransformer``.

    Pass the list as ``units=`` to use them.
    """
    saes = getattr(model, "acts_to_saes", None)
    if not saes:
        raise HookError(
            f"{type(model).__name__} has no attached SAE. Attach one with model.add_sae(sae), or"
            " pass units=SAEUnits(sae) to read an SAE without attaching it."
        )
    return [f"{name}.hook_sae_acts_post" for name in saes]


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


def _load_cached_sae(folder: Path, key: dict[str, Any], device: str) -> Any:
    """The SAE cached in ``folder`` if it was trained with ``key``; CorruptCacheError if broken."""
    from sae_lens import SAE

    from tl_universality.core.errors import CorruptCacheError

    try:
        record = json.loads((folder / _RECORD).read_text())
        if record.get("key") != json.loads(json.dumps(key, default=str)):
            raise CorruptCacheError(f"{folder / _RECORD} was written for other settings")
        sae = SAE.load_from_disk(folder, device=device)
    except CorruptCacheError:
        raise
    except Exception as err:  # missing file, bad JSON, truncated safetensors, unknown fields
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
    tokens: Any,
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
    atomically. A second call with the same settings loads it with ``SAE.load_from_disk``; a
    damaged folder is rebuilt with a warning.

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

    from tl_universality.core.cache import cache_root, stable_hash
    from tl_universality.core.errors import CorruptCacheError
    from tl_universality.core.protocol import model_name
    from tl_universality.core.saving import atomic_dir, atomic_write_json
    from tl_universality.data.tokens import as_token_source
    from tl_universality.units.activations import model_device, unit_index

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
            # The trainer applies our scale (set below) and folds it into the weights at the end.
            normalize_activations="expected_average_only_in" if normalize else "none",
            # Attention z has a head axis; the inference SAE flattens it (training data is flat).
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
    with atomic_dir(folder) as tmp:
        training_sae.save_inference_model(tmp)
        atomic_write_json(tmp / _RECORD, record)
    # Return what the cache holds, so a first and a later call give identical objects.
    sae = _load_cached_sae(folder, key, device)
    sae.cfg.metadata.cache_folder = str(folder)
    return sae.eval()


def train_family_saes(
    family: Any, hook_name: str, *, tokens: Any = None, **kwargs: Any
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


# -- analyses that only make sense with SAEs -----------------------------------------------------

SAELike = Any
"""A sae-lens ``SAE`` (read at its own hook, observed) or an :class:`SAEUnits`."""

#: Hooks whose activations live in the residual stream basis, so an SAE decoder direction there
#: can be read through the unembedding.
_RESIDUAL_SITE = re.compile(r"(hook_resid_(pre|mid|post)|hook_mlp_out|hook_attn_out|hook_embed)$")


def _as_units(sae: SAELike) -> SAEUnits:
    return sae if isinstance(sae, SAEUnits) else SAEUnits(sae)


def _sae_of(sae: SAELike) -> Any:
    return sae.sae if isinstance(sae, SAEUnits) else sae


def latent_universality(
    models: Sequence[HookedModel],
    saes: Sequence[SAELike],
    tokens: Any = None,
    **correlate_kwargs: Any,
) -> Any:
    """Universality of SAE latents: every latent of ``models[0]``'s SAE against each other seed's.

    Each model reads its own SAE's latents as its units (``saes[i]`` belongs to ``models[i]``) and
    :func:`~tl_universality.analyses.correlation.correlate` does the rest, exactly as for neurons:
    per
    reference latent and other model the max correlation, the chance baseline (by default the
    other SAE's latents mixed by a random rotation) and ``excess_corr``; with the paper's
    threshold, ``result.is_universal(0.5)`` marks the universal latents. In the result's tables
    ``layer`` is the SAE hook's block and ``neuron`` the latent index.

    Args:
        models: the seed models, reference first (at least two).
        saes: one SAE (or :class:`SAEUnits`) per model, in the same order.
        tokens: anything :func:`~tl_universality.data.tokens.as_token_source` accepts.
        **correlate_kwargs: passed on to :func:`~tl_universality.analyses.correlation.correlate`
            (``baseline``, ``n_draws``, ``keep_matrix``, ``max_tokens``, ``bos_token_id``, ...).

    Returns:
        A :class:`~tl_universality.analyses.correlation.CorrelationResult` over latents.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               act_fn="relu", seed=0)
        >>> a, b = HookedTransformer(cfg), HookedTransformer(cfg)  # same weights
        >>> _ = torch.manual_seed(0)
        >>> sae = SAEUnits(StandardSAE(StandardSAEConfig(d_in=16, d_sae=32)),
        ...                "blocks.0.hook_resid_post")
        >>> toks = torch.randint(1, 20, (16, 8)); toks[:, 0] = 0
        >>> result = latent_universality([a, b], [sae, sae], toks, bos_token_id=0, n_draws=1,
        ...                              progress=False)
        >>> result.units.widths, bool((result.max_corr.nan_to_num(1.0) > 0.999).all())
        ((32,), True)
    """
    from tl_universality.analyses.correlation import correlate

    models = list(models)
    if len(models) < 2 or len(saes) != len(models):
        raise ValueError(
            f"latent_universality needs at least two models and one SAE per model; got"
            f" {len(models)} models and {len(saes)} SAEs."
        )
    units = [[_as_units(sae)] for sae in saes]
    return correlate(models[0], models[1:], tokens, units=units, **correlate_kwargs)


def _top_matches(result: Any, row: int) -> pd.DataFrame:
    """The top-k matches of reference unit ``row`` in ``result``'s (only) other unit set."""
    corr = result.top_corr[0, row].numpy()
    flat = result.top_index[0, row].numpy()
    ok = flat >= 0
    located = [result.other_units[0].locate(int(f)) for f in flat[ok]]
    return pd.DataFrame(
        {
            "rank": np.arange(int(ok.sum()), dtype=np.int64),
            "layer": np.array([loc[0] for loc in located], dtype=np.int64),
            "neuron": np.array([loc[1] for loc in located], dtype=np.int64),
            "corr": corr[ok],
        }
    )


@dataclass
class NeuronLatentCorrelation:
    """Neuron ↔ latent correlations inside one model, read from either side.

    Attributes:
        by_latent: a ``CorrelationResult`` whose rows are the SAE's latents and whose other units
            are the neurons: a latent's best matches (``top_corr``/``top_index``,
            ``max_corr``/``argmax``) are the neurons it is made of.
        by_neuron: rows are the neurons, other units the latents: a neuron's best matches are the
            features it carries.

    Both come from the same statistics, accumulated in one pass over the tokens.
    """

    by_latent: Any
    by_neuron: Any

    def neurons_of_latent(self, latent: int) -> pd.DataFrame:
        """The neurons most correlated with ``latent``: ``rank, layer, neuron, corr``."""
        return _top_matches(self.by_latent, int(latent))

    def latents_of_neuron(self, layer: int, neuron: int) -> pd.DataFrame:
        """The latents most correlated with neuron ``(layer, neuron)``: ``rank, layer, neuron,
        corr``, where ``neuron`` is the latent index and ``layer`` the SAE hook's block."""
        return _top_matches(self.by_neuron, self.by_neuron.units.flat(layer, neuron))


def neuron_latent_correlation(
    model: HookedModel,
    sae: SAELike,
    tokens: Any = None,
    *,
    neurons: Any = None,
    **correlate_kwargs: Any,
) -> NeuronLatentCorrelation:
    """Correlate an SAE's latents with the neurons of the model it reads.

    Which neurons is a feature made of, and which features does a (universal) neuron carry? Every
    latent is correlated with every neuron over ``tokens`` by
    :func:`~tl_universality.analyses.correlation.correlate` (``all_pairs=True``, so both
    directions, each
    with its own chance baseline, come from one set of statistics).

    Args:
        model: the model.
        sae: its SAE (or :class:`SAEUnits`), observed only.
        tokens: anything :func:`~tl_universality.data.tokens.as_token_source` accepts.
        neurons: the neuron units (any :data:`~tl_universality.units.activations.UnitsSpec`; default
            every layer's ``mlp.hook_post``).
        **correlate_kwargs: passed on to ``correlate`` (``top_k``, ``baseline``, ``n_draws``,
            ``keep_matrix``, ``max_tokens``, ``bos_token_id``, ...).

    Returns:
        A :class:`NeuronLatentCorrelation`.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               d_mlp=32, act_fn="relu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=32))
        >>> with torch.no_grad():  # latents = the neurons themselves
        ...     _ = sae.W_enc.copy_(torch.eye(32)), sae.W_dec.copy_(torch.eye(32))
        >>> toks = torch.randint(1, 20, (16, 8)); toks[:, 0] = 0
        >>> nl = neuron_latent_correlation(model, SAEUnits(sae, "blocks.0.mlp.hook_pre"), toks,
        ...                                bos_token_id=0, n_draws=1, progress=False)
        >>> top = nl.neurons_of_latent(3)
        >>> int(top.loc[0, "neuron"]), round(float(top.loc[0, "corr"]), 4)
        (3, 1.0)
    """
    from tl_universality.analyses.correlation import correlate

    if correlate_kwargs.pop("all_pairs", True) is not True:
        raise ValueError("neuron_latent_correlation always correlates both ways (all_pairs).")
    names = correlate_kwargs.pop("names", ("latents", "neurons"))
    # The engine takes one unit set per model, so the model is passed twice; it runs two forward
    # passes per batch (one per unit set), observing only.
    by_latent, by_neuron = correlate(
        model,
        [model],
        tokens,
        units=[[_as_units(sae)], neurons],
        all_pairs=True,
        names=names,
        **correlate_kwargs,
    )
    return NeuronLatentCorrelation(by_latent, by_neuron)


def _unit_rows(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    from tl_universality.analyses.vocab import safe_inverse

    return x * safe_inverse(x.norm(dim=1))[:, None]


def _decoder_space(sae: Any, model: HookedModel | None) -> Float[Tensor, "d_sae space"]:
    """Decoder rows in float64, read through ``model``'s unembedding when a model is given."""
    w_dec = sae.W_dec.detach().to("cpu", torch.float64)
    if model is None:
        return w_dec
    from tl_universality.analyses.vocab import unembed

    logits = w_dec @ unembed(model)
    # A shift of every logit by the same amount changes no prediction: compare the rest.
    return logits - logits.mean(dim=1, keepdim=True)


def decoder_similarity(
    sae_a: SAELike,
    sae_b: SAELike,
    matches: Any,
    *,
    models: tuple[HookedModel, HookedModel] | None = None,
    other: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Cosine of the decoder directions of matched latents, next to random pairs' (a baseline).

    A weight-based second view of a match found by correlating activations: if latent ``i`` of
    ``sae_a`` and latent ``j`` of ``sae_b`` are the same feature, their decoder rows ``W_dec[i]``
    and ``W_dec[j]`` should point the same way.

    Raw decoder rows are only comparable when both SAEs read the same space (two SAEs of one
    model). SAEs of *different* models (seeds) write into residual streams with unrelated bases;
    pass ``models=(model_a, model_b)`` to compare the directions' direct effects on the logits
    instead, ``W_dec[i] @ W_U`` centred over the vocabulary, which live in the shared vocabulary
    (meaningful for SAEs on the residual stream or an MLP/attention output).

    Args:
        sae_a: the SAE whose latents are the rows (the reference, ``models[0]``'s).
        sae_b: the SAE they are matched in.
        matches: a ``CorrelationResult`` over ``sae_a``'s latents (from
            :func:`latent_universality`; its ``argmax`` for model ``other`` gives the match), an
            ``[n, 2]`` array of ``(latent_a, latent_b)`` pairs, or a 1-D array giving the match
            of every latent of ``sae_a`` (-1 for none).
        models: ``(model_a, model_b)`` to compare through the unembeddings (see above).
        other: which other model of a ``CorrelationResult`` ``sae_b`` belongs to.
        seed: seed of the random pairs.

    Returns:
        One row per pair: ``latent_a, latent_b, dec_cos`` (cosine of the matched directions, NaN
        without a match), ``random_dec_cos`` (cosine of ``latent_a`` with a random latent of
        ``sae_b``: what an unrelated pair gives), and with a ``CorrelationResult`` also
        ``max_corr`` and ``excess_corr``.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> _ = torch.manual_seed(0)
        >>> a = StandardSAE(StandardSAEConfig(d_in=16, d_sae=8))
        >>> sims = decoder_similarity(a, a, torch.arange(8))  # every latent matched to itself
        >>> sims["dec_cos"].round(6).tolist() == [1.0] * 8
        True
    """
    sae_a, sae_b = _sae_of(sae_a), _sae_of(sae_b)
    model_a, model_b = models if models is not None else (None, None)
    dir_a, dir_b = _decoder_space(sae_a, model_a), _decoder_space(sae_b, model_b)
    if dir_a.shape[1] != dir_b.shape[1]:
        raise ValueError(
            f"The decoders live in spaces of different widths ({dir_a.shape[1]} and"
            f" {dir_b.shape[1]}); compare SAEs of the same site, or pass models= to compare"
            " through the unembeddings (models sharing a vocabulary)."
        )
    extra: dict[str, np.ndarray] = {}
    if hasattr(matches, "argmax") and hasattr(matches, "max_corr"):
        n_ref, n_other = matches.units.n_units, matches.other_units[other].n_units
        if (n_ref, n_other) != (dir_a.shape[0], dir_b.shape[0]):
            raise ValueError(
                f"The correlation result has {n_ref} reference units and {n_other} units in model"
                f" {other}, but the SAEs have {dir_a.shape[0]} and {dir_b.shape[0]} latents; pass"
                " the result of latent_universality for these SAEs."
            )
        pairs = np.stack([np.arange(n_ref), matches.argmax[other].numpy()], axis=1)
        extra = {
            "max_corr": matches.max_corr[other].numpy(),
            "excess_corr": matches.excess_correlation.numpy(),
        }
    else:
        arr = np.asarray(matches.numpy() if isinstance(matches, Tensor) else matches)
        if arr.ndim == 1:
            pairs = np.stack([np.arange(arr.shape[0]), arr], axis=1)
        elif arr.ndim == 2 and arr.shape[1] == 2:
            pairs = arr
        else:
            raise ValueError(
                f"matches must be a CorrelationResult, [n, 2] pairs or a 1-D match per latent,"
                f" not an array of shape {arr.shape}."
            )
    pairs = pairs.astype(np.int64)
    la, lb = pairs[:, 0], pairs[:, 1]
    if (
        (la < 0).any()
        or la.max(initial=-1) >= dir_a.shape[0]
        or lb.max(initial=-1) >= dir_b.shape[0]
    ):
        raise IndexError("A latent index is out of range of its SAE.")
    unit_a, unit_b = _unit_rows(dir_a), _unit_rows(dir_b)
    matched = lb >= 0
    cos = np.full(len(pairs), np.nan)
    idx_a, idx_b = torch.from_numpy(la[matched]), torch.from_numpy(lb[matched])
    cos[matched] = (unit_a[idx_a] * unit_b[idx_b]).sum(1).numpy()
    generator = torch.Generator().manual_seed(seed)
    random_b = torch.randint(0, dir_b.shape[0], (len(pairs),), generator=generator)
    random_cos = (unit_a[torch.from_numpy(la)] * unit_b[random_b]).sum(1).numpy()
    # Zero decoder rows have no direction: NaN rather than a misleading 0.
    zero_a = (dir_a.norm(dim=1) == 0).numpy()[la]
    cos[zero_a] = np.nan
    random_cos[zero_a] = np.nan
    table = pd.DataFrame(
        {"latent_a": la, "latent_b": lb, "dec_cos": cos, "random_dec_cos": random_cos}
    )
    for name, values in extra.items():
        table[name] = values
    return table


def sae_unit_stats(
    model: HookedModel,
    sae: SAELike,
    tokens: Any = None,
    *,
    correlation: Any = None,
    batch_size: int = 32,
    progress: bool = False,
    **stream_kwargs: Any,
) -> pd.DataFrame:
    """The unit table for SAE latents: one row per latent, the neuron table's columns where they
    mean something.

    Columns (latents are addressed like neurons: ``layer`` is the SAE hook's block, ``neuron``
    the latent index, so correlation results join on them):

    - weights: ``dec_norm`` = ‖W_dec[i]‖, ``enc_norm`` = ‖W_enc[:, i]‖, ``enc_bias`` = b_enc[i]
      (NaN for architectures without one), ``enc_dec_sim`` = cos(W_enc[:, i], W_dec[i]);
    - vocabulary composition of the decoder direction, c_v = cos(W_dec[i], W_U[:, v]):
      ``vocab_mean, vocab_var, vocab_skew, vocab_kurt`` (population moments, kurtosis not
      excess). Only defined for SAEs that read the residual stream or an MLP/attention output
      (the decoder then writes in the residual basis); NaN elsewhere. As for neurons, this
      assumes processed weights (``W_U`` with the final LayerNorm folded in);
    - with ``tokens``: ``post_mean, post_var, post_skew, post_kurt`` of the latent activation and
      ``act_freq``, the share of tokens on which it fires (> 0), exact streaming moments
      (:class:`~tl_universality.stats.moments.Moments`); ``table.attrs["n_tokens"]`` is the count;
    - with ``correlation`` (e.g. from :func:`latent_universality`): its columns joined on
      ``layer, neuron`` (``excess_corr, is_universal, max_corr, ...``).

    Args:
        model: the model the SAE reads.
        sae: the SAE (or :class:`SAEUnits`).
        tokens: token source for activation statistics (``None`` skips them).
        correlation: a correlation result over these latents to join.
        batch_size, progress: streaming settings.
        **stream_kwargs: passed to ``stream_activations`` (``max_tokens``, ``bos_token_id``, ...).

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
        ...                               act_fn="relu", seed=0)
        >>> model = HookedTransformer(cfg)
        >>> sae = SAEUnits(StandardSAE(StandardSAEConfig(d_in=16, d_sae=24)),
        ...                "blocks.0.hook_mlp_out")
        >>> toks = torch.randint(1, 20, (4, 8)); toks[:, 0] = 0
        >>> table = sae_unit_stats(model, sae, toks, bos_token_id=0)
        >>> table.shape, table.attrs["n_tokens"]
        ((24, 15), 28)
    """
    from tl_universality.analyses.neuron_stats import join_correlation
    from tl_universality.analyses.vocab import direction_vocab_moments, safe_inverse
    from tl_universality.stats.moments import Moments
    from tl_universality.units.activations import stream_activations

    units = _as_units(sae)
    raw = units.sae
    layer = int(units_layer(units))
    w_dec = raw.W_dec.detach().to("cpu", torch.float64)
    w_enc = raw.W_enc.detach().to("cpu", torch.float64)
    d_sae = w_dec.shape[0]
    dec_norm, enc_norm = w_dec.norm(dim=1), w_enc.norm(dim=0)
    b_enc = getattr(raw, "b_enc", None)
    table = pd.DataFrame(
        {
            "layer": np.full(d_sae, layer, dtype=np.int64),
            "neuron": np.arange(d_sae, dtype=np.int64),
            "dec_norm": dec_norm.numpy(),
            "enc_norm": enc_norm.numpy(),
            "enc_bias": (
                b_enc.detach().to("cpu", torch.float64).numpy()
                if isinstance(b_enc, Tensor) and b_enc.shape == (d_sae,)
                else np.full(d_sae, np.nan)
            ),
            "enc_dec_sim": (
                (w_enc.T * w_dec).sum(1) * safe_inverse(enc_norm) * safe_inverse(dec_norm)
            ).numpy(),
        }
    )
    vocab = {name: np.full(d_sae, np.nan) for name in _VOCAB_COLUMNS}
    if _RESIDUAL_SITE.search(units.hook_name) and w_dec.shape[1] == int(model.cfg.d_model):
        moments = direction_vocab_moments(model, w_dec)
        vocab = {name: moments[name].to_numpy() for name in _VOCAB_COLUMNS}
    for name, values in vocab.items():
        table[name] = values
    if tokens is not None:
        moments = Moments.zeros(d_sae)
        for batch in stream_activations(
            model, tokens, units=units, batch_size=batch_size, progress=progress, **stream_kwargs
        ):
            moments.update(batch.acts[0].to("cpu"))
        columns = {
            "post_mean": moments.mean,
            "post_var": moments.var,
            "post_skew": moments.skew,
            "post_kurt": moments.kurt,
            "act_freq": moments.freq,
        }
        for name, values in columns.items():
            table[name] = values.numpy()
        table.attrs["n_tokens"] = int(moments.n)
    table.attrs["hook_name"] = units.hook_name
    if correlation is not None:
        table = join_correlation(table, correlation)
    return table


_VOCAB_COLUMNS = ("vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")


def units_layer(units: SAEUnits) -> int:
    """The block an SAE's hook belongs to (its ``layer`` in unit tables; -1 outside blocks).

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> units_layer(SAEUnits(StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)),
        ...                      "blocks.3.hook_mlp_out"))
        3
    """
    match = re.match(r"^blocks\.(\d+)\.", units.hook_name)
    return int(match.group(1)) if match else -1
