"""Training one seed model: the learning-rate schedule, the batch order and the loop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tl_universality.data.seeds.config import SeedFamilyConfig

# -- training ------------------------------------------------------------------------------------


def lr_lambda(config: SeedFamilyConfig) -> Callable[[int], float]:
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
        >>> from tl_universality.data.seeds import PRESETS
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
        >>> from tl_universality.data.seeds import PRESETS
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


def train_one(
    config: SeedFamilyConfig,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    train: Int[Tensor, "n seq"],
    held: Int[Tensor, "m seq"],
    order: Int[Tensor, "steps batch"],
    *,
    progress: bool,
    device: str,
    checkpoints: Collection[int] = (),
    on_checkpoint: Callable[[int, Any], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the model of one seed; returns it and its train.json record.

    ``on_checkpoint(step, model)`` is called after ``step`` optimiser steps for every step in
    ``checkpoints`` below ``config.steps`` (0 = the initialisation); it must not change the model.
    Nothing in it draws random numbers, so the run is the same with or without checkpoints.
    """
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
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(order, desc=f"seed {seed}", disable=not progress, leave=False)
    loss_value = float("nan")
    wanted = {int(c) for c in checkpoints if 0 <= int(c) < config.steps}
    if on_checkpoint is not None and 0 in wanted:
        on_checkpoint(0, model)
    for step, step_indices in enumerate(bar, start=1):
        batch = train[step_indices].to(device)
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        if on_checkpoint is not None and step in wanted:
            on_checkpoint(step, model)
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
