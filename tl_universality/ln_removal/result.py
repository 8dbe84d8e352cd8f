"""The result of a LayerNorm-removal run: the LN-free model, its loss history and held-out losses.

:class:`LNRemovalResult` follows the one result protocol (:class:`~tl_universality.core.result
.Result`): ``save``/``load`` (the model as safetensors plus its config as JSON, the tokenizer's
files, the history as a table, all checksummed), ``to_dataframe()`` (one row per step),
``summary()`` (steps, tokens, time, held-out loss before and after) and ``plot()`` (the loss curve
with the removal events marked).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from tl_universality.core.result import Result, new_axes
from tl_universality.core.saving import FolderWriter, SavedFolder
from tl_universality.ln_removal.config import LNRemovalConfig
from tl_universality.ln_removal.schedule import KINDS, RemovalEvent

_TOKENIZER_PREFIX = "tokenizer-"


def model_config_json(cfg: Any) -> dict[str, Any]:
    """A ``HookedTransformerConfig`` as JSON-safe fields (dtype and device as strings)."""
    data = dict(cfg.to_dict())
    data["dtype"] = str(data["dtype"]).removeprefix("torch.")
    data["device"] = None if data.get("device") is None else str(data["device"])
    return json.loads(json.dumps(data, default=str))


def model_from_json(
    cfg_json: dict[str, Any], state: dict[str, Any], tokenizer: Any = None, device: str = "cpu"
) -> Any:
    """A ``HookedTransformer`` from :func:`model_config_json` output and a state dict."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    data = dict(cfg_json)
    data["dtype"] = getattr(torch, data["dtype"])
    data["device"] = device
    model = HookedTransformer(HookedTransformerConfig(**data), tokenizer=tokenizer)
    model.load_state_dict(state, strict=True)
    return model.eval()


@dataclass
class LNRemovalResult(Result):
    """What :func:`~tl_universality.ln_removal.finetune.remove_layernorm` returns.

    Attributes:
        model: The LN-free ``HookedTransformer`` (``normalization_type=None``); with
            ``keep_layernorm`` the control, fine-tuned with its LayerNorms.
        config: The run's settings.
        history: One row per step: ``step, loss, aux_loss, lr, grad_norm, n_fake, events,
            tokens, seconds``.
        events: The removal events of the schedule.
        held_out_loss_before: Mean next-token cross-entropy (nats) of the starting model on the
            held-out tokens.
        held_out_loss_after: The same for :attr:`model`.
        sigmas: The fixed σ of every LayerNorm path, as folded into the weights.
        n_tokens: Training tokens seen.
        seconds: Wall-clock time of the fine-tuning (this process, resumes included).
        model_name: The starting model's name.
        fake_model: The fine-tuned model with its fake LayerNorms (not saved).
    """

    FORMAT: ClassVar[str] = "tl_universality.ln_removal"
    VERSION: ClassVar[int] = 1

    model: Any
    config: LNRemovalConfig
    history: pd.DataFrame
    events: list[RemovalEvent]
    held_out_loss_before: float
    held_out_loss_after: float
    sigmas: dict[str, float] = field(default_factory=dict)
    n_tokens: int = 0
    seconds: float = 0.0
    model_name: str = ""
    fake_model: Any = field(default=None, repr=False)

    # -- the protocol ------------------------------------------------------------------------------

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        out.write_tensors("model", self.model.state_dict())
        out.write_json("model_config", model_config_json(self.model.cfg))
        out.write_table("history", self.history)
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            with tempfile.TemporaryDirectory() as tmp:
                for path in tokenizer.save_pretrained(tmp):
                    path = Path(path)
                    if path.is_file():
                        out.write_bytes(_TOKENIZER_PREFIX + path.name, path.read_bytes())
        meta.update(
            config=self.config.to_dict(),
            events=[list(e) for e in self.events],
            held_out_loss_before=self.held_out_loss_before,
            held_out_loss_after=self.held_out_loss_after,
            sigmas=self.sigmas,
            n_tokens=self.n_tokens,
            seconds=self.seconds,
            model_name=self.model_name,
        )

    @classmethod
    def _read(cls, saved: SavedFolder) -> LNRemovalResult:
        meta = saved.meta
        names = [n for n in saved.manifest["files"] if n.startswith(_TOKENIZER_PREFIX)]
        # TransformerLens reloads a tokenizer from its folder: keep the folder while building.
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = None
            if names:
                from transformers import AutoTokenizer

                for name in names:
                    shutil.copyfile(saved.path(name), Path(tmp) / name[len(_TOKENIZER_PREFIX) :])
                tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
            model = model_from_json(saved.json("model_config"), saved.tensors("model"), tokenizer)
        return cls(
            model=model,
            config=LNRemovalConfig.from_dict(meta["config"]),
            history=saved.table("history"),
            events=[
                RemovalEvent(int(s), str(k), None if ly is None else int(ly))
                for s, k, ly in meta["events"]
            ],
            held_out_loss_before=float(meta["held_out_loss_before"]),
            held_out_loss_after=float(meta["held_out_loss_after"]),
            sigmas={k: float(v) for k, v in meta["sigmas"].items()},
            n_tokens=int(meta["n_tokens"]),
            seconds=float(meta["seconds"]),
            model_name=str(meta["model_name"]),
        )

    @classmethod
    def _load_fix(cls) -> str:
        return "run remove_layernorm(...) again and save its result, or point to the right folder."

    def to_dataframe(self) -> pd.DataFrame:
        """The loss history, one row per step."""
        return self.history.copy()

    def summary(self) -> dict[str, Any]:
        """Steps, tokens, seconds, held-out loss before/after and their gap (after − before)."""
        final = float(self.history["loss"].iloc[-10:].mean()) if len(self.history) else None
        return {
            "model": self.model_name,
            "ln_free": getattr(self.model.cfg, "normalization_type", "LN") is None,
            "steps": int(self.config.steps),
            "tokens": int(self.n_tokens),
            "seconds": float(self.seconds),
            "held_out_loss_before": float(self.held_out_loss_before),
            "held_out_loss_after": float(self.held_out_loss_after),
            "held_out_loss_gap": float(self.held_out_loss_after - self.held_out_loss_before),
            "final_train_loss": final,
            "n_events": len(self.events),
        }

    def plot(self, ax: Any = None) -> Any:
        """The training loss against the step, with each removal event as a vertical line."""
        fig, ax = new_axes(ax)
        ax.plot(self.history["step"], self.history["loss"], color="black", lw=1, label="loss")
        colours = dict(zip(KINDS, ("C0", "C1", "C2", "C3", "C4", "C5"), strict=True))
        seen = set()
        if not self.config.keep_layernorm:
            for event in self.events:
                label = event.kind if event.kind not in seen else None
                seen.add(event.kind)
                ax.axvline(event.step, color=colours[event.kind], lw=0.8, alpha=0.7, label=label)
        ax.axhline(self.held_out_loss_before, color="grey", ls="--", lw=1, label="held-out before")
        ax.axhline(self.held_out_loss_after, color="grey", ls=":", lw=1, label="held-out after")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_title(f"LayerNorm removal{f' ({self.model_name})' if self.model_name else ''}")
        ax.legend(fontsize="small")
        return fig

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"LNRemovalResult({s['model']}: {s['steps']} steps, {s['tokens']} tokens, held-out"
            f" loss {s['held_out_loss_before']:.4f} -> {s['held_out_loss_after']:.4f})"
        )


__all__ = ["LNRemovalResult", "model_config_json", "model_from_json"]
