"""Helpers of the screened benchmark (``benchmarks/correlation.py`` section 4).

* :func:`related_family`: a model and k - 1 copies of it with every layer's neurons permuted and
  every weight perturbed by noise, so that units recur with a spread of correlations (random
  independent seeds have none above chance, which leaves the universal set and the
  certificates untested).
* :func:`replay_activations`: replaces ``stream_activations`` by a replay of activations
  computed once and held in memory, so that a pipeline's time is its correlation work alone.
  Every pipeline reads the same replayed batches, each a view of the cached rows (no copy).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator

import torch


@torch.no_grad()
def related_family(base, k: int, noise: float, seed: int = 0) -> list:
    """``[base, copy_1, ..., copy_{k-1}]``: each copy's MLP neurons permuted per layer (which
    changes nothing by itself) and every weight plus Gaussian noise of ``noise`` times that
    weight's standard deviation."""
    g = torch.Generator().manual_seed(seed)
    out = [base]
    for _ in range(1, k):
        m = copy.deepcopy(base)
        for block in m.blocks:
            mlp = block.mlp
            perm = torch.randperm(mlp.W_in.shape[1], generator=g)
            mlp.W_in.copy_(mlp.W_in[:, perm])
            mlp.b_in.copy_(mlp.b_in[perm])
            mlp.W_out.copy_(mlp.W_out[perm])
        for p in m.parameters():
            if p.numel() > 1 and float(p.std()) > 0:
                p.add_(torch.randn(p.shape, generator=g).to(p) * (noise * float(p.std())))
        out.append(m)
    return out


def replay_activations(models, tokens, batch_size: int, device: str, bos: int):
    """Compute every model's activations on ``tokens`` once, then make ``stream_activations``
    (in the library and in the modules that imported it) replay them for any subset of
    ``models`` and any run of consecutive sequences of ``tokens`` (found by their contents).
    Returns a function that puts the real one back."""
    from tl_universality.data.tokens import resolve_tokens
    from tl_universality.units import activations as acts_module

    real = acts_module.stream_activations
    parts: dict[int, list[torch.Tensor]] = {id(m): [] for m in models}
    starts, where = [0], {}  # row offset of every sequence; sequence contents -> index
    for batch in real(models, tokens, batch_size=batch_size, device=device, bos_token_id=bos,
                      progress=False):  # fmt: skip
        for m, a in zip(models, batch.acts, strict=True):
            parts[id(m)].append(a)
        for seq, kept in zip(batch.tokens.cpu(), batch.keep.sum(1).tolist(), strict=True):
            where[seq.numpy().tobytes()] = len(where)
            starts.append(starts[-1] + kept)
    rows = {key: torch.cat(chunks) for key, chunks in parts.items()}

    def replay(models_, tokens_, *, batch_size: int = 32, start_sequence: int = 0,
               progress: bool = False, **_) -> Iterator:  # fmt: skip
        models_ = list(models_) if isinstance(models_, list | tuple) else [models_]
        source = resolve_tokens(tokens_, models_, bos_token_id=bos)
        excluded = torch.tensor(sorted(acts_module.excluded_token_ids(source, None, None)))
        seen = 0
        for ids in source.batches(batch_size):
            first = seen
            seen += ids.shape[0]
            if seen <= start_sequence:
                continue
            if first < start_sequence:
                ids, first = ids[start_sequence - first :], start_sequence
            index = [where[seq.numpy().tobytes()] for seq in ids]
            if index != list(range(index[0], index[0] + len(index))):
                raise ValueError("replay_activations serves runs of consecutive sequences only")
            lo, hi = starts[index[0]], starts[index[-1] + 1]
            out = [rows[id(m)][lo:hi] for m in models_]  # views: the cached rows, not copies
            keep = ~torch.isin(ids, excluded.to(ids.dtype))  # as the real stream keeps them
            yield acts_module.ActivationBatch(out, ids.to(device), keep.to(device), first)

    patched = [acts_module] + [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("tl_universality")
        and getattr(module, "stream_activations", None) is real
    ]
    for module in patched:
        module.stream_activations = replay

    def restore() -> None:
        for module in patched:
            module.stream_activations = real

    return restore
