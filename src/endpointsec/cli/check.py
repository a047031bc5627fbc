"""``endpointsec check``: lint a configuration, its Casbin model and its policy.

::

    endpointsec check endpointsec.toml

Without ``CONFIG``, the file ``serve`` and ``explain`` read: ``$ENDPOINTSEC_CONFIG``,
else ``./endpointsec.toml``. Problems reported (exit status 1 when there is any, 0 when
there is none), each with the policy file and its line number:

* the configuration does not load (unknown keys, bad values, missing files): the
  loader's own message, which names the key;
* malformed policy lines, **all** of them in one run (the file is read line by line
  exactly as Casbin splits it, so that comments and blank lines do not shift numbers):
  an unknown rule type (``P, ...``: Casbin would skip it without a word), a quote or an
  unbalanced bracket, a wrong number of values, an effect other than ``allow``/``deny``,
  an object outside the documented keyMatch2 forms (``{id}``: write ``:id``; regex
  syntax such as ``|``, ``?``, ``(``; a ``*`` other than a final ``/*``; a ``:`` inside
  a segment) — the same checks that refuse the policy at start-up;
* rules that can never match: an action that is not an upper-case HTTP method or
  ``*`` (such requests are refused with 400 before the policy), an object that is not
  a normalized path (``/`` first, no ``.``/``..`` segments, no ``//`` when slashes are
  merged) and no route's ``resource``, a subject that no caller can have (not a
  principal — ``spiffe://...``, ``uri:``, ``dns:``, ``sha256:``, ``<iss>#<sub>`` — nor
  ``role:``/``scope:``/``group:``, nor a role granted by a ``g`` rule), a ``g`` line
  whose member no caller can be, a duplicate line;
* allow rules shadowed by a deny: a request the allow rule matches is denied by a
  deny rule (checked with the real evaluator on an example request for the rule);
* routes with no rule: a non-public ``[[routes]]`` entry that no allow rule matches
  for any subject, so every request to it is denied.

With ``--online``, every remote key set (``jwks_url``, and the OIDC discovery document
of ``discovery_url``) is also fetched once, with the same checks as at run time
(redirects, size, key policy); each that fails is a problem naming the issuer, the URL
and the cause.

The rule-shape checks (subjects, objects, actions) apply to the shipped default model;
unknown rule types and brackets are checked for any model; shadowing and route
coverage are checked, with the real evaluator, for any model with ``sub``, ``obj`` and
``act`` fields in its policy definition.

Warnings (printed, exit status unchanged):

* a ``g`` line giving a certificate subject (``spiffe://``, ``uri:``, ``dns:``,
  ``sha256:``) a role in the token namespace (``role:``, ``scope:``, ``group:``): any
  token carrying that role, scope or group claims the same rules, through any workload.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endpointsec.errors import ConfigurationError
from endpointsec.policy.rules import DEFAULT_KEYS, PolicyLine, check_rules, read_policy_file

__all__ = ["Problem", "lint", "register"]

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
_SAMPLE = "_sample_"
_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}|:[A-Za-z_][A-Za-z0-9_]*")
_MAX_SUBJECTS = 1000


@dataclass(frozen=True)
class Problem:
    """One finding: where (file and line when known) and what. A ``warning`` does not
    make the check fail."""

    where: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


def register(sub: Any) -> None:
    """Add the ``check`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "check", help="lint configuration, model and policy (exit 1 on problems)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, metavar="CONFIG", nargs="?", default=None,
                   help="endpointsec.toml (default: $ENDPOINTSEC_CONFIG, else "
                        "./endpointsec.toml)")
    p.add_argument("--config", type=Path, dest="config_option", metavar="CONFIG",
                   help="the same file, given as in serve and explain")
    p.add_argument("--online", action="store_true",
                   help="also fetch every remote key set and discovery document")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the problems found; 1 if there are any."""
    from endpointsec.config import config_path

    option = getattr(args, "config_option", None)
    if option is not None and args.config is not None and option != args.config:
        raise ConfigurationError(f"two configuration files: {args.config} and --config "
                                 f"{option}; give one")
    args.config = config_path(args.config or option)  # as serve and explain find it
    problems, notes = lint(args.config)
    if getattr(args, "online", False):
        more, more_notes = check_online(args.config)
        problems += more
        notes += more_notes
    print(f"check {args.config}")
    warnings = [p for p in problems if p.warning]
    problems = [p for p in problems if not p.warning]
    for note in notes:
        print(f"  note   {note}")
    for warning in warnings:
        print(f"  WARN   {warning}")
    for problem in problems:
        print(f"  ERROR  {problem}")
    print(f"  {len(problems)} problem{'s' if len(problems) != 1 else ''} found"
          + (f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
             if warnings else ""))
    return 1 if problems else 0


def sample_path(template: str) -> str:
    """A concrete path that a keyMatch2 template (a policy object) and a route template
    both match: ``{id}``/``:id`` and ``*`` filled in (a trailing ``/*`` too, since
    Casbin's keyMatch2 does not match the bare prefix)."""
    if template == "*":
        return "/" + _SAMPLE
    return _PARAM.sub(_SAMPLE, template).replace("*", _SAMPLE) or "/"


@dataclass(frozen=True)
class _Rule:
    fields: dict[str, str]
    line: tuple[str, ...]
    where: str

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


def _line_numbers(lines: Sequence[PolicyLine]) -> dict[tuple[str, ...], list[int]]:
    """Each rule (``("p", ...values)``) and the line numbers it is on."""
    out: dict[tuple[str, ...], list[int]] = {}
    for line in lines:
        out.setdefault((line.key, *line.values), []).append(_number(line.where))
    return out


def _number(where: str) -> int:
    return int(where.rsplit(":", 1)[1])


def _model_keys(model_path: Path) -> frozenset[str]:
    """The rule types (``p``, ``g``, ``p2`` ...) of a model, as Casbin's loader knows them."""
    import casbin

    model = casbin.Model()
    model.load_model(str(model_path))
    return frozenset(k for sec in ("p", "g") if sec in model.model for k in model.model[sec])


def _scan(policy_path: Path, model_path: Path, *, default_model: bool
          ) -> tuple[list[PolicyLine], list[Problem]]:
    """The policy file's rules with their line numbers, and every malformed line."""
    try:
        keys = DEFAULT_KEYS if default_model else _model_keys(model_path)
        if "p" not in keys:  # not a usable model: loading it says why
            return [], []
        lines, findings = read_policy_file(policy_path, keys=keys, check_quotes=default_model,
                                           label=policy_path.name)
    except Exception as exc:  # unreadable files; casbin raises many types for bad models
        return [], [Problem(str(policy_path), f"cannot be read: {exc}")]
    if default_model:
        findings += check_rules(lines)
    return lines, [Problem(f.where, f.message) for f in findings]


def _load_rules(model_path: Path, policy_path: Path) -> tuple[list[str], list[list[str]],
                                                              list[list[str]]]:
    import casbin

    model = casbin.Model()
    model.load_model(str(model_path))
    casbin.FileAdapter(str(policy_path)).load_policy(model)
    p = model.model["p"]["p"]
    tokens = [t.split("_", 1)[1] if "_" in t else t for t in p.tokens]
    g_rules: list[list[str]] = []
    if "g" in model.model and "g" in model.model["g"]:
        g_rules = [list(r) for r in model.model["g"]["g"].policy]
    return tokens, [list(r) for r in p.policy], g_rules


def _same_text(a: Path, b: Path) -> bool:
    try:
        return a.read_text(encoding="utf-8").strip() == b.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False


def _subject_is_principal(sub: str) -> bool:
    """A subject some caller can have: a certificate subject (SPIFFE ID, ``uri:``,
    ``dns:``, ``sha256:``) or a token subject (``role:``, ``scope:``, ``group:``,
    ``<iss>#<sub>``)."""
    from endpointsec.facts import (
        CERTIFICATE_SUBJECT_PREFIXES,
        TOKEN_SUBJECT_PREFIXES,
        USER_SUBJECT_SEPARATOR,
    )

    return (sub.startswith(CERTIFICATE_SUBJECT_PREFIXES + TOKEN_SUBJECT_PREFIXES)
            or USER_SUBJECT_SEPARATOR in sub)


def lint(config_path: Path) -> tuple[list[Problem], list[str]]:
    """Lint ``config_path``; return the problems and informational notes."""
    from endpointsec.config import load_config
    from endpointsec.policy import build_policy

    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        # one problem per invalid key: every one of them, not only the first
        return [Problem(str(config_path), str(e)) for e in exc.errors], []
    notes: list[str] = []
    pc = config.policy
    if getattr(pc, "allow_authenticated", False):
        notes.append("[policy] allow_authenticated: every authenticated caller is allowed "
                     "(no rules to check)")
        return [], notes
    from endpointsec.policy.enforcer import DEFAULT_MODEL_PATH

    policy_path: Path | None = getattr(pc, "policy", None)
    model_path: Path | None = getattr(pc, "model", None)
    default_model = model_path is None or _same_text(model_path, DEFAULT_MODEL_PATH)
    if model_path is None:
        model_path = DEFAULT_MODEL_PATH
    scanned: list[PolicyLine] = []
    if policy_path is not None and policy_path.is_file():
        # Every malformed line at once, with its number (loading stops at them, all
        # reported in one message; here each is a problem of its own).
        scanned, malformed = _scan(policy_path, model_path, default_model=default_model)
        if malformed:
            return malformed, notes
    try:
        policy = build_policy(pc)
    except ConfigurationError as exc:
        return [Problem(str(config_path), str(exc))], notes
    if policy_path is None:
        notes.append("the policy comes from an adapter: rules not checked")
        return [], notes
    try:
        tokens, p_rules, g_rules = _load_rules(model_path, policy_path)
    except Exception as exc:  # casbin raises many types for bad files
        return [Problem(str(policy_path), f"cannot be read by Casbin: {exc}")], notes
    if not {"sub", "obj", "act"} <= set(tokens):
        notes.append(f"model {model_path} has no sub/obj/act policy fields: rules not checked")
        return [], notes
    lines = _line_numbers(scanned)
    p_lines = [ln for ln in scanned if ln.key == "p"]
    if [list(ln.values) for ln in p_lines] != p_rules:  # pragma: no cover - same splitting
        p_lines = []
    rules: list[_Rule] = []
    seen: set[tuple[str, ...]] = set()
    for i, r in enumerate(p_rules):
        line = ("p", *r)
        if line in seen:  # reported once, as a duplicate
            continue
        seen.add(line)
        where = p_lines[i].where if p_lines else policy_path.name
        rules.append(_Rule(fields=dict(zip(tokens, r, strict=False)), line=line, where=where))
    problems: list[Problem] = []
    problems += _duplicates(lines, policy_path)
    if default_model:
        problems += _unreachable(rules, g_rules, config)
        problems += _unreachable_members(g_rules, lines, policy_path)
        problems += _namespace_mixing(scanned)
    else:
        notes.append(f"custom model {model_path.name}: rule-shape checks skipped (subjects, "
                     "objects and actions may mean something else); shadowing and route "
                     "coverage are checked with the model")
    problems += _shadowed(rules, policy)
    problems += _uncovered_routes(rules, policy, config)
    return problems, notes


def check_online(config_path: Path) -> tuple[list[Problem], list[str]]:
    """Fetch every remote key set once; a problem for each that fails."""
    import asyncio

    import httpx

    from endpointsec.config import load_config
    from endpointsec.tokens.jwks import BackgroundLoop, RemoteKeySource
    from endpointsec.tokens.keys import KeySetError

    try:
        config = load_config(config_path)
    except ConfigurationError:
        return [], []  # already reported by lint
    problems: list[Problem] = []
    notes: list[str] = []
    for ic in config.tokens.issuers:
        url = ic.discovery_url or ic.jwks_url
        if url is None:
            continue
        where = f"tokens.issuers[{ic.issuer!r}]"
        source = RemoteKeySource(config=ic, loop=BackgroundLoop())

        async def fetch(source: RemoteKeySource = source, timeout: float = ic.jwks_timeout
                        ) -> Any:
            async with asyncio.timeout(timeout):
                return await source._download()

        cause: str | None = None
        try:
            keys = asyncio.run(fetch())
        except (KeySetError, ConfigurationError) as exc:
            cause = str(exc)
        except TimeoutError:
            cause = f"timed out after {ic.jwks_timeout}s"
        except httpx.HTTPError as exc:
            cause = f"{type(exc).__name__}: {str(exc)[:200]}"
        except Exception as exc:  # report, never crash the check
            cause = f"{type(exc).__name__}: {str(exc)[:200]}"
        fetched = source._jwks_uri or url
        if cause is not None:
            problems.append(Problem(where, f"key set of issuer {ic.issuer!r} cannot be "
                                           f"fetched from {fetched}: {cause}"))
        else:
            notes.append(f"issuer {ic.issuer!r}: {len(keys.keys)} key(s) from {fetched}")
    if not any(ic.discovery_url or ic.jwks_url for ic in config.tokens.issuers):
        notes.append("--online: no remote key set configured")
    return problems, notes


def _duplicates(lines: dict[tuple[str, ...], list[int]], path: Path) -> list[Problem]:
    out = []
    for line, numbers in lines.items():
        if len(numbers) > 1:
            out.append(Problem(f"{path.name}:{numbers[1]}",
                               f"duplicate of line {numbers[0]}: [{', '.join(line)}]"))
    return out


def _unreachable(rules: Sequence[_Rule], g_rules: Sequence[Sequence[str]],
                 config: Any) -> list[Problem]:
    granted = {g[1] for g in g_rules if len(g) > 1}
    resources = {r.requirements.resource for r in config.routes if r.requirements.resource}
    actions = {r.requirements.action for r in config.routes if r.requirements.action}
    if config.defaults.resource:
        resources.add(config.defaults.resource)
    if config.defaults.action:
        actions.add(config.defaults.action)
    merge = getattr(getattr(config.policy, "paths", None), "merge_slashes", True)
    out = []
    for rule in rules:
        text = ", ".join(rule.line)
        eft = rule.get("eft", "allow")
        if eft not in ("allow", "deny"):
            out.append(Problem(rule.where, f"[{text}] effect {eft!r} is neither allow nor deny"))
        act = rule.get("act")
        if act != "*" and act not in _METHODS and act not in actions:
            out.append(Problem(rule.where, f"[{text}] can never match: action {act!r} is not "
                                           "an upper-case HTTP method, '*' or a route action"))
        obj = rule.get("obj")
        segments = obj.split("/")
        if obj not in resources and obj != "*" and (
            not obj.startswith("/") or "." in segments or ".." in segments
            or (merge and "//" in obj)
        ):
            out.append(Problem(rule.where, f"[{text}] can never match: object {obj!r} is not "
                                           "a normalized path or a route resource"))
        sub = rule.get("sub")
        if not _subject_is_principal(sub) and sub not in granted:
            out.append(Problem(
                rule.where,
                f"[{text}] can never match: subject {sub!r} is no caller's principal "
                "(spiffe://..., uri:, dns:, sha256:, <iss>#<sub>, role:, scope:, group:) "
                "and no g rule grants it"))
    return out


def _unreachable_members(g_rules: Sequence[Sequence[str]],
                         lines: dict[tuple[str, ...], list[int]], path: Path) -> list[Problem]:
    granted = {g[1] for g in g_rules if len(g) > 1}
    out = []
    for g in g_rules:
        if not g or _subject_is_principal(g[0]) or g[0] in granted:
            continue
        line = ("g", *g)
        numbers = lines.get(line, [])
        out.append(Problem(
            f"{path.name}:{numbers[0]}" if numbers else path.name,
            f"[{', '.join(line)}] can never apply: member {g[0]!r} is no caller's principal "
            "and no g rule grants it"))
    return out


#: Subjects only a verified certificate produces, and role names a token can claim.
_CERTIFICATE_SUBJECTS = ("spiffe://", "uri:", "dns:", "sha256:")
_TOKEN_ROLES = ("role:", "scope:", "group:")


def _namespace_mixing(lines: Sequence[PolicyLine]) -> list[Problem]:
    """Warnings: ``g`` lines that give a certificate subject a token-claimable role."""
    out = []
    for line in lines:
        if line.key != "g" or len(line.values) < 2:
            continue
        member, role = line.values[0], line.values[1]
        if member.startswith(_CERTIFICATE_SUBJECTS) and role.startswith(_TOKEN_ROLES):
            kind = role.split(":", 1)[0]
            out.append(Problem(
                line.where,
                f"[{', '.join(('g', *line.values))}] gives the certificate subject "
                f"{member!r} the role {role!r}, a name in the token namespace: every token "
                f"carrying that {kind} is granted the same rules, through any workload; "
                "name workload roles outside it (e.g. 'workload:<name>')",
                warning=True))
    return out


def _domain(rule: _Rule) -> str | None:
    dom = rule.get("dom", "*")
    return None if dom in ("", "*") else dom


def _shadowed(rules: Sequence[_Rule], policy: Any) -> list[Problem]:
    out = []
    for rule in rules:
        if rule.get("eft", "allow") != "allow":
            continue
        act = rule.get("act")
        action = "GET" if act == "*" else act
        obj = rule.get("obj")
        resource = sample_path(obj) if obj.startswith("/") or obj == "*" else obj
        result = policy.evaluate(subjects=(rule.get("sub"),), resource=resource, action=action,
                                 domain=_domain(rule))
        matched = result.matched_rule
        if not result.allowed and matched is not None and matched[-1:] == ("deny",):
            out.append(Problem(
                rule.where,
                f"allow rule [{', '.join(rule.line)}] is shadowed by deny rule "
                f"[{', '.join(matched)}] (for example {action} {resource})"))
    return out


def _uncovered_routes(rules: Sequence[_Rule], policy: Any, config: Any) -> list[Problem]:
    allows = [r for r in rules if r.get("eft", "allow") == "allow"]
    subjects: list[tuple[str, str | None]] = []
    for r in allows:
        key = (r.get("sub"), _domain(r))
        if key not in subjects:
            subjects.append(key)
    subjects = subjects[:_MAX_SUBJECTS]
    out = []
    for i, route in enumerate(config.routes):
        req = route.requirements
        if req.public:
            continue
        resource = req.resource or sample_path(route.path)
        methods = sorted(route.methods) or list(_METHODS)
        actions = [req.action] if req.action else methods
        covered = any(
            policy.evaluate(subjects=(sub,), resource=resource, action=action,
                            domain=dom).allowed
            for action in actions for sub, dom in subjects
        )
        if not covered:
            what = "/".join(actions) if req.action or route.methods else "any method"
            out.append(Problem(
                f"routes[{i}]",
                f"route {route.path} has no rule allowing {what} "
                f"(for example {resource}): every request to it is denied"))
    return out
