"""How the command line reports a problem: one line on stderr, naming the problem and the fix.

Exit codes: 2 for a usage error (a bad argument: unknown name, missing path, value that does not
parse), 1 for a failure while running. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import difflib
import sys
import traceback
from collections.abc import Iterable

from tl_universality.core.errors import UniversalityError

USAGE = 2
FAILURE = 1


class UsageError(UniversalityError, ValueError):
    """A command-line argument is wrong: the message names the argument, the value and the fix."""


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """`` Did you mean 'x'?`` for the closest ``choices`` (case-insensitive), else ``""``.

    Examples:
        >>> did_you_mean("tinyy", ["tiny", "demo"])
        " Did you mean 'tiny'?"
        >>> did_you_mean("zzz", ["tiny", "demo"])
        ''
    """
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(lower), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(lower[c]) for c in close) + "?"


def unknown_choice(flag: str, value: str, choices: Iterable[str], fix: str) -> UsageError:
    """The error for a name not among ``choices``: the flag, the value, the closest names, the fix.

    Examples:
        >>> str(unknown_choice("--family", "tinyy", ["tiny", "demo"], "use a preset name."))
        "argument --family: unknown value 'tinyy'. Did you mean 'tiny'? Fix: use a preset name."
    """
    return UsageError(
        f"argument {flag}: unknown value {value!r}.{did_you_mean(value, choices)} Fix: {fix}"
    )


def exit_code(err: BaseException) -> int:
    """2 for a bad argument or input the user can fix, 1 for anything that failed while running.

    Library errors that subclass ``ValueError``/``LookupError`` (unknown hook, tokenizer mismatch,
    empty token source, sequence too long, checkpoint of other arguments) are bad input; a missing
    file is too.
    """
    if isinstance(err, UsageError | FileNotFoundError | NotADirectoryError):
        return USAGE
    if isinstance(err, UniversalityError) and isinstance(err, ValueError | LookupError):
        return USAGE
    return FAILURE


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; errors not of this package also name their type and
    how to see more, since their text was not written for this command line."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 600:  # some libraries put whole lists in their messages
        text = text[:600] + " ..."
    if isinstance(err, UniversalityError | FileNotFoundError):
        return text
    return f"{type(err).__name__}: {text} (rerun with --debug for the traceback)"


def report(err: BaseException, *, prog: str, debug: bool) -> int:
    """Print ``err`` (one line, or the traceback with ``debug``) and return the exit code."""
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    else:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return exit_code(err)
