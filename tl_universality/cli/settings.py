"""The settings of one command-line run: what it ran on, as one frozen object.

The same object is written to ``OUT/settings.json`` (under the command's name, so a study's
folder says how each of its results was made), is the wandb run's config, and names the run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SETTINGS = "settings.json"


def versions() -> dict[str, str]:
    """Versions of this package, TransformerLens, torch and Python (from installed metadata)."""
    from importlib import metadata

    from tl_universality import __version__

    out = {"tl_universality": __version__, "python": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("transformer-lens", "torch", "sae-lens"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class RunSettings:
    """One run: the command, its models (with weight fingerprints), tokens and options.

    Examples:
        >>> s = RunSettings("correlate", models=({"name": "a", "fingerprint": "00"},),
        ...                 tokens="held-out", family="tiny")
        >>> RunSettings.from_dict(s.to_dict()) == s, s.run_name()
        (True, 'correlate tiny (a)')
    """

    command: str
    models: tuple[dict[str, Any], ...] = ()
    specs: tuple[str, ...] = ()
    family: str | None = None
    tokens: str | None = None
    max_tokens: int | None = None
    baseline: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["models"] = [dict(m) for m in self.models]
        data["specs"] = list(self.specs)
        return json.loads(json.dumps(data, default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSettings:
        data = dict(data)
        data["models"] = tuple(dict(m) for m in data.get("models", ()))
        data["specs"] = tuple(data.get("specs", ()))
        return cls(**data)

    def run_name(self) -> str:
        """``<command> <family or first spec> (<model names>)``: the wandb run's name."""
        what = self.family or (self.specs[0] if self.specs else "")
        names = ", ".join(str(m.get("name")) for m in self.models[:3])
        more = ", ..." if len(self.models) > 3 else ""
        return " ".join(x for x in (self.command, what, f"({names}{more})" if names else "") if x)

    def write(self, out: Path) -> Path:
        """Record these settings in ``out/settings.json`` under the command's name."""
        path = Path(out) / SETTINGS
        recorded = read_settings(out)
        recorded[self.command] = self.to_dict()
        path.write_text(json.dumps(recorded, indent=2), encoding="utf-8")
        return path


def read_settings(out: Path) -> dict[str, Any]:
    """``out/settings.json`` (command name -> settings), or ``{}``."""
    path = Path(out) / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else {}
