"""The ``tl-universality`` command line (also ``python -m tl_universality``).

Each subcommand is one step of the study (``train-seeds``, ``correlate``, ``stats``,
``families``, ``roles``, ``report``, ``trace``, ``flow``) or all of them (``demo``). Results are
saved first and logged to wandb second, so a wandb failure never loses them. Every error is one
line on stderr naming the problem and the fix (exit code 2 for usage, 1 for a failure;
``--debug`` shows the traceback). Parsing imports nothing heavy: ``--help`` answers at once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from tl_universality.cli.errors import UsageError, report
from tl_universality.cli.parser import build_parser, command_of

__all__ = ["UsageError", "build_parser", "main"]


def __getattr__(name: str) -> Any:
    if name == "load_models":  # the old path; the loader imports torch, so only when asked for
        from tl_universality.cli.loading import load_models

        return load_models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_of(argv) or "")  # "": list the commands only
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return int(done.code or 0) if not isinstance(done.code, str) else 2
    if "device" in vars(args) and args.device is None:
        from tl_universality.core.environment import default_device

        args.device = default_device()  # "cuda": the current GPU, under torchrun the rank's own
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every error: one line (or the traceback with --debug)
        return report(err, prog=f"{parser.prog} {args.command}", debug=args.debug)
