"""The ``tl-universality`` argument parser.

Building it imports nothing heavy (no torch, no TransformerLens), so ``--help``, ``--version`` and
usage errors answer at once; a command imports what it needs when it runs. Only the invoked
subcommand's options are defined (``build_parser(only=...)``); the others are listed with their
one-line help.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from tl_universality.cli.errors import USAGE, did_you_mean

#: Flags renamed for one name per concept: the old name's error says the new one.
RENAMED = {"--preset": "--family"}


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, with "did you mean" for commands and
    flags."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {self._explain(message)} (see {self.prog} -h)\n")

    def _explain(self, message: str) -> str:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            choices = re.findall(r"'([^']*)'", choice.group(2))
            return message + "." + did_you_mean(choice.group(1), choices)
        flags = re.search(r"unrecognized arguments: (.*)", message)
        if flags:
            hints = []
            known = [o for p in self._all_parsers() for a in p._actions for o in a.option_strings]
            for word in flags.group(1).split():
                flag = word.split("=")[0]
                if flag in RENAMED:
                    hints.append(f" {flag} is now {RENAMED[flag]}.")
                elif flag.startswith("--"):
                    hints.append(did_you_mean(flag, known))
            return message + "." + "".join(hints)
        return message

    def _all_parsers(self) -> list[argparse.ArgumentParser]:
        """This parser and its subcommands' (whose flags an unknown flag may be a typo of)."""
        subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        return [self, *(p for a in subs for p in a.choices.values())]


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``name`` of :mod:`tl_universality.cli.commands`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        from tl_universality.cli import commands

        return getattr(commands, name)(args)

    run.__name__ = run.__qualname__ = name
    return run


# -- option groups -------------------------------------------------------------------------------


def _family(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--family",
        default=default,
        help="an offline seed family preset: tiny or demo"
        + (f" (default: {default})" if default else ""),
    )


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda (default: cuda when there is one, under torchrun"
        " each rank's own GPU; else cpu)",
    )


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "models",
        nargs="*",
        help="TransformerLens names (e.g. stanford-gpt2-small-a) or local model folders;"
        " the first is the reference",
    )
    _family(p)
    p.add_argument(
        "--checkpoint", type=int, default=None, help="training checkpoint value (Stanford CRFM)"
    )


def _common(p: argparse.ArgumentParser, *, tokens: bool = True) -> None:
    p.add_argument(
        "--out", default="tl_universality_out", help="output folder (default: %(default)s)"
    )
    _device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log results to a wandb run (offline mode unless WANDB_MODE says otherwise)",
    )
    p.add_argument("--wandb-project", default="tl_universality", help="wandb project name")
    p.add_argument(
        "--wandb-group",
        default=None,
        help="wandb group: one study = one group (default: the --out folder's name)",
    )
    if tokens:
        _tokens(p)


def _tokens(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tokens",
        default=None,
        help="'default' (the embedded corpus), 'held-out' (the --family's held-out split), a"
        " .txt/.jsonl/.parquet file or a dataset name (default: held-out with --family, else"
        " the embedded corpus)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")


def _correlation(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--correlation",
        default=None,
        help=f"a saved correlation result {what} (default: OUT/correlation when it exists)",
    )


# -- subcommands ---------------------------------------------------------------------------------


def _train_seeds(p: argparse.ArgumentParser) -> None:
    _family(p, "demo")
    _device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _correlate(p: argparse.ArgumentParser) -> None:
    _models(p)
    _common(p)
    p.add_argument(
        "--units",
        default=None,
        help="hook (or per-layer hook suffix) to correlate, e.g. mlp.hook_pre"
        " (default: MLP neurons, mlp.hook_post)",
    )
    p.add_argument(
        "--memory-budget", default=None, help="e.g. 8GB (per process): tile the statistics to fit"
    )
    p.add_argument(
        "--parallel",
        choices=("tokens", "tiles"),
        default="tokens",
        help="under torchrun: each rank reads a shard of the batches (tokens), or every batch for"
        " its own tiles of the statistics (tiles: for pairs too large for one device)",
    )
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint here and resume from it")
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="screened exact mode: keep this many most (and least) correlated units per unit"
        " from a screening stage, then stream exact statistics of those pairs only",
    )
    p.add_argument("--screen-tokens", type=int, default=None, help="tokens of the screening stage")
    p.add_argument(
        "--baseline-candidates",
        type=int,
        default=None,
        help="with --candidates: follow each unit's this many best mixed units of the baseline"
        " through every token (the baseline is then exact over the stream where certified)",
    )
    p.add_argument(
        "--standard-errors",
        action="store_true",
        help="exhaustive mode: read the tokens once more for batch-means standard errors of"
        " every unit's best match (screened runs always have them)",
    )
    p.add_argument(
        "--tol",
        type=float,
        default=None,
        help="with --candidates: stop once every max-correlation is stable within this",
    )
    p.add_argument(
        "--certificate-sigmas",
        type=float,
        default=4.0,
        help="with --candidates: the certificate's margin in standard errors (default: 4)",
    )
    p.add_argument(
        "--product-dtype",
        choices=("float32", "float64", "tf32", "bfloat16"),
        default=None,
        help="precision of the per-batch products (default: float32, within 1e-6 of float64;"
        " tf32 and bfloat16 on CUDA only, about 1e-3 and 1e-2)",
    )


