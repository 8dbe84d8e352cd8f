"""The package version, in core so that every stage can record it in what it saves.

Keep it equal to ``version`` in ``pyproject.toml``.
"""

__version__ = "0.1.0"
