"""``endpointsec schema``: the JSON Schema of ``endpointsec.toml``.

::

    endpointsec schema > endpointsec.schema.json

and at the top of ``endpointsec.toml``, for Taplo / Even Better TOML::

    #:schema ./endpointsec.schema.json

The schema is declared by the same readers that validate the file, so it accepts
exactly the keys ``load_config`` accepts; the loader still checks what a schema cannot
(that files exist, that an issuer has exactly one key source, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``schema`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "schema", help="print the JSON Schema of endpointsec.toml",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", "-o", type=Path,
                   help="write the schema to this file instead of standard output")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from endpointsec.config import config_schema

    text = json.dumps(config_schema(), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
