"""``[policy]``: the Casbin model and policy, and ``[policy.paths]``: path normalization.

::

    [policy]
    policy = "policy.csv"          # Casbin policy lines (p, g)
    # model = "model.conf"         # default: the shipped zero-trust model
    dry_run = false                # log "would deny" and let the request through
    watch = true                   # reload the files when they change
    watch_interval = 2.0           # seconds between checks
    domain_header = "x-tenant"     # optional: the Casbin domain (tenant)
    cache_size = 10000             # decisions kept per policy snapshot (0: no cache)

    [policy.paths]
    merge_slashes = true
    decode_encoded_slashes = false
    reject_encoded_slashes = false
    backslash = "slash"            # "slash" | "reject" | "keep"

Every key is documented in ``docs/policy.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endpointsec._config import Table
from endpointsec.errors import ConfigurationError
from endpointsec.policy.paths import BACKSLASH_CHOICES, PathOptions

__all__ = ["PathOptions", "PolicyConfig"]


def _paths_from_table(t: Table) -> PathOptions:
    return t.build(
        PathOptions,
        merge_slashes=t.boolean("merge_slashes", True),
        decode_encoded_slashes=t.boolean("decode_encoded_slashes", False),
        reject_encoded_slashes=t.boolean("reject_encoded_slashes", False),
        backslash=t.choice("backslash", BACKSLASH_CHOICES, "slash"),
    )


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """Authorization configuration (``[policy]``); every field has a secure default.

    Either a Casbin policy (``policy`` file or an ``adapter``) or the explicit
    ``allow_authenticated = true`` must be chosen: there is no implicit "allow all".
    """

    #: Allow every authenticated caller (no Casbin policy). Must be chosen explicitly.
    allow_authenticated: bool = False
    #: A Casbin model file; ``None`` means the shipped default model (``model.conf``).
    model: Path | None = None
    #: A Casbin policy CSV file (``p`` and ``g`` lines).
    policy: Path | None = None
    #: Any Casbin adapter (Python only), instead of ``policy``.
    adapter: Any = field(default=None, compare=False, repr=False)
    #: Compute and log decisions, but let denied requests proceed ("would deny").
    dry_run: bool = False
    #: Watch the model and policy files and reload them when they change.
    watch: bool = False
    #: Seconds between two checks of the watched files.
    watch_interval: float = 2.0
    #: A request header carrying the Casbin domain (tenant); ``None``: no domain.
    domain_header: str | None = None
    #: Decisions cached per policy snapshot (0 disables the cache).
    cache_size: int = 10_000
    #: Path normalization (``[policy.paths]``).
    paths: PathOptions = field(default_factory=PathOptions)

    def __post_init__(self) -> None:
        if self.watch_interval <= 0:
            raise ConfigurationError("must be greater than 0", key="policy.watch_interval")
        if self.cache_size < 0:
            raise ConfigurationError("must be at least 0", key="policy.cache_size")
        if self.policy is not None and self.adapter is not None:
            raise ConfigurationError("give either a policy file or an adapter, not both",
                                     key="policy.policy")
        if self.allow_authenticated and (
            self.policy is not None or self.adapter is not None or self.model is not None
        ):
            raise ConfigurationError(
                "allow_authenticated cannot be combined with a Casbin model or policy",
                key="policy.allow_authenticated",
            )
        if self.domain_header is not None and not self.domain_header.strip():
            raise ConfigurationError("must not be empty", key="policy.domain_header")

    @classmethod
    def from_table(cls, t: Table) -> PolicyConfig:
        """Read ``[policy]`` (and ``[policy.paths]``); unknown keys are an error."""
        paths_t = t.table("paths")
        paths = paths_t.read(_paths_from_table, PathOptions()) if paths_t else PathOptions()
        return t.build(
            cls,
            allow_authenticated=t.boolean("allow_authenticated", False),
            model=t.path("model", None),
            policy=t.path("policy", None),
            dry_run=t.boolean("dry_run", False),
            watch=t.boolean("watch", False),
            watch_interval=t.number("watch_interval", 2.0, minimum=0.01),
            domain_header=t.string("domain_header", None),
            cache_size=t.integer("cache_size", 10_000, minimum=0),
            paths=paths,
        )
