"""Every command's ``--help``: plain text (no reST markup), every option explained."""

from __future__ import annotations

import argparse
import re

import pytest

import endpointsec
from endpointsec.cli import build_parser, main, rest_to_text


def _commands(parser: argparse.ArgumentParser,
              path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                        argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(_commands(child, (*path, name)))
    return found


COMMANDS = _commands(build_parser())
MARKUP = re.compile(r"``|:[a-z]+:`|^\s*::\s*$|::$|(?<![\w*])\*[A-Za-z][\w -]*\*(?![\w*])",
                    re.MULTILINE)


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "demo", "serve", "pki", "pki init", "pki server", "pki client", "explain",
            "check", "test"} <= names


@pytest.mark.parametrize(("path", "parser"), COMMANDS,
                         ids=[" ".join(p) or "endpointsec" for p, _ in COMMANDS])
def test_help_is_plain_text_and_explains_every_option(
        path: tuple[str, ...], parser: argparse.ArgumentParser,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: endpointsec")
    assert MARKUP.search(out) is None, MARKUP.search(out)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name} has no help"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"endpointsec {endpointsec.__version__}\n"


@pytest.mark.parametrize(
    ("rest", "text"),
    [
        pytest.param("``endpointsec demo``: one command.", "endpointsec demo: one command.",
                     id="literal-phrase"),
        pytest.param("a ``g`` rule or ``*``", "a 'g' rule or '*'", id="literal-word"),
        pytest.param("``--wrap`` wraps", "--wrap wraps", id="literal-option"),
        pytest.param("the one :func:`endpointsec.decide` makes", "the one endpointsec.decide "
                     "makes", id="role"),
        pytest.param("and *require* it", "and require it", id="emphasis"),
        pytest.param("Usage::\n\n    cmd\n", "Usage:\n\n    cmd", id="literal-block-colon"),
        pytest.param("Text.\n\n::\n\n    cmd\n", "Text.\n\n    cmd", id="literal-block-alone"),
        pytest.param("policy/*.suite.yaml and * bullets", "policy/*.suite.yaml and * bullets",
                     id="stars-kept"),
    ],
)
def test_rest_to_text(rest: str, text: str) -> None:
    assert rest_to_text(rest) == text
