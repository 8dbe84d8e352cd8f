"""The one result protocol: every result type saves, loads, tabulates, summarises and plots alike.

A result is a dataclass that subclasses :class:`Result` and says how its data go into a saved
folder (:meth:`Result._write`) and come back (:meth:`Result._read`). The base class does the rest:
``save`` writes atomically through :func:`~tl_universality.core.saving.save_folder` (a folder
tagged with ``FORMAT`` and ``VERSION``, every file checksummed), ``load`` verifies the tag and the
checksums before reading. ``summary()`` is the one place a result's headline numbers are
computed; the CLI, the report and wandb read them from there, and tabulate with
``to_dataframe()``, without knowing the type.

Examples:
    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> import pandas as pd
    >>> @dataclass
    ... class Counts(Result):
    ...     FORMAT = "doc.counts"
    ...     values: list
    ...     def _write(self, out, meta):
    ...         meta["values"] = self.values
    ...     @classmethod
    ...     def _read(cls, saved):
    ...         return cls(values=saved.meta["values"])
    ...     def to_dataframe(self):
    ...         return pd.DataFrame({"value": self.values})
    ...     def summary(self):
    ...         return {"n": len(self.values)}
    >>> path = Counts([1, 2]).save(Path(tempfile.mkdtemp()) / "counts")
    >>> Counts.load(path).summary()
    {'n': 2}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from tl_universality.core.saving import FolderWriter, SavedFolder, open_saved, save_folder


class Result:
    """Base of every result: ``save``/``load``/``to_dataframe``/``summary``/``plot``."""

    FORMAT: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    # -- what a subclass provides ----------------------------------------------------------------

    def _write(self, out: FolderWriter, meta: dict[str, Any]) -> None:
        """Write the result's files with ``out`` and its small fields into ``meta``."""
        raise NotImplementedError

    @classmethod
    def _read(cls, saved: SavedFolder) -> Result:
        """Rebuild the result from a verified folder; raise ``ValueError`` on inconsistency."""
        raise NotImplementedError

    @classmethod
    def _load_fix(cls) -> str:
        return f"compute the {cls.__name__} again and save it, or point to the right folder."

    def to_dataframe(self) -> Any:
        """The result as a pandas DataFrame (one row per unit, node, edge or step)."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """The headline numbers (JSON scalars): the one place they are computed."""
        raise NotImplementedError

    def plot(self, ax: Any = None) -> Any:
        """The result's standard view as a matplotlib Figure (drawn on ``ax`` when given)."""
        raise NotImplementedError(f"{type(self).__name__} has no plot.")

    # -- the protocol ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to the folder ``path`` atomically (the old folder or the new one
        survives a kill at any moment) with a checksummed manifest; returns the path."""
        if not self.FORMAT:
            raise TypeError(f"{type(self).__name__} sets no FORMAT, so it cannot be saved.")
        path = Path(path)
        meta: dict[str, Any] = {}
        with save_folder(path, self.FORMAT, self.VERSION, meta) as out:
            self._write(out, meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """Read a folder written by :meth:`save`, verifying its format tag and checksums.

        Raises:
            CorruptCacheError: The folder is missing, of another format, damaged or inconsistent;
                the message names the file and the fix.
        """
        with open_saved(path, cls.FORMAT, cls.VERSION, what=cls.__name__, fix=cls._load_fix()) as s:
            return cls._read(s)


def new_axes(ax: Any = None, **subplots: Any) -> tuple[Any, Any]:
    """``(figure, axes)``: the figure of ``ax`` when given, else a new Figure (no pyplot state)."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=subplots.pop("figsize", (6.4, 4.0)), layout="constrained")
    return fig, fig.subplots(**subplots)
