"""Where tl_universality caches what it builds (corpus, tokenizer, seed models, SAEs).

The folder is ``$TL_UNIVERSALITY_CACHE`` when set, else ``$XDG_CACHE_HOME/tl_universality``,
else ``~/.cache/tl_universality``. Entries are written through
:mod:`tl_universality.core.saving`, so a crash never leaves a half-written entry under the final
name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_ENV = "TL_UNIVERSALITY_CACHE"


def cache_root() -> Path:
    """The root cache folder (created on first use).

    Examples:
        >>> cache_root().name in {"tl_universality"} or "TL_UNIVERSALITY_CACHE" in os.environ
        True
    """
    if env := os.environ.get(CACHE_ENV):
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base).expanduser() / "tl_universality"
    root.mkdir(parents=True, exist_ok=True)
    return root


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of a JSON-serialisable object, stable across runs and machines.

    Examples:
        >>> stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1})
        True
    """
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
