"""The ``endpointsec`` command line.

Each subcommand lives in its own module with ``register(subparsers)``, which adds a
parser whose ``handler`` default is called with the parsed arguments and returns the
exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Subcommand modules, in the order ``--help`` lists them.
_COMMANDS = ("demo", "serve", "pki", "explain", "check", "test", "schema", "bench")


def build_parser() -> argparse.ArgumentParser:
    from endpointsec import __version__

    parser = argparse.ArgumentParser(
        prog="endpointsec",
        description="Zero-trust endpoint security inside the service process.",
    )
    parser.add_argument("--version", action="version", version=f"endpointsec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"endpointsec.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"endpointsec.cli.{name}":
                continue  # not shipped (yet)
            raise
        module.register(sub)
    return parser


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
