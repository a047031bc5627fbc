"""Per-route requirements declared in code (decorators, dependencies), shared by the
Flask and FastAPI adapters. They only record what the route asks; the core decides."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from endpointsec.facts import MTLS, Requirements, TokenUse

__all__ = ["RouteRule", "narrowed"]


@dataclass(frozen=True, slots=True)
class RouteRule:
    """What a route declares; unspecified fields inherit the configured requirements."""

    public: bool = False
    roles: frozenset[str] = frozenset()
    resource: str | None = None
    action: str | None = None
    mtls: MTLS | None = None
    token: TokenUse | None = None
    bound_token: bool | None = None
    #: Token scopes the route requires, every one of them (checked by the adapter as
    #: one narrowing per scope: the caller must hold ``scope:<s>``).
    scopes: frozenset[str] = frozenset()

    @classmethod
    def make(
        cls,
        *,
        public: bool = False,
        roles: Iterable[str] = (),
        resource: str | None = None,
        action: str | None = None,
        mtls: str | MTLS | None = None,
        token: str | TokenUse | None = None,
        bound_token: bool | None = None,
        scopes: Iterable[str] = (),
    ) -> RouteRule:
        return cls(
            public=public,
            roles=frozenset([roles] if isinstance(roles, str) else roles),
            resource=resource,
            action=action,
            mtls=MTLS(mtls) if mtls is not None else None,
            token=TokenUse(token) if token is not None else None,
            bound_token=bound_token,
            scopes=frozenset([scopes] if isinstance(scopes, str) else scopes),
        )

    def apply(self, base: Requirements) -> Requirements:
        """The route's requirements: ``base`` with what this rule specifies."""
        if self.public:
            return replace(base, public=True)
        return replace(
            base,
            # A route that asks for something is not public, even where the configured
            # requirements are (advisory: a [[routes]] public entry switching off the
            # checks a view declared with @require / sec.require).
            public=False,
            roles=self.roles or base.roles,
            resource=self.resource if self.resource is not None else base.resource,
            action=self.action if self.action is not None else base.action,
            mtls=self.mtls if self.mtls is not None else base.mtls,
            token=self.token if self.token is not None else base.token,
            bound_token=self.bound_token if self.bound_token is not None else base.bound_token,
        )


def narrowed(rule: RouteRule | None, base: Requirements,
             scopes: Iterable[str] = ()) -> Iterator[Requirements | None]:
    """The requirements a route checks, in order, every one of which must allow: the
    route's own (``None``: the configured ones), then one per required scope (its own
    ``rule.scopes`` and ``scopes``): the caller must hold the subject ``scope:<s>``."""
    route = rule.apply(base) if rule is not None else None
    yield route
    base_route = route if route is not None else base
    wanted = set(scopes) | (rule.scopes if rule is not None else frozenset())
    for scope in sorted(wanted):
        yield replace(base_route, public=False, roles=frozenset({f"scope:{scope}"}))
