"""``endpointsec replay``: what a candidate policy would change, on recorded traffic.

::

    endpointsec replay decisions.jsonl --policy candidate.csv
    endpointsec replay decisions.jsonl --policy candidate.csv --allow-narrowing

Each record's subjects, path, method and domain are evaluated by the candidate with
the service's own policy engine; every outcome that would change is listed, grouped by
principal and route (the record's route, else the candidate's rule objects the path
matches), with counts and the candidate rule that decides it. Records with
status 400, 401 or 503 are not replayed (counted in the summary).

Exit status: 0 nothing that was served would be denied; 1 something would be (unless
``--allow-narrowing``); 2 the records or the candidate could not be read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from endpointsec.cli.learn import add_window, window

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``replay`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "replay", help="show what a candidate policy would change on recorded decisions",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("records", type=Path, metavar="DECISIONS",
                   help="decision records, one JSON object per line ('-': stdin)")
    p.add_argument("--policy", type=Path, required=True, help="the candidate policy (CSV)")
    p.add_argument("--model", type=Path, help="its Casbin model (default: the shipped one)")
    p.add_argument("--allow-narrowing", action="store_true",
                   help="exit 0 even when served requests would be denied")
    add_window(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the changes; 1 if a served request would be denied."""
    from endpointsec.lifecycle.records import read_records
    from endpointsec.lifecycle.replay import replay, routes_of_policy
    from endpointsec.policy import CasbinPolicy

    policy = CasbinPolicy(model=args.model, policy=args.policy, cache_size=0)
    records = read_records(args.records, **window(args))
    report = replay(records, policy, source=args.records.name, candidate=args.policy.name,
                    routes=routes_of_policy(args.policy))
    print(report.render())
    return 1 if report.newly_denied and not args.allow_narrowing else 0
