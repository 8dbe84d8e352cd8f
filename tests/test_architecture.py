"""The package's architecture, checked: stages import only downwards, no module imports another's
private names, no file grows past 600 lines, and the old flat import paths still work.

The stages, bottom to top (``docs/architecture.md`` draws them)::

    core < data < units < stats < analyses < {ln_removal, flow, attention_decomposition}
         < outputs < {cli, demo, accessor, __init__, __main__, the old flat shims}

``stats`` is model-free and may import only ``core``. Peers on one level (the three systems) do not
import each other; the top level may import anything. Imports inside functions count as well.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "tl_universality"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 600

#: Stage name -> level; a module may import its own stage or a lower level.
LEVELS: dict[str, int] = {
    "core": 0,
    "data": 1,
    "units": 2,
    "stats": 3,
    "analyses": 4,
    "ln_removal": 5,
    "flow": 5,
    "attention_decomposition": 5,
    "outputs": 6,
}
TOP = 7  # cli, demo, accessor, the package itself, __main__ and the flat shims
#: Stages with a narrower rule than "anything below": stats is model-free.
ALLOWED_ONLY: dict[str, set[str]] = {"stats": {"core", "stats"}}
#: Flat modules at the package root that are code, not re-export shims.
NOT_SHIMS = {"__init__", "__main__", "accessor", "demo"}


def stage_of(module: str) -> str:
    """``tl_universality.units.hooks`` -> ``units``; the package and its flat modules -> ``top``."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LEVELS:
        return parts[1]
    return "top"


def level_of(stage: str) -> int:
    return LEVELS.get(stage, TOP)


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.message}"


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    """The dotted name of ``path`` under ``root`` and whether it is a package ``__init__``."""
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def all_modules(root: Path = ROOT) -> set[str]:
    return {module_name(p, root)[0] for p in root.rglob("*.py")}


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def check_source(
    source: str, module: str, is_package: bool = False, modules: set[str] | None = None
) -> list[Violation]:
    """Every architecture violation in ``source``, the text of module ``module``.

    ``modules`` is the set of the package's module names (to tell ``from pkg import submodule``
    from ``from module import name``); it defaults to the modules on disk.
    """
    modules = all_modules() if modules is None else modules
    tree = ast.parse(source)
    here = stage_of(module)
    found: list[Violation] = []
    module_aliases: dict[str, str] = {}  # local name -> module of the package it is bound to

    def check_target(target: str, line: int) -> None:
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
            return
        there = stage_of(target)
        if there == here:
            return
        allowed = ALLOWED_ONLY.get(here)
        if allowed is not None and there not in allowed:
            message = f"{here} may import only {sorted(allowed)}, not {target}"
        elif level_of(there) >= level_of(here) and level_of(here) != TOP:
            message = f"{here} imports {target}, a stage above it or beside it"
        else:
            return
        found.append(Violation(module, line, message))

    def check_private(target: str, name: str, line: int) -> None:
        if is_private(name) and target != module:
            found.append(Violation(module, line, f"imports the private name {name} of {target}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_target(alias.name, node.lineno)
                for part in alias.name.split(".")[1:]:
                    check_private(alias.name, part, node.lineno)
                if alias.name.startswith(PACKAGE):
                    local = alias.asname or alias.name.split(".")[0]
                    module_aliases[local] = alias.name if alias.asname else PACKAGE
        elif isinstance(node, ast.ImportFrom):
            target = absolute(node, module, is_package)
            if not target.startswith(PACKAGE):
                continue
            for part in target.split(".")[1:]:
                check_private(target, part, node.lineno)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:  # `from pkg import submodule`
                    check_target(sub, node.lineno)
                    module_aliases[alias.asname or alias.name] = sub
                else:
                    check_target(target, node.lineno)
                check_private(target, alias.name, node.lineno)
    # `from tl_universality.units import activations; activations._resolve(...)`
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
        ):
            check_private(module_aliases[node.value.id], node.attr, node.lineno)
    n_lines = len(source.splitlines())
    if n_lines > MAX_LINES:
        found.append(Violation(module, n_lines, f"{n_lines} lines, more than {MAX_LINES}"))
    return found


def check_package(root: Path = ROOT) -> list[Violation]:
    modules = all_modules(root)
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        name, is_package = module_name(path, root)
        found += check_source(path.read_text(), name, is_package, modules)
    return found


# --- The checker can fail -------------------------------------------------------------------

MODULES = {
    "tl_universality",
    "tl_universality.core",
    "tl_universality.core.errors",
    "tl_universality.stats",
    "tl_universality.stats.moments",
    "tl_universality.units",
    "tl_universality.units.activations",
    "tl_universality.analyses",
    "tl_universality.analyses.vocab",
    "tl_universality.flow",
    "tl_universality.flow.graph",
    "tl_universality.ln_removal",
    "tl_universality.ln_removal.fake_ln",
}


def check(source: str, module: str, is_package: bool = False) -> list[str]:
    return [v.message for v in check_source(source, module, is_package, MODULES)]


def test_a_clean_module_passes():
    source = (
        "from tl_universality.core.errors import HookError\n"
        "from . import moments\n"
        "import numpy as np\n"
        "def f():\n"
        "    from tl_universality.core import errors\n"
        "    return errors.HookError, moments.__name__\n"
    )
    assert check(source, "tl_universality.stats.cross") == []
    assert check("from tl_universality.analyses import vocab\n", "tl_universality.flow.x") == []
    assert check("import tl_universality.outputs\n", "tl_universality.cli.commands") == []


def test_an_upward_import_fails():
    assert check("from tl_universality.analyses.vocab import f\n", "tl_universality.units.x")
    assert check("from ..analyses import vocab\n", "tl_universality.units.x")
    assert check("from ...analyses import vocab\n", "tl_universality.units.sub.x")
    assert check("import tl_universality.outputs.plots\n", "tl_universality.core.x")
    assert check("from tl_universality import correlate\n", "tl_universality.analyses.x")


def test_an_import_inside_a_function_counts():
    source = "def f():\n    from tl_universality.outputs import plots\n    return plots\n"
    (message,) = check(source, "tl_universality.analyses.vocab")
    assert "tl_universality.outputs" in message


def test_stats_may_import_only_core():
    (message,) = check("from tl_universality.data import tokens\n", "tl_universality.stats.x")
    assert "stats may import only" in message
    assert check("from tl_universality.units import activations\n", "tl_universality.stats.x")


def test_peers_do_not_import_each_other():
    assert check("from tl_universality.ln_removal import fake_ln\n", "tl_universality.flow.x")


def test_a_private_import_fails():
    source = "from tl_universality.units.activations import _resolve\n"
    (message,) = check(source, "tl_universality.analyses.x")
    assert "_resolve" in message
    assert check("from .activations import _resolve\n", "tl_universality.units.hooks")
    assert check("from tl_universality import _cache\n", "tl_universality.cli")
    source = "from tl_universality.units import activations\nactivations._resolve(1)\n"
    assert check(source, "tl_universality.analyses.x")
    # A module's own private names and dunders are fine.
    assert check("def _f(): ...\n_f()\n", "tl_universality.units.x") == []
    assert check("from tl_universality.core import __name__ as n\n", "tl_universality.data") == []


def test_a_long_file_fails():
    (message,) = check("x = 1\n" * (MAX_LINES + 1), "tl_universality.core.x")
    assert f"{MAX_LINES + 1} lines" in message
    assert check("x = 1\n" * MAX_LINES, "tl_universality.core.x") == []


def test_a_planted_violation_in_a_temporary_package_is_found(tmp_path):
    root = tmp_path / PACKAGE
    (root / "units").mkdir(parents=True)
    (root / "outputs").mkdir()
    for init in (root, root / "units", root / "outputs"):
        (init / "__init__.py").write_text("")
    (root / "outputs" / "plots.py").write_text("def _draw(): ...\n")
    (root / "units" / "hooks.py").write_text(
        "def f():\n    from tl_universality.outputs.plots import _draw\n    return _draw\n"
    )
    found = [str(v) for v in check_package(root)]
    assert len(found) == 2
    assert all(v.startswith("tl_universality.units.hooks:2:") for v in found)


# --- The package itself ---------------------------------------------------------------------

#: Violations in packages whose owners are changing them now; each is listed in the issue note.
#: Remove an entry when its package is fixed (the test fails on entries that no longer apply).
KNOWN: set[str] = set()


def test_the_package_follows_its_architecture():
    found = {str(v) for v in check_package()}
    new = sorted(found - KNOWN)
    assert not new, "architecture violations:\n" + "\n".join(new)
    assert not KNOWN - found, f"fixed, remove from KNOWN: {sorted(KNOWN - found)}"


# --- Old import paths -----------------------------------------------------------------------

SHIMS = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in NOT_SHIMS)


