"""``endpointsec policy``: the rules in the configured database.

::

    endpointsec policy init   --config endpointsec.toml
    endpointsec policy list   --config endpointsec.toml
    endpointsec policy add    --config endpointsec.toml p alice '*' /orders/:id GET allow
    endpointsec policy add    --config endpointsec.toml g alice role:ops '*'
    endpointsec policy remove --config endpointsec.toml p alice '*' /orders/:id GET allow
    endpointsec policy export --config endpointsec.toml -o policy.csv
    endpointsec policy import --config endpointsec.toml policy.csv --replace --dry-run

The configuration's ``[policy]`` names the database (``database``, a password from
``database_password_env`` or ``database_password_file``, ``table``) and the watcher:
every change is announced, so running replicas apply it within their propagation delay.
``init`` creates the table; ``list`` and ``export`` print the rules as Casbin CSV lines;
``add``, ``remove`` and ``import`` validate the rules against the shipped model first
(nothing is written if one is invalid), and with ``--dry-run`` only say what would
change. ``import --replace`` replaces the whole policy in one transaction.

Exit status: 0 done; 1 the database could not be reached; 2 a configuration or rule error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``policy`` subcommand and its actions."""
    p: argparse.ArgumentParser = sub.add_parser(
        "policy", help="manage the rules in the configured policy database",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = actions.add_parser(name, help=help_text,
                                                        description=help_text)
        a.add_argument("--config", type=Path, required=True, metavar="CONFIG",
                       help="endpointsec.toml with [policy] database = ...")
        a.set_defaults(handler=run)
        return a

    action("init", "create the rules table if it does not exist")
    action("list", "print every rule as a Casbin CSV line")
    export = action("export", "write every rule as Casbin CSV")
    export.add_argument("-o", "--output", type=Path, help="the file (default: stdout)")
    for name, verb in (("add", "add"), ("remove", "remove")):
        a = action(name, f"{verb} one rule: p SUBJECT DOMAIN OBJECT ACTION allow|deny, "
                         "or g USER ROLE DOMAIN")
        a.add_argument("ptype", choices=("p", "g"), help="p (permission) or g (role)")
        a.add_argument("values", nargs="+", metavar="VALUE", help="the rule's values")
        a.add_argument("--dry-run", action="store_true", help="only say what would change")
    imp = action("import", "add the rules of a Casbin CSV file (or replace the policy)")
    imp.add_argument("file", type=Path, metavar="CSV", help="Casbin policy lines (p, g)")
    imp.add_argument("--replace", action="store_true",
                     help="replace the whole policy with the file's rules (one transaction)")
    imp.add_argument("--dry-run", action="store_true", help="only say what would change")


def _open(config_path: Path) -> tuple[Any, Any]:
    """The adapter and the announcing watcher (not started) of the configuration."""
    from endpointsec.config import load_config
    from endpointsec.errors import ConfigurationError
    from endpointsec.policy.store import adapter_from_config, watcher_from_config

    config = load_config(config_path).policy
    if config.database is None:
        raise ConfigurationError("endpointsec policy needs [policy] database = "
                                 "\"postgresql://...\"", key="policy.database")
    adapter = adapter_from_config(config)
    watcher = watcher_from_config(config, adapter)
    adapter.notify_payload = "endpointsec policy"
    return adapter, watcher


def _csv(ptype: str, values: list[str]) -> str:
    return ", ".join([ptype, *values])


def run(args: argparse.Namespace) -> int:
    """Carry out one action; see the module docstring for the exit status."""
    from endpointsec.errors import PolicyStoreUnavailable

    try:
        return _run(args)
    except PolicyStoreUnavailable as exc:
        print(f"endpointsec: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from endpointsec.policy import CasbinPolicy
    from endpointsec.policy.enforcer import _derive

    adapter, watcher = _open(args.config)
    try:
        if args.action == "init":
            adapter.create_table()
            print(f"policy table {adapter.table} is ready")
            return 0
        if args.action in ("list", "export"):
            lines = [_csv(ptype, values) for ptype, values in adapter.rows()]
            text = "".join(line + "\n" for line in lines)
            if getattr(args, "output", None) is not None:
                args.output.write_text(text, encoding="utf-8")
                print(f"{len(lines)} rules written to {args.output}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return 0
        policy = CasbinPolicy(adapter=adapter, cache_size=0)  # validates what is stored
        if args.action in ("add", "remove"):
            change = [(args.ptype, tuple(args.values))]
            add, remove = (change, []) if args.action == "add" else ([], change)
        else:
            candidate = CasbinPolicy(policy=args.file, cache_size=0)  # validates the file
            rules = _rules_of(candidate)
            if args.replace:
                return _replace(adapter, watcher, policy, rules, dry_run=args.dry_run)
            add, remove = rules, []
        _, added, removed, _ = _derive(policy._snapshot, add=add,  # type: ignore[arg-type]
                                       remove=remove)
        for ptype, rule in added:
            print(f"+ {_csv(ptype, list(rule))}")
        for ptype, rule in removed:
            print(f"- {_csv(ptype, list(rule))}")
        if args.dry_run:
            print(f"dry run: {len(added)} to add, {len(removed)} to remove; nothing written")
            return 0
        if added or removed:
            policy._change(add=added, remove=removed)
            _announce(adapter, watcher)
        print(f"{len(added)} added, {len(removed)} removed")
        return 0
    finally:
        adapter.close()


def _rules_of(policy: Any) -> list[tuple[str, tuple[str, ...]]]:
    """Every rule of a loaded policy, as ``(ptype, values)`` in policy order."""
    import casbin

    from endpointsec.policy.enforcer import _default_model

    model = casbin.Model()
    model.load_model_from_text(_default_model())
    adapter = policy._adapter or casbin.FileAdapter(str(policy._policy_path))
    adapter.load_policy(model)
    return ([("p", tuple(r)) for r in model.model["p"]["p"].policy]
            + [("g", tuple(r)) for r in model.model["g"]["g"].policy])


def _replace(adapter: Any, watcher: Any, current: Any,
             rules: list[tuple[str, tuple[str, ...]]], *, dry_run: bool) -> int:
    old = set(_rules_of(current))
    new = set(rules)
    for ptype, rule in sorted(new - old):
        print(f"+ {_csv(ptype, list(rule))}")
    for ptype, rule in sorted(old - new):
        print(f"- {_csv(ptype, list(rule))}")
    if dry_run:
        print(f"dry run: {len(new - old)} to add, {len(old - new)} to remove; nothing written")
        return 0
    unique = list(dict.fromkeys(rules))  # a rule is held once, first place kept
    adapter.replace_rules([(ptype, list(rule)) for ptype, rule in unique])
    _announce(adapter, watcher)
    print(f"policy replaced: {len(unique)} rules")
    return 0


def _announce(adapter: Any, watcher: Any) -> None:
    """A write through the adapter notified in its transaction (PostgreSQL watcher);
    with a Redis watcher the change is published now."""
    if watcher is not None and adapter.notify_channel is None:
        watcher.publish("endpointsec policy")
