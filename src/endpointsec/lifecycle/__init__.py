"""Least privilege in practice: observe, learn, review, replay, ship.

* :mod:`~endpointsec.lifecycle.records`: the decision records (JSON lines) and a
  logging handler that writes them;
* :mod:`~endpointsec.lifecycle.learn`: the smallest policy allowing what was observed;
* :mod:`~endpointsec.lifecycle.replay`: what a candidate policy would change;
* :mod:`~endpointsec.lifecycle.coverage` and :mod:`~endpointsec.lifecycle.unused`:
  which policy lines decided something, and which never did.

The command line (``endpointsec learn``, ``replay``, ``unused``, ``test --coverage``)
and the pytest plugin's ``--endpointsec-coverage`` are built on these. See
``docs/lifecycle.md``.
"""

from __future__ import annotations

from endpointsec.lifecycle.coverage import Coverage, PolicyLine, read_policy_lines
from endpointsec.lifecycle.learn import LearnedRule, LearnResult, learn
from endpointsec.lifecycle.records import (
    DecisionRecord,
    DecisionRecordHandler,
    read_records,
    record_from,
)
from endpointsec.lifecycle.replay import Change, ReplayReport, replay
from endpointsec.lifecycle.routes import RouteTemplate, routes_from_app, routes_from_config
from endpointsec.lifecycle.unused import unused_rules

__all__ = [
    "Change",
    "Coverage",
    "DecisionRecord",
    "DecisionRecordHandler",
    "LearnResult",
    "LearnedRule",
    "PolicyLine",
    "ReplayReport",
    "RouteTemplate",
    "learn",
    "read_policy_lines",
    "read_records",
    "record_from",
    "replay",
    "routes_from_app",
    "routes_from_config",
    "unused_rules",
]
