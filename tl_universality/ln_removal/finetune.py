"""Remove every LayerNorm of a model by fine-tuning (Heimersheim 2024; Baroni et al. 2025).

:func:`remove_layernorm` fine-tunes a copy of the model on next-token prediction while the
LayerNorms go fake one path at a time (:mod:`~tl_universality.ln_removal.schedule`): each fake
path divides by a fixed σ, estimated as a moving average of the live std while the path was real
(:mod:`~tl_universality.ln_removal.sigma`), so the network can adapt to each removal before the
next. When every path is fake and the BOS/end-of-text special cases are dropped, the σ's are folded
into the weights (:mod:`~tl_universality.ln_removal.export`) and the result holds a plain
``normalization_type=None`` ``HookedTransformer``.

Recipe: AdamW (matrices decayed, biases and LayerNorm weights not), linear warm-up then cosine
learning rate, gradient clipping, an optional auxiliary loss that keeps the residual std at the
input of ``ln_final`` the same at every position. Checkpoints (atomic, checksummed) let a killed
run resume where it stopped; the resumed run is the uninterrupted run, step for step.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_universality.core.protocol import HookedModel, has_mlps, model_name
from tl_universality.data.seeds import mean_loss
from tl_universality.data.tokens import as_token_source, check_fits
from tl_universality.ln_removal.checkpoint import (
    fingerprint,
    load_checkpoint,
    load_optimizer_tensors,
    optimizer_tensors,
    save_checkpoint,
)
from tl_universality.ln_removal.config import LNRemovalConfig, check_fields
from tl_universality.ln_removal.export import export_layernorm, export_ln_free
from tl_universality.ln_removal.fake_ln import (
    fake_layernorms,
    fake_paths,
    get_path,
    install_fake_layernorms,
    set_tracking,
)
from tl_universality.ln_removal.result import LNRemovalResult
from tl_universality.ln_removal.schedule import RemovalEvent


@dataclass(frozen=True)
class LNRemovalProgress:
    """What a ``callback`` of :func:`remove_layernorm` receives after every step."""

    step: int
    steps: int
    loss: float
    aux_loss: float
    n_fake: int
    events: tuple[str, ...]


def std_aux_loss(resid: Float[Tensor, "batch pos d_model"], eps: float = 1e-5) -> Tensor:
    """Mean squared difference between each position's residual std and their (detached) mean.

    The std is pooled over channels as a LayerNorm computes it, ``sqrt(var + eps)``. Pushing
    every position's std towards the common mean makes a fixed σ a better stand-in for the live
    one; the mean is detached so the loss cannot shrink it by moving the target.

    Examples:
        >>> resid = torch.randn(2, 5, 8)
        >>> resid = resid / resid.std(-1, unbiased=False, keepdim=True)  # every std equal
        >>> float(std_aux_loss(resid)) < 1e-10
        True
    """
    std = (resid.var(-1, unbiased=False) + eps).sqrt()
    return ((std - std.mean().detach()) ** 2).mean()


def _batch_indices(config: LNRemovalConfig, step: int, n: int) -> Int[Tensor, " batch"]:
    """The training rows of ``step``: epochs of a permutation fixed by ``(seed, epoch)``."""
    start = step * config.batch_size
    rows = []
    epoch = start // n
    while len(rows) < config.batch_size:
        perm = torch.randperm(
            n, generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)
        )
        offset = start - epoch * n if not rows else 0
        rows.extend(perm[offset : offset + config.batch_size - len(rows)].tolist())
        epoch += 1
    return torch.tensor(rows, dtype=torch.long)


def _apply_event(model: Any, event: RemovalEvent) -> None:
    if event.kind in ("eot", "bos"):
        for module in fake_layernorms(model).values():
            module.drop_special(bos=event.kind == "bos", eot=event.kind == "eot")
        return
    module, path = get_path(model, event.path)  # type: ignore[arg-type]
    module.make_fake(path)


def _optimizer(model: Any, config: LNRemovalConfig) -> tuple[torch.optim.Optimizer, dict]:
    named = dict(model.named_parameters())
    decay = [p for p in named.values() if p.ndim >= 2]
    no_decay = [p for p in named.values() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=config.betas,
    )
    return optimizer, named


def _open_wandb(wandb: Any, config: LNRemovalConfig, name: str) -> Any:
    """A wandb run: ``wandb`` itself when it has ``log``, else a new run in project ``wandb``."""
    if wandb is None or hasattr(wandb, "log"):
        return wandb
    try:
        import wandb as wandb_lib

        return wandb_lib.init(
            project=str(wandb),
            config={"ln_removal": config.to_dict(), "model": name},
            mode=os.environ.get("WANDB_MODE") or "offline",
            reinit="create_new",
            settings=wandb_lib.Settings(silent=True, console="off"),
        )
    except Exception as err:  # logging must never cost the run
        warnings.warn(f"wandb could not start ({err}); continuing without it.", stacklevel=3)
        return None


def _resolve_config(
    model: HookedModel, config: LNRemovalConfig | None, settings: dict[str, Any]
) -> LNRemovalConfig:
    if config is not None and not isinstance(config, LNRemovalConfig):
        raise TypeError(
            f"config must be an LNRemovalConfig, got {type(config).__name__}. Fix: pass"
            " config=LNRemovalConfig(...) or the settings as keyword arguments."
        )
    check_fields(settings)
    config = (config or LNRemovalConfig()).replace(**settings)
    if config.eot_token_id is None and config.special_eot:
        eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
        if eos is not None:
            config = config.replace(eot_token_id=int(eos))
    return config


def _tokens(model: HookedModel, tokens: Any, what: str) -> Tensor:
    if isinstance(tokens, Tensor) and tokens.ndim == 2 and not tokens.is_floating_point():
        out = tokens.detach().cpu().long()  # rows used as they are (no BOS id needed)
        if out.shape[1] > model.cfg.n_ctx:
            raise ValueError(
                f"{what} has rows of {out.shape[1]} tokens but n_ctx={model.cfg.n_ctx}. Fix: pass"
                f" rows of at most {model.cfg.n_ctx} tokens, e.g. {what}[:, :{model.cfg.n_ctx}]."
            )
    else:
        tokenizer = getattr(model, "tokenizer", None)
        source = as_token_source(tokens, tokenizer, seq_len=model.cfg.n_ctx)
        check_fits(source, model)
        out = source.to_tensor()
    if out.shape[1] < 2:
        raise ValueError(f"{what} has sequences of {out.shape[1]} token; next-token loss needs 2.")
    return out


def remove_layernorm(
    model: HookedModel,
    tokens: Any,
    config: LNRemovalConfig | None = None,
    *,
    held_out: Any = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
    wandb: Any = None,
    callback: Callable[[LNRemovalProgress], None] | None = None,
    **settings: Any,
) -> LNRemovalResult:
    """Fine-tune a copy of ``model`` while its LayerNorms go fake, then fold them away.

    Args:
        model: A GPT-2-style ``HookedTransformer`` with ``normalization_type="LN"``; it is not
            changed.
        tokens: Training tokens: anything :func:`~tl_universality.data.tokens.as_token_source`
            takes (a ``[n, seq]`` tensor of BOS-first rows, a token source, a file...); text is
            cut to ``n_ctx``.
        config: The settings (:class:`~tl_universality.ln_removal.config.LNRemovalConfig`).
        held_out: Tokens for the held-out loss before and after (default: 5% of ``tokens``'
            rows, split off and not trained on).
        device: Where to fine-tune (default: the model's device).
        checkpoint_dir: Folder for checkpoints; a rerun with the same model, tokens and settings
            resumes from it.
        checkpoint_every: Steps between checkpoints (the last step always writes one).
        progress: Show a progress bar; False is quiet.
        wandb: None (no logging), a wandb run, or a project name (a new run, offline unless
            ``WANDB_MODE`` says otherwise); logs the losses, the learning rate and which paths
            are fake at every step.
        callback: Called with a :class:`LNRemovalProgress` after every step.
        **settings: Fields of ``LNRemovalConfig`` (e.g. ``steps=300``), overriding ``config``.

    Returns:
        An :class:`~tl_universality.ln_removal.result.LNRemovalResult`.

    Raises:
        CheckpointMismatchError: ``checkpoint_dir`` holds a run with other settings or data.
        ValueError: The model has no LayerNorms, or ``steps`` ends before the schedule does.

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> model = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8,
        ...     d_head=4, d_mlp=32, d_vocab=20, act_fn="gelu_new", seed=0))
        >>> toks = torch.randint(1, 20, (64, 8), generator=torch.Generator().manual_seed(0))
        >>> toks[:, 0] = 0
        >>> from tl_universality.ln_removal.schedule import RemovalSchedule
        >>> fast = RemovalSchedule(start=2, gap_ln2=1, gap_qk=1, gap_v=1, gap_ln_final=1,
        ...                        gap_eot=1)
        >>> result = remove_layernorm(model, toks[:56], held_out=toks[56:], steps=12,
        ...     lr_warmup=2, lr=1e-3, batch_size=8, schedule=fast, progress=False)
        >>> result.model.cfg.normalization_type is None, result.summary()["steps"]
        (True, 12)
    """
    config = _resolve_config(model, config, settings)
    mlps = has_mlps(model)
    config.check_fits(model.cfg.n_layers, has_mlp=mlps)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(
            f"checkpoint_every must be a positive number of steps, got {checkpoint_every!r}."
            " Fix: checkpoint_every=50."
        )
    train = _tokens(model, tokens, "tokens")
    if held_out is None:
        gen = torch.Generator().manual_seed(config.seed)
        perm = torch.randperm(train.shape[0], generator=gen)
        n_held = max(1, train.shape[0] // 20)
        if train.shape[0] - n_held < 1:
            raise ValueError(
                f"tokens has {train.shape[0]} sequence(s): too few to split off a held-out part."
                " Fix: pass more tokens, or held_out=... explicitly."
            )
        held, train = train[perm[:n_held]], train[perm[n_held:]]
    else:
        held = _tokens(model, held_out, "held_out")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    name = model_name(model)
    identity = fingerprint(config, model, train, held)

    fake = install_fake_layernorms(
        copy.deepcopy(model),
        eot_token_id=config.eot_token_id if config.special_eot else None,
        momentum=config.momentum,
    )
    fake.to(device, print_details=False)
    optimizer, named = _optimizer(fake, config)
    events = config.schedule.events(model.cfg.n_layers, has_mlp=mlps)
    by_step: dict[int, list[RemovalEvent]] = {}
    if not config.keep_layernorm:
        for event in events:
            by_step.setdefault(event.step, []).append(event)

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    rows: list[dict[str, Any]] = []
    start_step, seconds_before = 0, 0.0
    state = load_checkpoint(folder, identity) if folder is not None else None
    if state is not None:
        fake.load_state_dict({k: v.to(device) for k, v in state["model"].items()}, strict=True)
        load_optimizer_tensors(optimizer, named, state["optimizer"])
        rows = state["history"].to_dict("records")
        start_step = state["step"]
        seconds_before = float(state["meta"].get("seconds", 0.0))

    held_before = mean_loss(model, held.to(next(model.parameters()).device))
    aux_name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    captured: dict[str, Tensor] = {}

    def capture(resid: Tensor, hook: Any) -> None:
        captured["resid"] = resid

    fake.train()
    if start_step == 0:
        # σ starts from the live std of the first batch, before any path can go fake.
        set_tracking(fake, True)
        with torch.no_grad():
            fake(train[_batch_indices(config, 0, train.shape[0])].to(device))
    run = _open_wandb(wandb, config, name)
    clock = time.perf_counter()
    bar = tqdm(
        range(start_step, config.steps),
        initial=start_step,
        total=config.steps,
        desc=f"removing LayerNorm ({name})",
        disable=not progress,
    )
    try:
        for step in bar:
            for event in by_step.get(step, []):
                _apply_event(fake, event)
            lr = config.lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = train[_batch_indices(config, step, train.shape[0])].to(device)
            set_tracking(fake, True)
            hooks = [(aux_name, capture)] if config.aux_loss_weight > 0 else []
            with fake.hooks(fwd_hooks=hooks):
                loss = fake(batch, return_type="loss")
            set_tracking(fake, False)
            aux = std_aux_loss(captured.pop("resid")) if hooks else torch.zeros(())
            total = loss + config.aux_loss_weight * aux
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(fake.parameters(), config.grad_clip)
            optimizer.step()
            paths = fake_paths(fake)
            row = {
                "step": step,
                "loss": float(loss.detach()),
                "aux_loss": float(aux.detach()),
                "lr": lr,
                "grad_norm": float(grad_norm),
                "n_fake": sum(paths.values()),
                "events": ",".join(e.label for e in by_step.get(step, [])),
                "tokens": (step + 1) * config.batch_size * train.shape[1],
                "seconds": seconds_before + time.perf_counter() - clock,
            }
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", fake=row["n_fake"], refresh=False)
            if run is not None:
                try:
                    run.log(
                        {
                            **{k: row[k] for k in ("loss", "aux_loss", "lr", "n_fake")},
                            **{f"fake/{p}": int(f) for p, f in paths.items()},
                        },
                        step=step,
                    )
                except Exception as err:  # logging must never cost the run
                    warnings.warn(f"wandb logging failed ({err}); stopped logging.", stacklevel=2)
                    run = None
            done = step + 1
            if folder is not None and (done % checkpoint_every == 0 or done == config.steps):
                save_checkpoint(
                    folder,
                    identity=identity,
                    step=done,
                    model_state=fake.state_dict(),
                    optimizer_state=optimizer_tensors(
                        optimizer, {id(p): n for n, p in named.items()}
                    ),
                    history=pd.DataFrame(rows),
                    extra={"seconds": row["seconds"]},
                )
            if callback is not None:
                callback(
                    LNRemovalProgress(
                        step,
                        config.steps,
                        row["loss"],
                        row["aux_loss"],
                        row["n_fake"],
                        tuple(e.label for e in by_step.get(step, [])),
                    )
                )
    finally:
        bar.close()
        set_tracking(fake, False)
    seconds = seconds_before + time.perf_counter() - clock
    fake.eval()
    plain = export_layernorm(fake) if config.keep_layernorm else export_ln_free(fake)
    history = pd.DataFrame(rows)
    result = LNRemovalResult(
        model=plain,
        config=config,
        history=history,
        events=events,
        held_out_loss_before=held_before,
        held_out_loss_after=mean_loss(plain, held.to(device)),
        sigmas=_sigmas(fake),
        n_tokens=config.steps * config.batch_size * train.shape[1],
        seconds=seconds,
        model_name=name,
        fake_model=fake,
    )
    if run is not None:
        try:
            run.summary.update({f"ln_removal/{k}": v for k, v in result.summary().items()})
            if not hasattr(wandb, "log"):
                run.finish()
        except Exception as err:
            warnings.warn(f"wandb logging failed ({err}); the result is intact.", stacklevel=2)
    return result


def _sigmas(model: Any) -> dict[str, float]:
    out = {}
    for name, module in fake_layernorms(model).items():
        for i, path in enumerate(module.paths):
            out[f"{name}.{path}" if path else name] = float(module.sigma[i])
    return out


__all__ = ["LNRemovalConfig", "LNRemovalProgress", "remove_layernorm", "std_aux_loss"]
