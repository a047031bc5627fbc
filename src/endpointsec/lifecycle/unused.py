"""Rules no decision used: candidates to remove.

By default the rule each record names (the one that decided it in production) is
counted; with a ``policy`` to evaluate, each record is replayed against it instead, so
that a policy that changed since the records were written (or a candidate) is judged
by what it would have decided. Records with status 400, 401 or 503 decided nothing and
are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from endpointsec.errors import PathError
from endpointsec.lifecycle.coverage import Coverage
from endpointsec.lifecycle.records import NOT_AUTHORIZATION, DecisionRecord

__all__ = ["unused_rules"]


def unused_rules(records: Iterable[DecisionRecord], policy_file: str | Path, *,
                 evaluate_with: Any = None) -> Coverage:
    """The coverage of ``policy_file`` by ``records``; its :attr:`Coverage.unused` lines
    are the rules no decision used. ``evaluate_with``: a policy to replay the records
    against instead of trusting their recorded rule."""
    cov = Coverage([policy_file])
    for r in records:
        if r.status in NOT_AUTHORIZATION:
            continue
        if evaluate_with is None:
            cov.add(r.rule)
            continue
        try:
            path = evaluate_with.normalize(r.path)
        except PathError:
            continue
        result = evaluate_with.evaluate(subjects=r.subjects, resource=path, action=r.method,
                                        domain=r.domain)
        cov.add(result.matched_rule)
    return cov
