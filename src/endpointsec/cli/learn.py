"""``endpointsec learn``: propose the smallest policy that allows what was observed.

::

    endpointsec learn decisions.jsonl --routes-from app:app > policy.learned.csv
    endpointsec learn decisions.jsonl --config endpointsec.toml --by users --min-count 3
    endpointsec learn decisions.jsonl --since 2026-11-20T00:00:00Z -o candidate.csv

Learns from every request the service served (status 200: ``allow``, or ``would_deny``
under a dry-run policy); requests refused with 403 are never learned; records with
status 400, 401 or 503 are ignored (no authorization question). One allow rule per
(subject, domain, route, method), under a ``# seen N times, last ...`` comment.

Subjects (``--by``): ``roles`` (default) credits a request to the token's narrowest
role, else to the workload (certificate subject), else to the user; ``users`` to the
token's user, else the workload; ``workloads`` to the workload, else the role, else the
user. Objects: the record's ``route``, else the most specific route template of the app
(``--routes-from``, FastAPI/Starlette or Flask) or of ``[[routes]]`` (``--config``) the
path matches, else the exact path. Never a wildcard wider than a route template.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def add_window(p: argparse.ArgumentParser) -> None:
    """``--since`` / ``--until``: the time window of the records used."""
    p.add_argument("--since", metavar="TIME",
                   help="only records at or after this RFC 3339 time (2026-11-20T00:00:00Z)")
    p.add_argument("--until", metavar="TIME", help="only records before this RFC 3339 time")


def window(args: argparse.Namespace) -> dict[str, Any]:
    """The ``since``/``until`` keywords of :func:`read_records`."""
    from endpointsec.lifecycle.records import parse_time

    return {
        "since": parse_time(args.since, where="--since") if args.since else None,
        "until": parse_time(args.until, where="--until") if args.until else None,
    }


def register(sub: Any) -> None:
    """Add the ``learn`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "learn", help="propose the smallest policy allowing the observed requests",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("records", type=Path, metavar="DECISIONS",
                   help="decision records, one JSON object per line ('-': stdin)")
    p.add_argument("--routes-from", metavar="MODULE:APP",
                   help="read route templates from this app (FastAPI, Starlette, Flask)")
    p.add_argument("--app-dir", type=Path, default=Path("."),
                   help="directory added to sys.path before importing the app")
    p.add_argument("--config", type=Path, metavar="TOML",
                   help="read route templates from its [[routes]] (also exported as "
                        "ENDPOINTSEC_CONFIG for --routes-from)")
    p.add_argument("--by", choices=("roles", "users", "workloads"), default="roles",
                   help="whom rules are granted to (default: roles)")
    p.add_argument("--min-count", type=int, default=1, metavar="N",
                   help="leave out (as comments) rules seen fewer than N times")
    add_window(p)
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write the policy here instead of standard output")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print (or write) the proposed policy; 0 on success."""
    from endpointsec.errors import ConfigurationError
    from endpointsec.lifecycle.learn import learn
    from endpointsec.lifecycle.records import read_records
    from endpointsec.lifecycle.routes import RouteTemplate, routes_from_app, routes_from_config

    if args.min_count < 1:
        raise ConfigurationError("must be at least 1", key="--min-count")
    templates: list[RouteTemplate] = []
    if args.config is not None:
        from endpointsec.config import load_config

        templates += routes_from_config(load_config(args.config).routes)
    if args.routes_from:
        from endpointsec.cli.serve import import_app

        saved = os.environ.get("ENDPOINTSEC_CONFIG")
        if args.config is not None:  # the app loads the same file, as under serve
            os.environ["ENDPOINTSEC_CONFIG"] = str(args.config.resolve())
        try:
            app = import_app(args.routes_from, app_dir=args.app_dir)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"cannot import {args.routes_from!r}: {exc}",
                                     key="--routes-from") from None
        finally:
            if saved is None:
                os.environ.pop("ENDPOINTSEC_CONFIG", None)
            else:
                os.environ["ENDPOINTSEC_CONFIG"] = saved
        templates = routes_from_app(app) + templates
    records = read_records(args.records, **window(args))
    result = learn(records, templates=templates, by=args.by, min_count=args.min_count,
                   source=args.records.name)
    text = result.render()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"learn: {len(result.rules)} rules from {result.learned} served requests "
              f"written to {args.output}", file=sys.stderr)
    return 0
