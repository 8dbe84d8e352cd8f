"""What the command line loads, each checked first: models, seed-family presets, the device,
token sources and input folders. A wrong value is a :class:`UsageError` naming the argument, the
value, the closest valid names and the fix, before any long computation starts."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_universality.cli.errors import UsageError, unknown_choice

#: Token files the CLI reads; other ``--tokens`` strings are dataset names.
TOKEN_FILES = (".txt", ".jsonl", ".parquet")


def check_family(family: str | None, flag: str = "--family") -> str | None:
    """``family`` if it is a seed-family preset, else a UsageError with the closest preset."""
    from tl_universality.data.seeds import PRESETS

    if family is not None and family not in PRESETS:
        raise unknown_choice(flag, family, PRESETS, f"use one of {sorted(PRESETS)}.")
    return family


def check_device(device: str) -> str:
    """``device`` if torch can use it here; else a UsageError saying why and what to use."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as err:
        raise UsageError(
            f"argument --device: {device!r} is not a torch device ({err}). Fix: use cpu, cuda,"
            " cuda:1 or mps."
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise UsageError(
            f"argument --device: {device!r} is not available ({why}; torch {torch.__version__})."
            " Fix: --device cpu, or install a CUDA build of torch."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"argument --device: {device!r} is not available here. Fix: --device cpu.")
    return device


def existing_dir(path: str | Path, flag: str, fix: str) -> Path:
    """``path`` as a Path if it is a folder; else a UsageError naming ``flag`` and ``fix``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UsageError(f"argument {flag}: {str(path)!r} {what}. Fix: {fix}")
    return folder


def _model_names() -> list[str]:
    from transformer_lens import loading_from_pretrained as loading

    aliases = [a for names in loading.MODEL_ALIASES.values() for a in names]
    return [*loading.OFFICIAL_MODEL_NAMES, *aliases]


def _pretrained(spec: str, device: str, checkpoint: int | None) -> Any:
    names = _model_names()
    if spec.lower() not in {n.lower() for n in names}:
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
            raise UsageError(
                f"argument MODELS: {spec!r} does not exist. Fix: give a saved model folder"
                " (tl-universality train-seeds prints one) or a TransformerLens model name."
            )
        raise unknown_choice(
            "MODELS",
            spec,
            names,
            f"give an existing model folder (there is no folder {spec!r}), or a name from"
            " transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES.",
        )
    from transformer_lens import HookedTransformer

    kwargs: dict[str, Any] = {"device": device}
    if checkpoint is not None:
        kwargs["checkpoint_value"] = checkpoint
    return HookedTransformer.from_pretrained(spec, **kwargs)


def load_models(
    specs: Sequence[str],
    *,
    family: str | None = None,
    device: str = "cpu",
    checkpoint: int | None = None,
    progress: bool = True,
) -> list[Any]:
    """Load models named on the command line.

    Each spec is a local folder (a saved seed model, or a seed-family folder holding several) or a
    TransformerLens model name such as ``stanford-gpt2-small-a`` (needs the internet;
    ``checkpoint`` selects a training checkpoint by value). ``family`` loads (training on first
    use) a whole offline seed family by preset name instead.

    Raises:
        UsageError: an unknown preset or model name (with the closest ones), a missing folder,
            an unusable device, or no model at all.
    """
    from tl_universality.data import seeds

    check_device(device)
    check_family(family)
    models: list[Any] = []
    if family is not None:
        models.extend(seeds.train_seed_family(family, progress=progress, device=device).models)
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir() and (path / "family.json").is_file():
            models.extend(seeds.load_family_folder(path, device=device).models)
        elif path.is_dir():
            models.append(seeds.load_seed_model(path, device=device))
        elif path.exists():
            raise UsageError(
                f"argument MODELS: {spec!r} is a file, not a model folder. Fix: give the folder"
                " that holds it."
            )
        else:
            models.append(_pretrained(spec, device, checkpoint))
    if not models:
        raise UsageError(
            "argument MODELS: no model given. Fix: name model folders or TransformerLens models,"
            " or pass --family tiny (or demo)."
        )
    return models


def resolve_cli_tokens(args: argparse.Namespace, models: Sequence[Any]) -> Any:
    """The token source of ``--tokens``: ``held-out`` (the family's, the default with
    ``--family``), ``default`` (the embedded corpus, the default otherwise), a token file (which
    must exist) or a dataset name. ``--max-tokens`` is left to the analysis (a checkpointed
    correlation must see it to grow a run)."""
    from tl_universality.data.tokens import resolve_tokens

    tokens = args.tokens
    family = getattr(args, "family", None)
    if tokens in (None, "held-out") and family:
        from tl_universality.data import seeds

        source = seeds.train_seed_family(family, progress=False).held_out_tokens()
        return resolve_tokens(source, models)
    if tokens == "held-out":
        raise UsageError(
            "argument --tokens: 'held-out' is the held-out split of a seed family, and no"
            " --family is given. Fix: add --family tiny (or demo), or use --tokens default."
        )
    if tokens is not None and Path(tokens).suffix.lower() in TOKEN_FILES:
        if not Path(tokens).expanduser().is_file():
            raise UsageError(
                f"argument --tokens: no such file {tokens!r}. Fix: give an existing"
                f" {'/'.join(TOKEN_FILES)} file, 'default' for the embedded corpus, or a dataset"
                " name."
            )
        tokens = str(Path(tokens).expanduser())
    return resolve_tokens(None if tokens in (None, "default") else tokens, models)


def fingerprint(model: Any) -> str:
    """A checksum of the model's weights, as the correlation checkpoint computes it. Taken before
    weights are processed (``process_weights_`` changes them, not the activations)."""
    from tl_universality.analyses.correlation.fingerprint import weights_digest

    return weights_digest(model)
