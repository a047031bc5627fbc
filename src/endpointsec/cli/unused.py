"""``endpointsec unused``: policy rules no recorded decision used (candidates to remove).

::

    endpointsec unused decisions.jsonl --policy policy.csv --since 2026-10-27T00:00:00Z
    endpointsec unused decisions.jsonl --policy candidate.csv --replay

By default the rule each record names (the one that decided it when it was made)
counts; ``--replay`` evaluates every record against ``--policy`` instead (for a policy
that changed since, or a candidate). Records with status 400, 401 or 503 decided
nothing. Prints the coverage and each unused rule with its line number; exit status 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from endpointsec.cli.learn import add_window, window

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``unused`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "unused", help="list policy rules no recorded decision used",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("records", type=Path, metavar="DECISIONS",
                   help="decision records, one JSON object per line ('-': stdin)")
    p.add_argument("--policy", type=Path, required=True, help="the policy (CSV)")
    p.add_argument("--model", type=Path, help="its Casbin model (with --replay)")
    p.add_argument("--replay", action="store_true",
                   help="evaluate the records against --policy instead of reading their rule")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the used rules")
    add_window(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the coverage of the policy by the records and its unused rules."""
    from endpointsec.lifecycle.records import read_records
    from endpointsec.lifecycle.unused import unused_rules

    evaluate_with = None
    if args.replay:
        from endpointsec.policy import CasbinPolicy

        evaluate_with = CasbinPolicy(model=args.model, policy=args.policy, cache_size=0)
    records = read_records(args.records, **window(args))
    cov = unused_rules(records, args.policy, evaluate_with=evaluate_with)
    span = (f"{len(records)} requests" + (f" since {args.since}" if args.since else "")
            + (f" until {args.until}" if args.until else ""))
    print(cov.render(what=f"decided at least one of {span}", verbose=args.verbose))
    return 0
