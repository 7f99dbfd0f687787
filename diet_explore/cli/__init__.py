"""diet-explore: profile LLM hidden dimensions per task, build DIET masks, prune and evaluate.

Each subcommand lives in ``diet_explore/cli/<name>.py`` and
exposes ``register(subparsers)``; the parsed arguments are turned into typed values there and the
library is called with those (never with the argparse namespace)."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from diet_explore import __version__
from diet_explore.cli._common import HelpFormatter, examples_epilog
from diet_explore.core.errors import DietError

# Adding a command = one module with register(subparsers) + one name here.
COMMAND_MODULES = [
    "models",
    "tasks",
    "profile",
    "mask",
    "agreement",
    "stability",
    "dim",
    "prune",
    "eval",
    "lmeval_tasks",
    "compare",
    "jobs",
    "tune",
    "app",
]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as the one line every other bad input gets (argparse printed the
    whole usage block above it): the message, and where the options are listed; every parser's help
    shows each option's default (``_common.HelpFormatter``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n  hint: see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diet-explore", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"diet-explore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"diet_explore.cli.{name}").register(sub)
    for name, command in sub.choices.items():  # one table of examples, shown under each command's options
        command.epilog = command.epilog or examples_epilog(name)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line that says what happened (no source path and code line, which read
    like a traceback to a CLI user)."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args, parser)


def _check_no_empty_values(parser: argparse.ArgumentParser, args) -> None:
    """An option given an empty value (``--cache ''``, ``--runs ''``) is refused by name: read as a
    path it was the current folder, as a list every item, as a name nothing at all."""
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands.choices[args.command]._actions:
        value = getattr(args, action.dest, None)
        if action.option_strings and isinstance(value, str) and not value.strip() and action.default != value:
            flag = max(action.option_strings, key=len)
            raise DietError(f"{flag} is empty", f"give {flag} a value" + ("" if action.required else ", or leave it out"))


def _run(args, parser: argparse.ArgumentParser) -> int:
    try:
        _check_no_empty_values(parser, args)
        return int(args.func(args) or 0)
    except DietError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `diet-explore agreement --format csv | head`: the reader left early
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        # only a command that keeps its finished work (``resumes`` set in its register()) says a re-run resumes
        resumes = getattr(args, "resumes", None)
        said = "; finished work was saved and a re-run resumes from it" if resumes is not None and resumes(args) else ""
        print(f"interrupted{said}", file=sys.stderr)
        return 130
