"""Builders of small objects shared by the tests (small defaults, override what a test needs)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

#: The default test architecture: TransformerLens's own unit-test size.
SMALL_MODEL: dict[str, Any] = dict(
    n_layers=2,
    d_model=32,
    n_heads=4,
    d_head=8,
    d_mlp=64,
    d_vocab=64,
    n_ctx=32,
    act_fn="gelu_new",
    normalization_type="LN",
    seed=0,
)


def build_model(tokenizer: Any = None, **overrides: Any) -> HookedTransformer:
    """A small random ``HookedTransformer`` (2 layers, d_model 32, d_mlp 64, d_vocab 64, n_ctx 32).

    Any ``HookedTransformerConfig`` field can be overridden, e.g. ``build_model(n_ctx=8, seed=1)``;
    with a tokenizer, ``d_vocab`` defaults to its size.
    """
    cfg = dict(SMALL_MODEL)
    if tokenizer is not None:
        cfg["d_vocab"] = len(tokenizer)
    cfg.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)


def byte_level_tokenizer(tokens: list[str]) -> Any:
    """A real fast GPT-2-style tokenizer over exactly ``tokens`` (ids in order), no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def saved(tokenizer: Any, folder: Any) -> Any:
    """Save and reload from ``folder``: TransformerLens needs a tokenizer with a real path."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


#: Debian's Chromium (``make test`` installs it); tests of HTML pages skip without it.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (make test installs Debian's chromium)"
)


def chromium(page: Path, *args: str, budget_ms: int = 10000) -> subprocess.CompletedProcess:
    """Open ``page`` in headless Chromium, offline (no background networking), with ``args``
    (e.g. ``--dump-dom`` or ``--screenshot=...``); console messages go to stderr."""
    assert CHROMIUM is not None
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}", "--enable-logging=stderr", "--v=0",
        f"--virtual-time-budget={budget_ms}",
    ]  # fmt: skip
    return subprocess.run(
        [CHROMIUM, *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120
    )


def random_tokens(
    n: int, seq: int, seed: int = 0, *, vocab: int = 64, bos: int = 0
) -> torch.Tensor:
    """``[n, seq]`` random ids in ``[1, vocab)`` from a seeded generator, each row BOS-first."""
    toks = torch.randint(1, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))
    toks[:, 0] = bos
    return toks


def build_sae(d_in: int, d_sae: int, hook: str, seed: int = 0, enc_bias: float | None = None):
    """A random sae-lens ``StandardSAE`` reading ``hook``; ``enc_bias`` fills ``b_enc``."""
    import sae_lens

    torch.manual_seed(seed)
    cfg = sae_lens.StandardSAEConfig(
        d_in=d_in, d_sae=d_sae, metadata=sae_lens.saes.sae.SAEMetadata(hook_name=hook)
    )
    sae = sae_lens.StandardSAE(cfg)
    if enc_bias is not None:
        with torch.no_grad():
            sae.b_enc.fill_(enc_bias)
    return sae


def permuted_copy(model, seed: int = 0):
    """``model`` with the MLP neurons of every layer permuted (weights permuted consistently)."""
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    perms = []
    with torch.no_grad():
        for block in twin.blocks:
            perm = torch.randperm(block.mlp.W_in.shape[1], generator=g)
            block.mlp.W_in.copy_(block.mlp.W_in[:, perm])
            block.mlp.b_in.copy_(block.mlp.b_in[perm])
            block.mlp.W_out.copy_(block.mlp.W_out[perm, :])
            perms.append(perm)
    return twin, perms


def noisy_permuted_pair(noise: float = 0.5) -> tuple[Any, Any]:
    """A random model and a permuted copy whose ``W_in`` carries Gaussian noise (``noise`` x its
    std): clear best matches with a sampling error, for the early stop."""
    ref = build_model(seed=0)
    other, _ = permuted_copy(ref, seed=3)
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        for block in other.blocks:
            w = block.mlp.W_in
            w.add_(noise * w.std() * torch.randn(w.shape, generator=g))
    return ref, other
