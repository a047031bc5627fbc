"""The ``endpointsec`` command line.

Each subcommand lives in its own module with ``register(subparsers)``, which adds a
parser whose ``handler`` default is called with the parsed arguments and returns the
exit status. A subcommand's description is its module docstring, written in reST for
the API reference; :func:`build_parser` turns it into plain text for ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Subcommand modules, in the order ``--help`` lists them.
_COMMANDS = ("demo", "serve", "pki", "explain", "check", "test", "learn", "replay", "unused",
             "schema", "policy", "bench")


def build_parser() -> argparse.ArgumentParser:
    from endpointsec import __version__

    parser = argparse.ArgumentParser(
        prog="endpointsec",
        description="Zero-trust endpoint security inside the service process.",
    )
    parser.add_argument("--version", action="version", version=f"endpointsec {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"endpointsec.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"endpointsec.cli.{name}":
                continue  # not shipped (yet)
            raise
        module.register(sub)
    _plain_descriptions(parser)
    return parser


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :func:`x`, :class:`~a.B`
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_EMPHASIS = re.compile(r"(?<![\w*`])\*([A-Za-z][\w -]*?)\*(?![\w*])")


def _literal(match: re.Match[str]) -> str:
    # A lone word is quoted ('*', 'g', '[server]'); a command, an option or a phrase is not.
    text = match.group(1)
    if text.startswith("-") or any(c in text for c in " '\"\n"):
        return text
    return f"'{text}'"


def rest_to_text(text: str) -> str:
    """Plain text for a terminal from a reST docstring: roles and emphasis lose their
    markup, a literal loses its backquotes (a lone word is quoted instead), a ``::``
    literal-block marker becomes ``:`` (or goes, alone on its line)."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(_literal, text)
    text = _EMPHASIS.sub(r"\1", text)
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() == "::":
            if lines and not lines[-1].strip():
                lines.pop()  # the blank line before the marker; keep the one after
            continue
        lines.append(line[:-1] if line.endswith("::") else line)
    return "\n".join(lines)


def _plain_descriptions(parser: argparse.ArgumentParser) -> None:
    if parser.description:
        parser.description = rest_to_text(parser.description)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _plain_descriptions(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from endpointsec.errors import ConfigurationError

    try:
        return int(handler(args))
    except ConfigurationError as exc:
        print(f"endpointsec: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
