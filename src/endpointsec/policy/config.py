"""``[policy]``: the Casbin model and policy. (Owned by the policy package.)"""

from __future__ import annotations

from dataclasses import dataclass

from endpointsec._config import Table

__all__ = ["PolicyConfig"]


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """Authorization configuration."""

    #: Allow every authenticated caller (no Casbin policy). Must be chosen explicitly.
    allow_authenticated: bool = False

    @classmethod
    def from_table(cls, t: Table) -> PolicyConfig:
        cfg = cls(allow_authenticated=t.boolean("allow_authenticated", False))
        t.finish()
        return cfg