def _stats(p: argparse.ArgumentParser) -> None:
    _models(p)
    _common(p)
    _correlation(p, "to join (its reference model must be this model)")


def _families(p: argparse.ArgumentParser) -> None:
    _models(p)
    _common(p)
    _correlation(p, "whose universal neurons to explain")
    p.add_argument("--threshold", type=float, default=0.5, help="excess_corr for universal")


def _roles(p: argparse.ArgumentParser) -> None:
    _models(p)
    _common(p)
    p.add_argument("--top", type=int, default=10, help="candidates to print")
    p.add_argument(
        "--causal",
        action="store_true",
        help="also run the causal tests on the top candidates: the entropy intervention and the"
        " attention path ablation (on --tokens, at most 4096 tokens unless --max-tokens)",
    )


def _trace(p: argparse.ArgumentParser) -> None:
    _models(p)
    _common(p)
    from tl_universality.attention_decomposition.cli import add_trace_arguments

    add_trace_arguments(p)


def _flow(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the prompt (BOS is prepended)")
    p.add_argument("--model", default=None, help="a local model folder or TransformerLens name")
    _family(p)
    p.add_argument("--checkpoint", type=int, default=None, help="training checkpoint value")
    p.add_argument("--position", type=int, default=-1, help="token position (default: last)")
    p.add_argument("--target", default=None, help="target token string (default: next token)")
    p.add_argument("--target-id", type=int, default=None, help="target token id")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--heads", default="10", help="heads per layer, or a share such as 0.9")
    p.add_argument("--neurons", default="18,7", help="top,bottom neurons per layer, or a share")
    p.add_argument("--top-k", type=int, default=5, help="tokens shown per reading")
    p.add_argument("--reading", default="own", choices=["own", "residual"], help="LN scale")
    _correlation(p, "to overlay")
    _common(p, tokens=False)


def _remove_ln(p: argparse.ArgumentParser) -> None:
    _models(p)
    _common(p, tokens=False)
    p.add_argument("--tokens", default=None, help="training tokens (default: the family's)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default: 300)")
    p.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (default: 6e-4)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: 16)")


def _training_curve(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", help="a seed-family folder, or hub model names")
    _family(p)
    p.add_argument("--checkpoints", default=None, help="comma-separated steps (or indices)")
    p.add_argument("--checkpoint-kind", default="value", choices=["value", "index"])
    p.add_argument("--threshold", type=float, default=0.5, help="excess_corr for universal")
    p.add_argument("--n-draws", type=int, default=2, help="baseline draws per checkpoint")
    _common(p)


def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a results folder (the --out of the other commands)")
    p.add_argument(
        "models",
        nargs="*",
        help="the reference model (folder or name) for the neuron pages' contexts and vocabulary"
        " (default: the one recorded in DIR/settings.json)",
    )
    _family(p)
    _device(p)
    _tokens(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo(p: argparse.ArgumentParser) -> None:
    _family(p, "demo")
    p.add_argument("--max-tokens", type=int, default=None, help="held-out tokens to use")
    _common(p, tokens=False)


#: (name, help, options) of every subcommand, in the order ``--help`` lists them.
COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
    ("train-seeds", "train (or load) an offline seed family", _train_seeds),
    ("correlate", "correlate every neuron of the reference with the others", _correlate),
    ("stats", "the neuron table (weights, vocabulary, activations)", _stats),
    ("families", "explain neurons by token features; family labels", _families),
    ("roles", "prediction/suppression, entropy and deactivation neurons (--causal)", _roles),
    ("trace", "trace head-to-head communication (sparse attention decomp.)", _trace),
    ("flow", "the VISIT flow graph of one prompt (HTML, PNG, tables)", _flow),
    ("remove-ln", "remove every LayerNorm by fine-tuning (LN-free models)", _remove_ln),
    ("training-curve", "universality at each training checkpoint", _training_curve),
    ("report", "write the browsable HTML report of a results folder", _report),
    ("demo", "run the whole study offline on the embedded seed family", _demo),
]


class _Version(argparse.Action):
    """``--version``: this package, TransformerLens, torch and Python, read from the installed
    metadata (no import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib import metadata

        from tl_universality import __version__

        def version(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "not installed"

        python = ".".join(map(str, sys.version_info[:3]))
        print(
            f"tl-universality {__version__} (transformer-lens {version('transformer-lens')},"
            f" torch {version('torch')}, python {python})"
        )
        parser.exit(0)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand gets its options (the rest: names and help;
    ``only=""``: none).

    Examples:
        >>> build_parser().parse_args(["correlate", "--family", "tiny"]).func.__name__
        'cmd_correlate'
    """
    parser = Parser(
        prog="tl-universality",
        description="Universal neurons (Gurnee et al. 2024) for TransformerLens models.",
        epilog="Run `tl-universality demo` for the whole study on an offline seed family."
        " Errors are one line (exit 2: bad usage, 1: failure); --debug shows the traceback.",
    )
    parser.add_argument("--version", action=_Version)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, options in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[debug])
        if only is None or only == name:
            options(p)
        p.set_defaults(func=_lazy("cmd_" + name.replace("-", "_")))
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)
