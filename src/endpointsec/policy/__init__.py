"""Authorization: Casbin least-privilege rules (default deny) and path normalization.

:func:`build_policy` turns ``[policy]`` into a :class:`endpointsec.protocols.Policy`:
a :class:`CasbinPolicy` for a Casbin model and policy, or :class:`AllowAuthenticated`
when ``allow_authenticated = true`` was chosen explicitly. Both normalize request paths
with the same :class:`PathNormalizer`. See ``docs/policy.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from endpointsec.errors import ConfigurationError
from endpointsec.facts import PolicyResult
from endpointsec.policy.config import PolicyConfig
from endpointsec.policy.enforcer import DEFAULT_MODEL_PATH, CasbinPolicy
from endpointsec.policy.paths import PathNormalizer, PathOptions
from endpointsec.protocols import Policy

__all__ = [
    "DEFAULT_MODEL_PATH",
    "AllowAuthenticated",
    "CasbinPolicy",
    "PathNormalizer",
    "PathOptions",
    "PolicyConfig",
    "build_policy",
]


class AllowAuthenticated:
    """Allow every authenticated caller; chosen explicitly with ``allow_authenticated``.

    Paths are still normalized (route selection depends on it); route-level
    requirements (``roles``, ``public``) still apply.
    """

    def __init__(self, *, paths: PathOptions | None = None, dry_run: bool = False) -> None:
        self._normalizer = PathNormalizer(options=paths)
        self._dry_run = dry_run

    @property
    def dry_run(self) -> bool:
        """Decisions are logged as "would deny" but not enforced."""
        return self._dry_run

    def normalize(self, raw_path: str) -> str:
        """The canonical path for matching (see :mod:`endpointsec.policy.paths`)."""
        return self._normalizer.normalize(raw_path)

    def evaluate(self, *, subjects: Sequence[str], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        """Allow if there is at least one subject (an authenticated caller)."""
        subjects = tuple(subjects)
        if not subjects:
            return PolicyResult(allowed=False, subjects=subjects,
                                reason="no authenticated subject; denied")
        return PolicyResult(allowed=True, subjects=subjects,
                            reason="any authenticated caller is allowed (allow_authenticated)")

    def roles_for(self, *, subjects: Sequence[str], domain: str | None = None) -> frozenset[str]:
        """No role rules exist without a Casbin policy."""
        return frozenset()


def build_policy(config: PolicyConfig) -> Policy:
    """Build the policy ``[policy]`` describes.

    Raises :class:`ConfigurationError` (naming ``policy``) when neither a Casbin policy
    (file or adapter) nor ``allow_authenticated = true`` is configured.
    """
    if config.allow_authenticated:
        return AllowAuthenticated(paths=config.paths, dry_run=config.dry_run)
    if config.database is not None:
        from endpointsec.policy.store import open_database_policy

        return open_database_policy(config)
    if config.policy is None and config.adapter is None:
        raise ConfigurationError(
            "no policy configured: set policy = \"policy.csv\" (Casbin rules), or "
            "allow_authenticated = true to allow every authenticated caller",
            key="policy",
        )
    return CasbinPolicy(
        model=config.model,
        policy=config.policy,
        adapter=config.adapter,
        dry_run=config.dry_run,
        watch=config.watch,
        watch_interval=config.watch_interval,
        cache_size=config.cache_size,
        paths=config.paths,
    )
