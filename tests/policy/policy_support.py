"""Helpers shared by the policy tests (not a test module)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from casbin.persist import Adapter


class ListAdapter(Adapter):  # type: ignore[misc]
    """An in-memory Casbin adapter: the "bring your own adapter" case."""

    def __init__(self, p: Sequence[Sequence[str]] = (), g: Sequence[Sequence[str]] = ()) -> None:
        self.p = [list(r) for r in p]
        self.g = [list(r) for r in g]
        self.loads = 0

    def load_policy(self, model: Any) -> None:
        self.loads += 1
        for rule in self.p:
            model.model["p"]["p"].policy.append(list(rule))
        for rule in self.g:
            model.model["g"]["g"].policy.append(list(rule))


def csv_lines(p: Sequence[Sequence[str]] = (), g: Sequence[Sequence[str]] = ()) -> str:
    """Casbin policy CSV text for rules made of simple tokens."""
    lines = [", ".join(["p", *r]) for r in p] + [", ".join(["g", *r]) for r in g]
    return "\n".join(lines) + "\n"
