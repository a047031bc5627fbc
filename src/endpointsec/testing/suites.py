"""Policy suites: table-driven cases in a YAML, TOML or JSON file, run offline.

A suite names what it tests (a configuration file, or a model and policy), the
principals it uses, a fixed "now", and cases (request + expected outcome). The format
is documented in ``docs/testing.md``. ``endpointsec test`` runs suites; in pytest::

    suite = load_suite("tests/policy/orders.suite.yaml")

    @pytest.mark.parametrize("case", suite.cases, ids=lambda c: c.id)
    def test_orders_policy(case):
        case.check(suite.gatekeeper)

Everything is offline: principals are described, not authenticated (certificates
named by file are parsed, not chain-verified; token claims are not signed). What is
tested is routing, requirements and the policy: the same :func:`endpointsec.decide`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from endpointsec._config import Table
from endpointsec.errors import ConfigurationError
from endpointsec.facts import Decision, PeerIdentity
from endpointsec.gatekeeper import Gatekeeper
from endpointsec.protocols import Policy
from endpointsec.testing.assertions import POLICY_ONLY, evaluate, rule_matches
from endpointsec.testing.principals import _from_certificate, peer_identity, request_principal

__all__ = [
    "CaseResult",
    "PolicyCase",
    "Suite",
    "SuitePrincipal",
    "SuiteResult",
    "load_cases",
    "load_suite",
    "offline_gatekeeper",
    "parse_time",
]

_EXPECT = ("allow", "deny")
_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def parse_time(value: Any, *, key: str) -> float:
    """Seconds since the epoch from an RFC 3339 string, a datetime or a number."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ConfigurationError("must carry a time zone (e.g. a trailing Z)", key=key)
        return value.timestamp()
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigurationError(f"not an RFC 3339 time: {value!r}", key=key) from None
        return parse_time(parsed, key=key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigurationError("must be an RFC 3339 time or seconds since the epoch", key=key)


def _read_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigurationError(f"{path}: a suite is a .yaml, .yml, .json or .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"suite file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot be read: {exc}") from None
    data: Any
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise ConfigurationError(
                    f"{path}: reading YAML suites needs PyYAML (pip install pyyaml); "
                    "or write the suite as JSON or TOML") from None
            data = yaml.safe_load(text)
    except ConfigurationError:
        raise
    except Exception as exc:  # json, toml and yaml each have their own error types
        raise ConfigurationError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: a suite must be a mapping at the top level")
    return data


@dataclass(frozen=True, kw_only=True)
class SuitePrincipal:
    """A named caller: a peer identity, token claims, or both (or neither: anonymous)."""

    name: str
    #: From a certificate file, the identity keeps the certificate: its validity
    #: window is checked against the suite's "now".
    peer: PeerIdentity | None = None
    token: Mapping[str, Any] | None = None

    @classmethod
    def from_table(cls, name: str, t: Table) -> SuitePrincipal:
        peer_s = t.string("peer", None)
        cert_path = t.path("cert", None)
        if peer_s is not None and cert_path is not None:
            raise ConfigurationError("give 'peer' or 'cert', not both", key=t.name("cert"))
        peer: PeerIdentity | None = None
        if peer_s is not None:
            peer = peer_identity(peer_s)
        elif cert_path is not None:
            from cryptography import x509

            try:
                chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"not a PEM certificate: {exc}",
                                         key=t.name("cert")) from None
            peer = _from_certificate(chain[0], tuple(chain[1:]))
        token_t = t.table("token")
        token: dict[str, Any] | None = None
        if token_t is not None:
            token = {
                "iss": token_t.string("iss"),
                "sub": token_t.string("sub"),
                "aud": token_t.str_list("aud", ()),
                "roles": token_t.str_list("roles", ()),
                "scopes": token_t.str_list("scopes", ()),
                "groups": token_t.str_list("groups", ()),
            }
            for k in ("exp", "nbf"):
                raw = token_t.raw(k, None)
                if raw is not None:
                    token[k] = parse_time(raw, key=token_t.name(k))
            cnf = token_t.string("cnf_x5t_s256", None)
            if cnf is not None:
                token["cnf_x5t_s256"] = cnf
            extra = token_t.table("claims")
            if extra is not None:  # other claims never replace the keys above
                token = {**{k: extra.raw(k) for k in extra.keys()}, **token}  # noqa: SIM118
                extra.finish()
            token_t.finish()
            try:
                request_principal(token)
            except ConfigurationError as exc:
                raise ConfigurationError(str(exc), key=token_t.name("claims")) from None
        t.finish()
        return cls(name=name, peer=peer, token=token)


@dataclass(frozen=True, kw_only=True)
class PolicyCase:
    """One request and its expected outcome."""

    name: str
    principal: SuitePrincipal
    method: str = "GET"
    path: str
    domain: str | None = None
    expect: str
    status: int | None = None
    rule: tuple[str, ...] | None = None
    #: Evaluation time (seconds since the epoch); ``None``: the real clock at run time.
    now: float | None = None

    @property
    def id(self) -> str:
        """A readable test id: the case name."""
        return self.name

    def run(self, target: Gatekeeper | Policy) -> Decision:
        """The decision for this case (certificate and token times checked at ``now``)."""
        now = self.now if self.now is not None else time.time()
        return evaluate(target, method=self.method, path=self.path, domain=self.domain,
                        peer=self.principal.peer, token=self.principal.token, now=now)

    def failure(self, decision: Decision) -> str | None:
        """Why ``decision`` does not meet the expectation (``None``: it does)."""
        allowed = decision.allowed and not decision.would_deny
        status = 403 if decision.would_deny else decision.status
        verdict = "ALLOW" if allowed else f"DENY {status}"
        if (self.expect == "allow") != allowed:
            return f"expected {self.expect.upper()}, got {verdict}"
        if self.status is not None and self.status != status:
            return f"expected status {self.status}, got {status}"
        if self.rule is not None and not rule_matches(self.rule, decision.matched_rule):
            got = ", ".join(decision.matched_rule) if decision.matched_rule else "no rule"
            return f"expected rule [{', '.join(self.rule)}], got [{got}]"
        return None

    def check(self, target: Gatekeeper | Policy) -> Decision:
        """Run the case; raise ``AssertionError`` with the explanation if it fails."""
        __tracebackhide__ = True
        decision = self.run(target)
        why = self.failure(decision)
        if why is not None:
            raise AssertionError(f"{self.name}: {why}\n{decision.explain()}")
        return decision


@dataclass(frozen=True, kw_only=True)
class CaseResult:
    """The outcome of one case."""

    case: PolicyCase
    decision: Decision
    #: Why it failed; ``None`` when it passed.
    failure: str | None

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass(frozen=True, kw_only=True)
class SuiteResult:
    """The outcome of a whole suite."""

    suite: Suite
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def report(self, *, verbose: bool = False) -> str:
        """One line per case (PASS/FAIL), the explanation under each failure."""
        now = self.suite.now
        when = (dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if now is not None else "the real clock")
        lines = [f"suite {self.suite.path or '(in memory)'} (now: {when})"]
        for r in self.results:
            lines.append(f"  {'PASS' if r.passed else 'FAIL'}  {r.case.name}")
            if not r.passed or verbose:
                if r.failure:
                    lines.append(f"        {r.failure}")
                lines.extend(f"        {line}" for line in r.decision.explain().splitlines())
        failed = len(self.failures)
        lines.append(f"  {len(self.results) - failed} passed, {failed} failed")
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A loaded suite: what it tests, its principals and cases."""

    path: Path | None = None
    config_path: Path | None = None
    model: Path | None = None
    policy: Path | None = None
    now: float | None = None
    principals: Mapping[str, SuitePrincipal] = field(default_factory=dict)
    cases: tuple[PolicyCase, ...] = ()

    @cached_property
    def gatekeeper(self) -> Gatekeeper:
        """The offline gatekeeper for what the suite names (see :func:`offline_gatekeeper`)."""
        return offline_gatekeeper(config=self.config_path, model=self.model, policy=self.policy)

    def run(self, target: Gatekeeper | Policy | None = None) -> SuiteResult:
        """Run every case against ``target`` (default: :attr:`gatekeeper`)."""
        tgt = target if target is not None else self.gatekeeper
        results = []
        for case in self.cases:
            decision = case.run(tgt)
            results.append(CaseResult(case=case, decision=decision,
                                      failure=case.failure(decision)))
        return SuiteResult(suite=self, results=tuple(results))


def offline_gatekeeper(
    *, config: Path | None = None, model: Path | None = None, policy: Path | None = None
) -> Gatekeeper:
    """A gatekeeper that decides offline.

    With ``config`` (an ``endpointsec.toml``): its ``[defaults]``, ``[[routes]]`` and
    ``[policy]``, without certificate sources or token verifiers (nothing is fetched).
    With ``policy`` (and optionally ``model``; default: the shipped model): that policy
    alone, under :data:`POLICY_ONLY` requirements.
    """
    from endpointsec.policy import build_policy
    from endpointsec.routing import RouteTable

    if config is not None:
        if model is not None or policy is not None:
            raise ConfigurationError("give 'config' or 'model'/'policy', not both", key="config")
        from endpointsec.config import load_config

        cfg = load_config(config)
        routes = RouteTable([(r.path, r.methods, r.requirements) for r in cfg.routes],
                            defaults=cfg.defaults)
        # Offline and short-lived: never start a file watcher thread.
        policy_config = cfg.policy
        if getattr(policy_config, "watch", False):
            from dataclasses import replace

            policy_config = replace(policy_config, watch=False)
        return Gatekeeper(policy=build_policy(policy_config), routes=routes)
    if policy is None:
        raise ConfigurationError("name a 'config' or a 'policy' to test", key="policy")
    from endpointsec.policy.config import PolicyConfig

    table: dict[str, Any] = {"policy": str(policy)}
    if model is not None:
        table["model"] = str(model)
    policy_config = PolicyConfig.from_table(Table(table, key="policy"))
    return Gatekeeper(policy=build_policy(policy_config), routes=RouteTable(defaults=POLICY_ONLY))


def _case_principals(value: Any, principals: Mapping[str, SuitePrincipal], t: Table,
                     index: int) -> list[SuitePrincipal]:
    key = t.name("principal")
    if value is None:
        return [SuitePrincipal(name="anonymous")]
    if isinstance(value, Mapping):
        return [SuitePrincipal.from_table(f"case {index}", Table(value, key=key,
                                                                 base_dir=t.base_dir))]
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigurationError("must be a principal name, a list of names or a table",
                                 key=key)
    out = []
    for n in names:
        if n == "anonymous":
            out.append(principals.get(n, SuitePrincipal(name="anonymous")))
        elif n not in principals:
            raise ConfigurationError(f"unknown principal {n!r}", key=key)
        else:
            out.append(principals[n])
    return out


def suite_from_mapping(data: Mapping[str, Any], *, base_dir: Path,
                       path: Path | None = None) -> Suite:
    """Build a :class:`Suite` from parsed data; relative paths are relative to ``base_dir``."""
    root = Table(data, base_dir=base_dir)
    config_path = root.path("config", None)
    model = root.path("model", None)
    policy = root.path("policy", None)
    if config_path is not None and (model is not None or policy is not None):
        raise ConfigurationError("give 'config' or 'model'/'policy', not both", key="config")
    if model is not None and policy is None:
        raise ConfigurationError("a suite naming a 'model' must name its 'policy' too",
                                 key="policy")
    raw_now = root.raw("now", None)
    now = parse_time(raw_now, key="now") if raw_now is not None else None
    principals: dict[str, SuitePrincipal] = {}
    ptable = root.table("principals")
    if ptable is not None:
        for name in ptable.keys():  # noqa: SIM118 - Table is not a Mapping
            sub = ptable.table(name, required=True)
            if sub is not None:
                principals[name] = SuitePrincipal.from_table(name, sub)
        ptable.finish()
    cases: list[PolicyCase] = []
    seen: set[str] = set()
    case_tables = root.tables("cases")
    if not case_tables:
        raise ConfigurationError("a suite needs at least one case", key="cases")
    for i, ct in enumerate(case_tables):
        method = ct.string("method", "GET")
        case_path = ct.string("path")
        expect = ct.choice("expect", _EXPECT)
        status = ct.integer("status", None, minimum=100)
        rule = ct.str_list("rule", None)
        domain = ct.string("domain", None)
        base_name = ct.string("name", None) or f"{method} {case_path}"
        whos = _case_principals(ct.raw("principal", None), principals, ct, i)
        ct.finish()
        if expect == "allow" and status not in (None, 200):
            raise ConfigurationError("an allowed request has status 200", key=ct.name("status"))
        for who in whos:
            name = base_name if len(whos) == 1 else f"{base_name} [{who.name}]"
            if name in seen:
                name = f"{name} #{i}"
            seen.add(name)
            cases.append(PolicyCase(
                name=name, principal=who, method=method, path=case_path, domain=domain,
                expect=expect, status=status, rule=tuple(rule) if rule is not None else None,
                now=now,
            ))
    root.finish()
    return Suite(path=path, config_path=config_path, model=model, policy=policy, now=now,
                 principals=principals, cases=tuple(cases))


def load_suite(path: str | Path) -> Suite:
    """Read a suite file (``.yaml``/``.yml`` needs PyYAML, ``.json``, ``.toml``)."""
    p = Path(path)
    return suite_from_mapping(_read_file(p), base_dir=p.resolve().parent, path=p)


def load_cases(path: str | Path) -> Sequence[PolicyCase]:
    """The cases of a suite file, for ``pytest.mark.parametrize(..., ids=lambda c: c.id)``."""
    return load_suite(path).cases