def test_there_are_shims():
    assert {"correlation", "activations", "errors", "_cache"} <= set(SHIMS)


@pytest.mark.parametrize("name", SHIMS)
def test_old_import_path_reexports_the_new_module(name):
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    body = [n for n in tree.body if not isinstance(n, ast.Expr)]  # drop the docstring
    sources = [n for n in body if isinstance(n, ast.ImportFrom)]
    rest = [n for n in body if not isinstance(n, ast.ImportFrom)]
    # A shim holds only imports and __all__: no code that could drift from the new module.
    assert all(
        isinstance(n, ast.Assign) and [t.id for t in n.targets] == ["__all__"] for n in rest
    ), f"{name}.py holds more than re-exports"
    assert sources, f"{name}.py re-exports nothing"
    shim = importlib.import_module(f"{PACKAGE}.{name}")
    exported = set()
    for node in sources:
        new = importlib.import_module(node.module)
        assert stage_of(node.module) != "top", f"{name}.py re-exports from another flat module"
        for alias in node.names:
            assert getattr(shim, alias.asname or alias.name) is getattr(new, alias.name)
            exported.add(alias.asname or alias.name)
    assert set(shim.__all__) == exported


# --- The docs show the tree -------------------------------------------------------------------


def test_readme_and_architecture_page_name_every_stage_folder():
    docs = ROOT.parent
    folders = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    readme = (docs / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    page = (docs / "docs" / "architecture.md").read_text()
    assert set(folders) - {"cli"} <= set(LEVELS), "a new stage folder: add it to LEVELS"
    for folder in folders:
        assert f"`{folder}/`" in layout, f"README.md's layout table lacks {folder}/"
        assert f"{folder}/" in page, f"docs/architecture.md lacks {folder}/"
