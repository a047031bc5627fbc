"""Authorization. (Stub: owned by the policy work.)"""

from __future__ import annotations

from collections.abc import Sequence

from endpointsec.errors import ConfigurationError
from endpointsec.facts import PolicyResult
from endpointsec.policy.config import PolicyConfig
from endpointsec.protocols import Policy

__all__ = ["AllowAuthenticated", "build_policy"]


class AllowAuthenticated:
    """Allow every authenticated caller; chosen explicitly with ``allow_authenticated``."""

    dry_run = False

    def normalize(self, raw_path: str) -> str:
        return raw_path

    def evaluate(self, *, subjects: Sequence[str], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        return PolicyResult(allowed=bool(subjects), subjects=tuple(subjects),
                            reason="any authenticated caller is allowed")

    def roles_for(self, *, subjects: Sequence[str], domain: str | None = None) -> frozenset[str]:
        return frozenset()


def build_policy(config: PolicyConfig) -> Policy:
    if config.allow_authenticated:
        return AllowAuthenticated()
    raise ConfigurationError("no policy configured", key="policy")
