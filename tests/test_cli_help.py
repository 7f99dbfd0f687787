"""The CLI's help: every flag of every (sub)command explained with its default, an example per command."""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex

import pytest

from diet_explore.cli import build_parser
from diet_explore.cli._common import EXAMPLES


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every parser in the tree, nested ones (jobs submit compare) included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _commands():
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices


def test_every_flag_of_every_command_has_help_text():
    missing = [
        f"{' '.join(path)} {max(a.option_strings, key=len)}"
        for path, parser in _parsers(build_parser())
        for a in parser._actions
        if a.option_strings and not (a.help or "").strip()
    ]
    assert missing == []


def _help(parser: argparse.ArgumentParser) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        parser.print_help()
    return out.getvalue()


def test_help_shows_defaults_but_never_an_empty_one():
    texts = {" ".join(path): _help(p) for path, p in _parsers(build_parser())}
    assert "(default: 50)" in texts["eval"] and "(default: all)" in texts["eval"]  # --limit, --tasks
    assert "(default: auto)" in texts["eval"]  # --device, from the shared device arguments
    for name, text in texts.items():
        flat = " ".join(text.split())
        for empty in ("default: None", "default: False", "default: True", "default: []", "default: ==SUPPRESS=="):
            assert empty not in flat, (name, empty)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_has_an_example_that_parses(command):
    assert command in EXAMPLES, f"add an example of `{command}` to cli._common.EXAMPLES"
    help_text = _help(_commands()[command])
    assert "examples:" in help_text
    for line in EXAMPLES[command]:
        assert line in help_text  # shown as written, not re-wrapped
        args = build_parser().parse_args(shlex.split(line)[1:])  # a typo'd flag exits here
        assert args.command == command


def test_the_table_names_no_command_that_does_not_exist():
    assert set(EXAMPLES) <= set(_commands())
