"""The Casbin facade: :class:`CasbinPolicy`.

Two evaluation paths behind one interface, both answering exactly what a plain
``casbin.Enforcer`` answers for each subject:

* the **shipped default model** (``model.conf``) is evaluated by an index built from the
  policy lines Casbin itself parsed: rules are grouped by subject, domain and action,
  exact objects sit in a dictionary and keyMatch2 templates are compiled once (to
  Casbin's own regular expression) and grouped by their first literal path segment.
  Roles (``g``) are resolved with the same reachability rule as Casbin's default role
  manager (at most 9 inheritance steps).
  A property test compares this path with ``casbin.Enforcer`` on random policies.
* **any other model** (or a model file that differs from the shipped one) is evaluated
  by a plain ``casbin.Enforcer``, one call per subject, serialized by a lock.

Across subjects (the peer principal, the request principal, ``role:``/``scope:``/
``group:`` names): the request is allowed if a rule allows one of the subjects and no
deny rule matches any of them; nothing matching is a deny.

Every policy (model + rules) lives in an immutable snapshot with its own decision
cache; :meth:`CasbinPolicy.reload` builds a new snapshot and swaps it in atomically, so
a change can never be answered from a stale cache and a failed reload keeps the last
good snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin

from endpointsec._memo import Memo
from endpointsec.errors import ConfigurationError, PolicyStoreUnavailable
from endpointsec.facts import PolicyResult
from endpointsec.policy.paths import PathNormalizer, PathOptions
from endpointsec.policy.rules import (
    DEFAULT_KEYS,
    PolicyLine,
    check_rules,
    read_policy_file,
    refused,
)

__all__ = ["DEFAULT_MODEL_PATH", "CasbinPolicy"]

logger = logging.getLogger("endpointsec.policy")

#: The shipped default model (see ``docs/policy.md``).
DEFAULT_MODEL_PATH = Path(__file__).with_name("model.conf")

#: Casbin's default role manager follows at most this many ``g`` steps (10 levels,
#: the subject itself being the first).
_MAX_ROLE_STEPS = 9
#: Decisions for longer resources are not cached (bounds the cache's memory).
_MAX_CACHED_RESOURCE = 512
#: Nothing is remembered for longer domains: the tenant comes from a request header (a
#: client could send a new 16 KiB value on every request, and each cache keyed on it
#: would keep it).
_MAX_CACHED_DOMAIN = 256
_MAX_ROLE_CACHE = 10_000
_REQUEST_TOKENS = frozenset({"sub", "dom", "obj", "act"})

# keyMatch2 exactly as Casbin builds its regular expression.
_KEY_MATCH2_PATTERN = re.compile(r"(.*?):[^\/]+(.*?)")
_REGEX_META = frozenset(".^$*+?{}[]\\|()")

_default_model_text: str | None = None


def _default_model() -> str:
    global _default_model_text
    if _default_model_text is None:
        _default_model_text = DEFAULT_MODEL_PATH.read_text(encoding="utf-8")
    return _default_model_text


def _key_match2_regex(template: str) -> str:
    key2 = template.replace("/*", "/.*")
    key2 = _KEY_MATCH2_PATTERN.sub(r"\g<1>[^\/]+\g<2>", key2, 0)
    if key2 == "*":
        key2 = "(.*)"
    return "^" + key2 + "$"


def _is_literal(template: str) -> bool:
    return ":" not in template and not any(c in _REGEX_META for c in template)


def _first_segment(template: str) -> str | None:
    """The literal first segment every match of ``template`` starts with, if any."""
    if not template.startswith("/"):
        return None
    j = template.find("/", 1)
    if j == -1:
        return None
    seg = template[1:j]
    return seg if _is_literal(seg) else None


Matcher = Callable[[str], object]

#: Characters of a template that make Casbin's regular expression something else than
#: literal text, ``[^/]+`` parameters and a final ``.*``.
_RISKY = frozenset("^$+?{}[]\\|()")


class _LazyPattern:
    """Casbin's regular expression for one keyMatch2 template, compiled on first use
    (a template no request reaches is never compiled)."""

    __slots__ = ("match", "regex")

    def __init__(self, regex: str) -> None:
        self.regex = regex
        self.match: Matcher = self._compile_and_match

    def _compile_and_match(self, path: str) -> object:
        self.match = re.compile(self.regex).match
        return self.match(path)

    def __call__(self, path: str) -> object:
        return self.match(path)


# -- the indexed snapshot (default model) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    sub: str
    dom: str
    obj: str
    act: str
    deny: bool

    @property
    def line(self) -> tuple[str, ...]:
        return ("p", self.sub, self.dom, self.obj, self.act, "deny" if self.deny else "allow")


class _Bucket:
    """The rules of one (subject, domain, action): exact objects and templates."""

    __slots__ = ("by_segment", "exact", "other")

    def __init__(self) -> None:
        self.exact: dict[str, list[_Rule]] = {}
        self.by_segment: dict[str, list[tuple[_LazyPattern, _Rule]]] = {}
        self.other: list[tuple[_LazyPattern, _Rule]] = []

    def add(self, rule: _Rule, compiled: dict[str, _LazyPattern]) -> None:
        if _is_literal(rule.obj):
            self.exact.setdefault(rule.obj, []).append(rule)
            return
        match = compiled[rule.obj]
        seg = _first_segment(rule.obj)
        if seg is None:
            self.other.append((match, rule))
        else:
            self.by_segment.setdefault(seg, []).append((match, rule))

    def matches(self, resource: str, segment: str | None, out: list[_Rule]) -> None:
        hit = self.exact.get(resource)
        if hit:
            out.extend(hit)
        if resource.endswith("\n"):  # re's "$" also matches before a final newline
            hit = self.exact.get(resource[:-1])
            if hit:
                out.extend(hit)
        if segment is not None:
            for pattern, rule in self.by_segment.get(segment, ()):
                if pattern.match(resource):
                    out.append(rule)
        for pattern, rule in self.other:
            if pattern.match(resource):
                out.append(rule)


class _Snapshot:
    """One immutable policy; subclasses implement :meth:`evaluate` and :meth:`roles`."""

    kind = "snapshot"

    def __init__(self, *, cache_size: int) -> None:
        self.cache_size = cache_size
        self.request_tokens: tuple[str, ...] = ("sub", "dom", "obj", "act")

    def evaluate(self, subjects: tuple[str, ...], resource: str, action: str,
                 domain: str | None) -> PolicyResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def roles(self, subjects: tuple[str, ...], domain: str) -> frozenset[str]:
        raise NotImplementedError  # pragma: no cover - abstract


def _failed(subjects: tuple[str, ...], resource: str, action: str,
            exc: Exception) -> PolicyResult:
    """An evaluation error is a deny with a reason, never a 500."""
    logger.error("policy evaluation failed for %s %s: %s: %s",
                 action, resource[:200], type(exc).__name__, exc)
    return PolicyResult(
        allowed=False, subjects=subjects,
        reason=f"policy evaluation failed ({type(exc).__name__}: {exc}); denied",
    )


def _bounded(size: int) -> Memo[Any, Any]:
    """A snapshot's memo: ``size`` entries (``[policy] cache_size``) and 8 MiB of keys."""
    return Memo(max_entries=size, max_bytes=8 * 1024 * 1024)


def _key_bytes(subjects: tuple[str, ...], *parts: str) -> int:
    """What a cache key on the caller's subjects costs, roughly (strings and tuples)."""
    return 64 + sum(len(s) + 56 for s in subjects) + sum(len(p) for p in parts)


def _explain(*, allow: tuple[tuple[str, ...], str, str] | None,
             deny: tuple[tuple[str, ...], str, str] | None,
             subjects: tuple[str, ...], resource: str, action: str,
             domain: str) -> PolicyResult:
    """Combine per-subject outcomes: (rule line, rule subject, caller subject)."""
    if deny is not None:
        line, rule_sub, subject = deny
        via = "" if rule_sub == subject else f" (held by {subject!r})"
        return PolicyResult(allowed=False, matched_rule=line, subjects=subjects,
                            reason=f"denied by a deny rule for {rule_sub!r}{via}")
    if allow is not None:
        line, rule_sub, subject = allow
        via = "" if rule_sub == subject else f" (held by {subject!r})"
        return PolicyResult(allowed=True, matched_rule=line, subjects=subjects,
                            reason=f"allowed by a rule for {rule_sub!r}{via}")
    where = "" if domain == "*" else f" in domain {domain!r}"
    if not subjects:
        return PolicyResult(allowed=False, subjects=subjects,
                            reason="no subject to authorize; denied by default")
    return PolicyResult(
        allowed=False, subjects=subjects,
        reason=f"no rule matched {action} {resource[:200]}{where} for "
               f"{len(subjects)} subject(s); denied by default",
    )


class _IndexedSnapshot(_Snapshot):
    """The default model, evaluated from an index; same answers as ``casbin.Enforcer``."""

    kind = "indexed"

    def __init__(self, *, p_rules: Sequence[Sequence[str]],
                 g_rules: Sequence[Sequence[str]], cache_size: int, source: str,
                 p_where: Sequence[str] | None = None,
                 g_where: Sequence[str] | None = None) -> None:
        super().__init__(cache_size=cache_size)
        # -- loading: every problem of every rule at once, each with its place
        # (``policy.csv:12`` when the file was scanned, else the rule's index). Rules
        # with their places (p_where) come from a file scan that already checked them.
        findings = [] if p_where is not None else check_rules(
            [PolicyLine(p_where[i] if p_where else f"{source}: policy rule {i + 1}",
                        "p", tuple(line)) for i, line in enumerate(p_rules)]
            + [PolicyLine(g_where[i] if g_where else f"{source}: role rule {i + 1}",
                          "g", tuple(line)) for i, line in enumerate(g_rules)])
        if findings:
            raise refused(source, findings)
        compiled: dict[str, _LazyPattern] = {}
        index: dict[tuple[str, str], dict[str, _Bucket]] = {}
        for i, line in enumerate(p_rules):
            sub, dom, obj, act, eft = line
            if not _is_literal(obj) and obj not in compiled:
                where = p_where[i] if p_where else f"{source}: policy rule {i + 1}"
                compiled[obj] = self._matcher(obj, where)
            rule = _Rule(index=i, sub=sub, dom=dom, obj=obj, act=act, deny=eft == "deny")
            index.setdefault((sub, dom), {}).setdefault(act, _Bucket()).add(rule, compiled)
        edges: dict[str, dict[str, list[str]]] = {}
        for line in g_rules:
            user, role, dom = line
            edges.setdefault(dom, {}).setdefault(user, []).append(role)
        # -- end of loading ------------------------------------------------------------
        self._index = index
        self._edges = edges
        self._reach_cache: dict[tuple[str, str], frozenset[str]] = {}
        #: Per (subjects, action, domain): the buckets that can apply (see _View).
        self._views: Memo[tuple[Any, ...], _View] = _bounded(cache_size)
        #: Per (subjects, domain): every role held.
        self._roles: Memo[tuple[Any, ...], frozenset[str]] = _bounded(cache_size)
        self.rule_count = len(p_rules)
        self.role_count = len(g_rules)

    @staticmethod
    def _matcher(template: str, where: str) -> _LazyPattern:
        # Casbin's own regular expression: the same answers by construction, and
        # faster than splitting the path into segments. Compiled on first use when it
        # cannot fail (a 100,000-line policy loads without compiling 100,000
        # expressions); anything with regex syntax is compiled, and refused, now.
        regex = _key_match2_regex(template)
        lazy = _LazyPattern(regex)
        if _RISKY.isdisjoint(template) and (template == "*"
                                            or "*" not in template.replace("/*", "")):
            return lazy
        try:
            lazy.match = re.compile(regex).match
        except re.error as exc:
            raise ConfigurationError(
                f"{where}: object {template[:120]!r} is not a valid keyMatch2 pattern "
                f"({exc})", key="policy.policy") from None
        return lazy

    def _reach(self, subject: str, domain: str) -> frozenset[str]:
        """``subject`` and every role it reaches in ``domain`` (Casbin's has_link)."""
        key = (subject, domain)
        hit = self._reach_cache.get(key)
        if hit is not None:
            return hit
        graph = self._edges.get(domain)
        seen = {subject}
        if graph:
            frontier = [subject]
            for _ in range(_MAX_ROLE_STEPS):
                nxt = []
                for name in frontier:
                    for role in graph.get(name, ()):
                        if role not in seen:
                            seen.add(role)
                            nxt.append(role)
                if not nxt:
                    break
                frontier = nxt
        result = frozenset(seen)
        if len(domain) > _MAX_CACHED_DOMAIN:
            return result  # a client-chosen tenant: not remembered
        if len(self._reach_cache) >= _MAX_ROLE_CACHE:
            self._reach_cache.clear()
        self._reach_cache[key] = result
        return result

    def _names(self, subject: str, domain: str) -> frozenset[str]:
        if domain == "*":
            return self._reach(subject, "*")
        return self._reach(subject, domain) | self._reach(subject, "*")

    def roles(self, subjects: tuple[str, ...], domain: str) -> frozenset[str]:
        if len(domain) > _MAX_CACHED_DOMAIN:  # a client-chosen tenant: not remembered
            return frozenset(r for s in subjects for r in self._names(s, domain) - {s})
        key = (subjects, domain)
        hit: frozenset[str] | None = self._roles.get(key)
        if hit is not None:
            return hit
        out: set[str] = set()
        for s in subjects:
            out |= self._names(s, domain) - {s}
        result = frozenset(out)
        self._roles.put(key, result, size=_key_bytes(subjects, domain))
        return result

    def _view(self, subjects: tuple[str, ...], action: str, domain: str) -> _View:
        """The buckets of rules that can apply to these subjects, action and domain,
        each with the caller's subject that reaches it (in the subjects' order)."""
        domains = ("*",) if domain == "*" else (domain, "*")
        actions = ("*",) if action == "*" else (action, "*")
        index = self._index
        entries: list[tuple[_Bucket, str]] = []
        for subject in subjects:
            for name in self._names(subject, domain):
                for dom in domains:
                    by_action = index.get((name, dom))
                    if by_action is None:
                        continue
                    for act in actions:
                        bucket = by_action.get(act)
                        if bucket is not None:
                            entries.append((bucket, subject))
        return _View(tuple(entries))

    def evaluate(self, subjects: tuple[str, ...], resource: str, action: str,
                 domain: str | None) -> PolicyResult:
        dom = domain or "*"
        if len(dom) > _MAX_CACHED_DOMAIN:  # a client-chosen tenant: not remembered
            try:
                return self._view(subjects, action, dom).evaluate(
                    subjects, resource, action, dom)
            except Exception as exc:  # fail closed with a reason, never a 500
                return _failed(subjects, resource, action, exc)
        key = (subjects, action, dom)
        view = self._views.get(key)
        try:
            if view is None:
                view = self._view(subjects, action, dom)
                self._views.put(key, view, size=_key_bytes(subjects, action, dom))
            return view.evaluate(subjects, resource, action, dom)
        except Exception as exc:  # fail closed with a reason, never a 500
            return _failed(subjects, resource, action, exc)


class _View:
    """What one (subjects, action, domain) can be answered from: the rule buckets the
    subjects reach, and the answers already explained (an answer that names a rule does
    not depend on the path, so it is built once per rule and subject)."""

    __slots__ = ("_answers", "entries")

    def __init__(self, entries: tuple[tuple[_Bucket, str], ...]) -> None:
        self.entries = entries
        self._answers: dict[tuple[int, str], PolicyResult] = {}

    def evaluate(self, subjects: tuple[str, ...], resource: str, action: str,
                 domain: str) -> PolicyResult:
        allow: tuple[_Rule, str] | None = None
        deny: tuple[_Rule, str] | None = None
        if self.entries:
            segment: str | None = None
            if resource.startswith("/"):
                j = resource.find("/", 1)
                if j != -1:
                    segment = resource[1:j]
            found: list[_Rule] = []
            for bucket, subject in self.entries:
                bucket.matches(resource, segment, found)
                if not found:
                    continue
                for rule in found:
                    if rule.deny:
                        if deny is None or rule.index < deny[0].index:
                            deny = (rule, subject)
                    elif allow is None or rule.index < allow[0].index:
                        allow = (rule, subject)
                found.clear()
        decided = deny if deny is not None else allow
        if decided is None:
            return _explain(allow=None, deny=None, subjects=subjects, resource=resource,
                            action=action, domain=domain)
        rule, subject = decided
        key = (rule.index, subject)
        answer = self._answers.get(key)
        if answer is None:
            line = (rule.line, rule.sub, subject)
            answer = _explain(allow=None if rule.deny else line,
                              deny=line if rule.deny else None, subjects=subjects,
                              resource=resource, action=action, domain=domain)
            self._answers[key] = answer
        return answer


# -- the plain-enforcer snapshot (any other model) -----------------------------------------


class _EnforcerSnapshot(_Snapshot):
    """A user-supplied model, evaluated by a plain ``casbin.Enforcer`` per subject."""

    kind = "enforcer"

    def __init__(self, *, enforcer: Any, cache_size: int) -> None:
        super().__init__(cache_size=cache_size)
        #: Answers per (subjects, resource, action, domain): a plain enforcer call per
        #: subject is slow. Bounded in entries, and in bytes by _MAX_CACHED_RESOURCE.
        self._results: Memo[tuple[Any, ...], PolicyResult] = _bounded(cache_size)
        self._enforcer = enforcer
        self._lock = threading.Lock()
        tokens = tuple(t.split("_", 1)[1] for t in enforcer.model.model["r"]["r"].tokens)
        unknown = [t for t in tokens if t not in _REQUEST_TOKENS]
        if unknown:
            raise ConfigurationError(
                f"the model's request_definition names {unknown[0]!r}; endpointsec fills "
                "only sub, dom, obj and act", key="policy.model")
        self.request_tokens = tokens
        self._has_g = "g" in enforcer.model.model and "g" in enforcer.model.model["g"]
        self._g_domain = self._has_g and len(enforcer.model.model["g"]["g"].tokens) > 2

    def evaluate(self, subjects: tuple[str, ...], resource: str, action: str,
                 domain: str | None) -> PolicyResult:
        if domain is not None and len(domain) > _MAX_CACHED_DOMAIN:
            try:  # a client-chosen tenant: not remembered
                return self._evaluate(subjects, resource, action, domain)
            except Exception as exc:  # fail closed with a reason, never a 500
                return _failed(subjects, resource, action, exc)
        key = (subjects, resource, action, domain)
        hit = self._results.get(key)
        if hit is not None:
            return hit
        try:
            result = self._evaluate(subjects, resource, action, domain or "*")
        except Exception as exc:  # fail closed with a reason, never a 500
            return _failed(subjects, resource, action, exc)
        if len(resource) <= _MAX_CACHED_RESOURCE:
            self._results.put(key, result, size=_key_bytes(subjects, resource, action))
        return result

    def _request(self, subject: str, resource: str, action: str, domain: str) -> list[str]:
        values = {"sub": subject, "dom": domain, "obj": resource, "act": action}
        return [values[t] for t in self.request_tokens]

    def _evaluate(self, subjects: tuple[str, ...], resource: str, action: str,
                  domain: str) -> PolicyResult:
        allow: tuple[tuple[str, ...], str, str] | None = None
        deny: tuple[tuple[str, ...], str, str] | None = None
        # A model without "sub" is asked once; subjects do not enter its decision.
        tried = subjects if "sub" in self.request_tokens else subjects[:1] or ("",)
        for subject in tried:
            with self._lock:
                ok, rule = self._enforcer.enforce_ex(
                    *self._request(subject, resource, action, domain))
            line = ("p", *(str(v) for v in rule)) if rule else None
            rule_sub = str(rule[0]) if rule else subject
            if ok:
                if allow is None:
                    allow = (line or ("(no policy: the matcher alone allowed)",),
                             rule_sub, subject)
            elif line is not None and deny is None:
                deny = (line, rule_sub, subject)
        return _explain(allow=allow, deny=deny, subjects=subjects, resource=resource,
                        action=action, domain=domain)

    def roles(self, subjects: tuple[str, ...], domain: str) -> frozenset[str]:
        if not self._has_g:
            return frozenset()
        out: set[str] = set()
        with self._lock:
            for s in subjects:
                args = (s, domain) if self._g_domain else (s,)
                out.update(str(r) for r in self._enforcer.get_implicit_roles_for_user(*args))
        return frozenset(out)


# -- the facade -----------------------------------------------------------------------------


_Stat = tuple[int, int, int, int]


def _file_signature(paths: Sequence[Path]) -> tuple[_Stat | None, ...]:
    # The ctime too: a file rewritten in place with its mtime kept (cp -p, rsync -a)
    # and the same size has the same mtime, size and inode, never the same ctime.
    sig: list[_Stat | None] = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            sig.append(None)
        else:
            sig.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns))
    return tuple(sig)


def _check_rule_types(path: Path) -> int:
    """Refuse a policy file line whose rule type is not ``p`` or ``g``; return the
    number of rule lines.

    Casbin skips a line whose type its model does not know, without a word: a damaged
    or mistyped deny rule (``q, ...`` or ``pp, ...``) would silently stop denying.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}",
                                 key="policy.policy") from None
    rules = 0
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            raise ConfigurationError(f"{path}: line {number} is not UTF-8",
                                     key="policy.policy") from None
        if not line or line.startswith("#"):
            continue
        kind = line.split(",", 1)[0].strip()
        if kind not in ("p", "g"):
            raise ConfigurationError(
                f"{path}: line {number} has rule type {kind[:20]!r}; the default model "
                "has only 'p' (policy) and 'g' (role) rules", key="policy.policy")
        rules += 1
    return rules


class CasbinPolicy:
    """Casbin least-privilege authorization: default deny, explainable, hot-reloadable.

    Implements :class:`endpointsec.protocols.Policy`. Give a ``policy`` CSV file or any
    Casbin ``adapter``; ``model`` defaults to the shipped model (see ``docs/policy.md``).
    ``watch=True`` starts a daemon thread that reloads the files when they change;
    call :meth:`close` (or use the object as a context manager) to stop it.
    """

    def __init__(
        self,
        *,
        model: str | Path | None = None,
        policy: str | Path | None = None,
        adapter: Any = None,
        dry_run: bool = False,
        watch: bool = False,
        watch_interval: float = 2.0,
        cache_size: int = 10_000,
        paths: PathOptions | None = None,
    ) -> None:
        if policy is not None and adapter is not None:
            raise ConfigurationError("give either a policy file or an adapter, not both",
                                     key="policy.policy")
        if cache_size < 0:
            raise ConfigurationError("must be at least 0", key="policy.cache_size")
        if watch_interval <= 0:
            raise ConfigurationError("must be greater than 0", key="policy.watch_interval")
        self._model_path = Path(model) if model is not None else None
        self._policy_path = Path(policy) if policy is not None else None
        self._adapter = adapter
        self._dry_run = dry_run
        self._cache_size = cache_size
        self._normalizer = PathNormalizer(options=paths)
        self._reload_lock = threading.Lock()
        self.generation = 0
        #: Why the last reload failed (``None`` after a successful one).
        self.last_reload_error: str | None = None
        self.reload_failures = 0  # observability: failed reloads, for metrics
        self._snapshot: _Snapshot = self._build()
        self._watch_interval = watch_interval
        self._watched = tuple(p for p in (self._model_path, self._policy_path) if p is not None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loaded_sig = _file_signature(self._watched)
        self._pending_sig: tuple[_Stat | None, ...] | None = None
        if watch:
            if not self._watched:
                raise ConfigurationError("watch needs a policy or model file to watch",
                                         key="policy.watch")
            self._start_watcher()
            _register_fork_hook(self)

    # -- Policy protocol ---------------------------------------------------------------

    @property
    def dry_run(self) -> bool:
        """Decisions are logged as "would deny" but not enforced."""
        return self._dry_run

    def normalize(self, raw_path: str) -> str:
        """The canonical path for matching (see :mod:`endpointsec.policy.paths`)."""
        return self._normalizer.normalize(raw_path)

    def evaluate(self, *, subjects: Sequence[str], resource: str, action: str,
                 domain: str | None = None) -> PolicyResult:
        """Decide for the current snapshot; never raises (an error is a deny)."""
        return self._snapshot.evaluate(
            subjects if type(subjects) is tuple else tuple(subjects), resource, action, domain)

    def roles_for(self, *, subjects: Sequence[str], domain: str | None = None) -> frozenset[str]:
        """Every role the subjects hold through ``g`` rules, directly or inherited."""
        try:
            return self._snapshot.roles(
                subjects if type(subjects) is tuple else tuple(subjects), domain or "*")
        except Exception as exc:
            logger.error("role lookup failed: %s: %s", type(exc).__name__, exc)
            return frozenset()

    # -- introspection -----------------------------------------------------------------

    @property
    def engine(self) -> str:
        """``"indexed"`` for the default model, ``"enforcer"`` for a plain Casbin enforcer."""
        return self._snapshot.kind

    @property
    def request_tokens(self) -> tuple[str, ...]:
        """The model's request fields (``sub``, ``dom``, ``obj``, ``act``), in order."""
        return self._snapshot.request_tokens

    # -- loading and reloading ---------------------------------------------------------

    def _build(self, *, reloading: bool = False) -> _Snapshot:
        model_text: str | None = None
        if self._model_path is not None:
            try:
                model_text = self._model_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"cannot read model {self._model_path}: {exc}",
                                         key="policy.model") from None
        default = model_text is None or model_text.strip() == _default_model().strip()
        adapter = self._adapter
        if adapter is None and self._policy_path is not None:
            if not self._policy_path.is_file():
                raise ConfigurationError(f"file not found: {self._policy_path}",
                                         key="policy.policy")
            adapter = casbin.FileAdapter(str(self._policy_path))
        if default and adapter is None:
            raise ConfigurationError("no policy configured: give a policy file or an adapter "
                                     "(or allow_authenticated = true)", key="policy")
        source = str(self._policy_path) if self._policy_path is not None else "adapter"
        # A policy file is scanned first, line by line as Casbin splits it: every problem
        # is reported at once with its line number, and lines Casbin would skip or
        # misread (unknown rule types, quotes, unbalanced brackets) are refused.
        scanned: list[PolicyLine] | None = None
        if self._adapter is None and self._policy_path is not None:
            scanned = self._scan_policy_file(self._policy_path, default=default)
        if default:
            rules = (_check_rule_types(self._policy_path)
                     if self._adapter is None and self._policy_path is not None else None)
            if rules == 0 and reloading:
                # What a file caught between truncation and write looks like.
                raise ConfigurationError(
                    f"{self._policy_path} has no rules (to refuse every request, write a "
                    "deny rule)", key="policy.policy")
            model = casbin.Model()
            model.load_model_from_text(_default_model())
            try:
                adapter.load_policy(model)
            except Exception as exc:
                raise ConfigurationError(f"policy could not be loaded from {source}: "
                                         f"{type(exc).__name__}: {exc}",
                                         key="policy.policy") from None
            p_rules = [list(r) for r in model.model["p"]["p"].policy]
            g_rules = [list(r) for r in model.model["g"]["g"].policy]
            p_where = g_where = None
            if scanned is not None:
                p_lines = [ln for ln in scanned if ln.key == "p"]
                g_lines = [ln for ln in scanned if ln.key == "g"]
                if ([list(ln.values) for ln in p_lines] == p_rules
                        and [list(ln.values) for ln in g_lines] == g_rules):
                    p_where = [ln.where for ln in p_lines]
                    g_where = [ln.where for ln in g_lines]
            return _IndexedSnapshot(
                p_rules=p_rules, g_rules=g_rules, cache_size=self._cache_size,
                source=source, p_where=p_where, g_where=g_where,
            )
        try:
            enforcer = casbin.Enforcer(str(self._model_path), adapter)
        except Exception as exc:
            raise ConfigurationError(
                f"Casbin could not load model {self._model_path} with policy from {source}: "
                f"{type(exc).__name__}: {exc}", key="policy.model") from None
        return _EnforcerSnapshot(enforcer=enforcer, cache_size=self._cache_size)

    def _scan_policy_file(self, path: Path, *, default: bool) -> list[PolicyLine]:
        """The rules of ``path`` with their line numbers; raises with every problem."""
        keys: frozenset[str] = DEFAULT_KEYS
        if not default and self._model_path is not None:
            model = casbin.Model()
            try:
                model.load_model(str(self._model_path))
            except Exception as exc:
                raise ConfigurationError(
                    f"Casbin could not load model {self._model_path}: "
                    f"{type(exc).__name__}: {exc}", key="policy.model") from None
            keys = frozenset(k for sec in ("p", "g") if sec in model.model
                             for k in model.model[sec])
            if "p" not in keys:  # not a usable model: Casbin's own error says why
                return []
        try:
            lines, findings = read_policy_file(path, keys=keys, check_quotes=default)
        except OSError as exc:
            raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}",
                                     key="policy.policy") from None
        if default:
            findings += check_rules(lines)
        if findings:
            raise refused(str(path), findings)
        return lines

    def reload(self) -> None:
        """Reload the model and policy now and swap them in atomically.

        On failure the last good policy stays in force, the reason is logged and kept in
        :attr:`last_reload_error`, and :class:`ConfigurationError` is raised.
        """
        with self._reload_lock:
            try:
                snapshot = self._build(reloading=True)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ConfigurationError) else (
                    f"{type(exc).__name__}: {exc}")
                self.last_reload_error = reason
                self.reload_failures += 1  # observability
                logger.error("policy reload failed; keeping the last good policy: %s", reason)
                if isinstance(exc, ConfigurationError):
                    raise
                raise ConfigurationError(reason, key="policy") from exc
            self._snapshot = snapshot
            # Every write of ours so far is in what was just read: none is pending any
            # more (set under the same lock as the read, so a write made after it still
            # counts).
            self._own_pending = 0
            self.generation += 1
            self.last_reload_error = None
            logger.info("policy reloaded (generation %d, %s engine)",
                        self.generation, snapshot.kind)

    # -- watching ----------------------------------------------------------------------

    def _start_watcher(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch_loop, name="endpointsec-policy-watch",
                                        daemon=True)
        self._thread.start()

    def _watch_loop(self) -> None:
        while not self._stop.wait(self._watch_interval):
            self.check_files()

    def check_files(self) -> None:
        """One watcher step: reload once the watched files changed and then held still
        for one interval (so a file being written is not loaded half-way)."""
        sig = _file_signature(self._watched)
        if sig == self._loaded_sig:
            self._pending_sig = None
            return
        if sig != self._pending_sig:
            self._pending_sig = sig
            return
        self._pending_sig = None
        self._loaded_sig = sig  # a failed version is not retried until it changes again
        with contextlib.suppress(ConfigurationError):  # logged; the last good one stays
            self.reload()

    @property
    def watching(self) -> bool:
        """The watcher thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the watcher thread (idempotent)."""
        watcher = getattr(self, "_policy_watcher", None)
        if watcher is not None:
            watcher.close()
        if hasattr(self._adapter, "forget_after_fork"):  # a database adapter's connection
            self._adapter.close()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self._watch_interval * 2))

    def __enter__(self) -> CasbinPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runtime changes -----------------------------------------------------------------

    def add_rules(self, rules: Iterable[Sequence[str]]) -> int:
        """Add ``p`` rules (``(subject, domain, object, action, allow|deny)``); rules
        already present are skipped. Written through the adapter, announced to the other
        replicas, applied to this process without a full reload. The number added."""
        return self._change(add=[("p", _values(r)) for r in rules])

    def remove_rules(self, rules: Iterable[Sequence[str]]) -> int:
        """Remove ``p`` rules (every copy of each); the number of rules that were present."""
        return self._change(remove=[("p", _values(r)) for r in rules])

    def update_rules(self, old_rules: Iterable[Sequence[str]],
                     new_rules: Iterable[Sequence[str]]) -> int:
        """Replace each of ``old_rules`` by the matching one of ``new_rules``, in its place
        in policy order; the number of rules replaced (an absent old rule is skipped)."""
        olds, news = [_values(r) for r in old_rules], [_values(r) for r in new_rules]
        if len(olds) != len(news):
            raise ConfigurationError("update_rules needs as many new rules as old ones",
                                     key="policy")
        return self._change(update=[(("p", o), ("p", n)) for o, n in zip(olds, news,
                                                                         strict=True)])

    def add_role_for(self, user: str, role: str, *, domain: str = "*") -> bool:
        """Grant ``role`` to ``user`` in ``domain`` (``"*"``: every domain) with a ``g``
        rule; ``False`` if it was already granted."""
        return self._change(add=[("g", (user, role, domain))]) > 0

    def delete_role_for(self, user: str, role: str, *, domain: str = "*") -> bool:
        """Remove the ``g`` rule granting ``role`` to ``user`` in ``domain``; ``False`` if
        there was none."""
        return self._change(remove=[("g", (user, role, domain))]) > 0

    def _change(self, *, add: Sequence[RuleChange] = (), remove: Sequence[RuleChange] = (),
                update: Sequence[tuple[RuleChange, RuleChange]] = ()) -> int:
        with self._reload_lock:
            snap = self._snapshot
            if not isinstance(snap, _IndexedSnapshot):
                raise ConfigurationError("run-time rule changes need the shipped default "
                                         "model", key="policy.model")
            new, added, removed, updated = _derive(snap, add=add, remove=remove,
                                                   update=update)
            count = len(added) + len(removed) + len(updated)
            if not count:
                return 0
            announced = self._announced_by_write() or (
                getattr(self, "_policy_watcher", None) is not None)
            if announced:
                self._own_pending = getattr(self, "_own_pending", 0) + 1
            try:
                self._write_through(added, removed, updated)
            except Exception:
                if announced:
                    self._own_pending -= 1
                raise
            self._snapshot = new
            self.generation += 1
            self.last_reload_error = None
            logger.info("policy changed at run time (generation %d): %d added, %d removed, "
                        "%d updated", self.generation, len(added), len(removed), len(updated))
        watcher = getattr(self, "_policy_watcher", None)
        if watcher is not None and not self._announced_by_write():
            watcher.publish(_announcement(self.origin))
        if not getattr(self._adapter, "last_write_exact", True):
            # The store changed other rows than asked (a concurrent change of the same
            # rules by another replica): the table, not this process, says what holds.
            with contextlib.suppress(ConfigurationError):  # logged; the last good stays
                self.reload()
        return count

    def _announced_by_write(self) -> bool:
        """The adapter announces a write in its own transaction (PostgreSQL NOTIFY)."""
        return bool(getattr(self._adapter, "notify_channel", None))

    def _write_through(self, added: Sequence[RuleChange], removed: Sequence[RuleChange],
                       updated: Sequence[tuple[RuleChange, RuleChange]]) -> None:
        """Write the changes to the adapter (if it stores rules); on failure nothing
        changes here and :class:`PolicyStoreUnavailable` is raised."""
        adapter = self._adapter
        if adapter is None:
            return  # a policy file: the change lives in this process until the next reload
        if hasattr(adapter, "notify_payload"):
            # Delivered in commit order: the other replicas apply the change itself.
            adapter.notify_payload = _announcement(self.origin, added, removed, updated)
        try:
            for ptype, group in _by_type(added):
                _call(adapter, "add_policies", "add_policy", ptype, group)
            for ptype, group in _by_type(removed):
                _call(adapter, "remove_policies", "remove_policy", ptype, group)
            for ptype in ("p", "g"):
                pairs = [(o[1], n[1]) for o, n in updated if o[0] == ptype]
                if pairs:
                    olds, news = [list(o) for o, _ in pairs], [list(n) for _, n in pairs]
                    if hasattr(adapter, "update_policies"):
                        adapter.update_policies(ptype, ptype, olds, news)
                    elif hasattr(adapter, "update_policy"):
                        for o, n in zip(olds, news, strict=True):
                            adapter.update_policy(ptype, ptype, o, n)
        except PolicyStoreUnavailable:
            raise
        except NotImplementedError:
            return  # a read-only adapter: the change lives in this process
        except Exception as exc:
            raise PolicyStoreUnavailable(f"the policy adapter refused the change: "
                                         f"{type(exc).__name__}: {exc}") from exc

    # -- replicas ----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """This process's name in change notifications (its own are not reloaded)."""
        token = getattr(self, "_origin_token", None)
        if token is None:
            token = self._origin_token = secrets.token_hex(6)
        return f"{token}.{os.getpid()}"

    def attach_watcher(self, watcher: Any) -> None:
        """Follow changes announced by other replicas through ``watcher`` (see
        :mod:`endpointsec.policy.watcher`): each announcement, and each reconnection
        (announcements may have been missed), reloads the policy in full."""
        self._policy_watcher = watcher
        watcher.start(self._on_announcements)
        _register_fork_hook(self)

    def _on_announcements(self, payloads: Sequence[str]) -> bool:
        """Follow the announcements of a batch, in order.

        Our own are skipped (already applied). Changes announced by another replica
        through PostgreSQL (delivered in commit order) are applied incrementally, unless
        one of our own writes is still unannounced (the foreign change may then have
        committed before it, and the order of the two matters): then, and for an
        announcement without changes (``NOTIFY`` after a change in the table, Redis, a
        reconnection), the policy is reloaded in full.

        Returns ``False`` if the store could not be reached (the watcher then reconnects
        and tries again), ``True`` otherwise (a policy that fails to load is refused,
        logged, and the last good one kept).
        """
        origin = self.origin
        with self._reload_lock:
            pending = getattr(self, "_own_pending", 0)
            changes: list[dict[str, Any]] = []
            full = False
            for payload in payloads:
                message = _parse_announcement(payload)
                if message is not None and message.get("origin") == origin:
                    pending = max(0, pending - 1)
                    continue
                change = message.get("changes") if message is not None else None
                if not isinstance(change, dict) or pending > 0:
                    full = True
                else:
                    changes.append(change)
            self._own_pending = pending
            if not full and changes:
                full = not self._apply_announced(changes)
        if not full:
            return True
        try:
            self.reload()  # also forgets our pending writes: it read them all
        except ConfigurationError:
            return not getattr(self._adapter, "unavailable", False)
        return True

    def _apply_announced(self, changes: Sequence[dict[str, Any]]) -> bool:
        """Apply announced changes (under the reload lock); ``False``: reload instead."""
        snap = self._snapshot
        if not isinstance(snap, _IndexedSnapshot):
            return False
        try:
            for change in changes:
                snap, _, _, _ = _derive(
                    snap,
                    add=[_rule_change(r) for r in change.get("add", ())],
                    remove=[_rule_change(r) for r in change.get("remove", ())],
                    update=[(_rule_change(o), _rule_change(n))
                            for o, n in change.get("update", ())])
        except (ConfigurationError, TypeError, ValueError) as exc:
            logger.warning("an announced policy change could not be applied (%s); "
                           "reloading in full", exc)
            return False
        self._snapshot = snap
        self.generation += 1
        self.last_reload_error = None
        logger.info("policy changed by another replica (generation %d)", self.generation)
        return True


# After fork (gunicorn with preload_app), threads do not survive: restart watchers.
_watching: weakref.WeakSet[CasbinPolicy] = weakref.WeakSet()
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    for policy in list(_watching):
        if policy._thread is not None and not policy._stop.is_set():
            policy._start_watcher()
        forget = getattr(policy._adapter, "forget_after_fork", None)
        if forget is not None:
            forget()
        watcher = getattr(policy, "_policy_watcher", None)
        if watcher is not None:
            watcher.after_fork()


def _register_fork_hook(policy: CasbinPolicy) -> None:
    global _fork_hook_installed
    _watching.add(policy)
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        hook: Callable[[], None] = _after_fork_in_child
        os.register_at_fork(after_in_child=hook)
        _fork_hook_installed = True


# -- runtime changes: copy-on-write snapshots -----------------------------------------------

#: A change of one rule: ``("p", (sub, dom, obj, act, eft))`` or ``("g", (user, role, dom))``.
RuleChange = tuple[str, tuple[str, ...]]


def _check_rule(ptype: str, rule: tuple[str, ...], *, compile_object: bool = True) -> None:
    where = f"rule ({', '.join([ptype, *rule])[:120]})"
    if not all(isinstance(v, str) for v in rule):
        raise ConfigurationError(f"{where}: every value must be a string", key="policy")
    if ptype == "p":
        if len(rule) != 5:
            raise ConfigurationError(
                f"{where} has {len(rule)} values after 'p'; the default model needs 5: "
                "subject, domain, object, action, allow|deny", key="policy")
        if rule[4] not in ("allow", "deny"):
            raise ConfigurationError(f"{where} has effect {rule[4][:40]!r}; use 'allow' or "
                                     "'deny'", key="policy")
        if compile_object and not _is_literal(rule[2]):
            _IndexedSnapshot._matcher(rule[2], where)
    elif ptype == "g":
        if len(rule) != 3:
            raise ConfigurationError(
                f"{where} has {len(rule)} values after 'g'; the default model needs 3: "
                "user, role, domain ('*' for every domain)", key="policy")
    else:
        raise ConfigurationError(f"unknown rule type {ptype[:20]!r}; use 'p' or 'g'",
                                 key="policy")


class _Editor:
    """Builds the next :class:`_IndexedSnapshot` from one: the index and the role graph
    are copied shallowly, and only the dictionaries, buckets and lists a change touches
    are copied before they are changed (the old snapshot is never modified)."""

    def __init__(self, snap: _IndexedSnapshot) -> None:
        self.snap = snap
        self.index: dict[tuple[str, str], dict[str, _Bucket]] = dict(snap._index)
        self.edges: dict[str, dict[str, list[str]]] = dict(snap._edges)
        self._owned: dict[int, object] = {}  # id -> object copied in this edit
        # Where the next added rule goes in policy order: after every rule ever indexed.
        self.next_index: int = getattr(snap, "_next_index", snap.rule_count)
        self.rule_count = snap.rule_count
        self.role_count = snap.role_count

    def _own(self, obj: Any) -> bool:
        return id(obj) in self._owned

    def _mine(self, obj: Any) -> Any:
        self._owned[id(obj)] = obj
        return obj

    def _list(self, d: dict[Any, Any], key: Any) -> list[Any]:
        lst = d.get(key)
        if lst is None:
            lst = d[key] = self._mine([])
        elif not self._own(lst):
            lst = d[key] = self._mine(list(lst))
        return lst  # type: ignore[no-any-return]

    def _bucket(self, sub: str, dom: str, act: str, *, create: bool) -> _Bucket | None:
        key = (sub, dom)
        by_action = self.index.get(key)
        if by_action is None:
            if not create:
                return None
            by_action = self.index[key] = self._mine({})
        elif not self._own(by_action):
            by_action = self.index[key] = self._mine(dict(by_action))
        bucket = by_action.get(act)
        if bucket is None:
            if not create:
                return None
            bucket = by_action[act] = self._mine(_Bucket())
        elif not self._own(bucket):
            old = bucket
            bucket = by_action[act] = self._mine(_Bucket())
            bucket.exact = dict(old.exact)
            bucket.by_segment = dict(old.by_segment)
            bucket.other = self._mine(list(old.other))
        return bucket

    def _prune(self, sub: str, dom: str, act: str) -> None:
        by_action = self.index[(sub, dom)]
        bucket = by_action[act]
        if not (bucket.exact or bucket.by_segment or bucket.other):
            del by_action[act]
            if not by_action:
                del self.index[(sub, dom)]

    # -- p rules -------------------------------------------------------------------------

    def find(self, rule: tuple[str, ...]) -> list[_Rule]:
        """Every rule equal to ``rule`` in the current state of the edit."""
        sub, dom, obj, act, eft = rule
        bucket = self.index.get((sub, dom), {}).get(act)
        if bucket is None:
            return []
        deny = eft == "deny"
        if _is_literal(obj):
            return [r for r in bucket.exact.get(obj, ()) if r.deny is deny]
        seg = _first_segment(obj)
        entries = bucket.other if seg is None else bucket.by_segment.get(seg, ())
        return [r for _, r in entries if r.obj == obj and r.deny is deny]

    def add_p(self, rule: tuple[str, ...], index: int | None = None) -> None:
        sub, dom, obj, act, eft = rule
        if index is None:
            index = self.next_index
            self.next_index += 1
        new = _Rule(index=index, sub=sub, dom=dom, obj=obj, act=act, deny=eft == "deny")
        bucket = self._bucket(sub, dom, act, create=True)
        if bucket is None:  # pragma: no cover - create=True always returns one
            raise RuntimeError("no bucket")
        if _is_literal(obj):
            self._list(bucket.exact, obj).append(new)
        else:
            match = _IndexedSnapshot._matcher(obj, "policy rule")
            seg = _first_segment(obj)
            if seg is None:
                bucket.other.append((match, new))
            else:
                self._list(bucket.by_segment, seg).append((match, new))
        self.rule_count += 1

    def remove_p(self, rule: tuple[str, ...]) -> list[_Rule]:
        """Remove every copy of ``rule``; the removed rules."""
        found = self.find(rule)
        if not found:
            return found
        sub, dom, obj, act, _ = rule
        bucket = self._bucket(sub, dom, act, create=False)
        if bucket is None:  # pragma: no cover - find() saw it
            return []
        gone = {id(r) for r in found}
        if _is_literal(obj):
            lst = self._list(bucket.exact, obj)
            lst[:] = [r for r in lst if id(r) not in gone]
            if not lst:
                del bucket.exact[obj]
        else:
            seg = _first_segment(obj)
            if seg is None:
                bucket.other[:] = [e for e in bucket.other if id(e[1]) not in gone]
            else:
                entries = self._list(bucket.by_segment, seg)
                entries[:] = [e for e in entries if id(e[1]) not in gone]
                if not entries:
                    del bucket.by_segment[seg]
        self._prune(sub, dom, act)
        self.rule_count -= len(found)
        return found

    # -- g rules -------------------------------------------------------------------------

    def has_g(self, rule: tuple[str, ...]) -> bool:
        user, role, dom = rule
        return role in self.edges.get(dom, {}).get(user, ())

    def add_g(self, rule: tuple[str, ...]) -> None:
        user, role, dom = rule
        graph = self.edges.get(dom)
        if graph is None:
            graph = self.edges[dom] = self._mine({})
        elif not self._own(graph):
            graph = self.edges[dom] = self._mine(dict(graph))
        self._list(graph, user).append(role)
        self.role_count += 1

    def remove_g(self, rule: tuple[str, ...]) -> int:
        user, role, dom = rule
        if not self.has_g(rule):
            return 0
        graph = self.edges[dom]
        if not self._own(graph):
            graph = self.edges[dom] = self._mine(dict(graph))
        roles = self._list(graph, user)
        count = roles.count(role)
        roles[:] = [r for r in roles if r != role]
        if not roles:
            del graph[user]
            if not graph:
                del self.edges[dom]
        self.role_count -= count
        return count

    def snapshot(self) -> _IndexedSnapshot:
        old = self.snap
        new = _IndexedSnapshot.__new__(_IndexedSnapshot)
        new.__dict__.update(old.__dict__)  # whatever else a snapshot carries
        new._index = self.index
        new._edges = self.edges
        new._reach_cache = {}
        new._views = _bounded(old.cache_size)
        new._roles = _bounded(old.cache_size)
        new.rule_count = self.rule_count
        new.role_count = self.role_count
        new._next_index = self.next_index  # type: ignore[attr-defined]
        return new



def _derive(snap: _IndexedSnapshot, *, add: Sequence[RuleChange] = (),
            remove: Sequence[RuleChange] = (),
            update: Sequence[tuple[RuleChange, RuleChange]] = (),
            ) -> tuple[_IndexedSnapshot, list[RuleChange], list[RuleChange],
                       list[tuple[RuleChange, RuleChange]]]:
    """The snapshot after the changes, and the changes that had an effect.

    A rule is in the policy or not: adding a present rule does nothing, removing a rule
    removes every copy, updating a rule rewrites it in its place (policy order decides
    which rule explains a decision) and, if the new rule was already present, keeps the
    first of the two places. The same answers as ``casbin.Enforcer`` after the same
    ``add_policy`` / ``remove_policy`` (until absent) / ``update_policy`` calls.
    """
    for ptype, rule in [*add, *(new for _, new in update)]:
        _check_rule(ptype, rule)
    for ptype, rule in [*remove, *(old for old, _ in update)]:
        _check_rule(ptype, rule, compile_object=False)  # an invalid one is not present
    ed = _Editor(snap)
    added: list[RuleChange] = []
    removed: list[RuleChange] = []
    updated: list[tuple[RuleChange, RuleChange]] = []
    for ptype, rule in add:
        if ptype == "p":
            if not ed.find(rule):
                ed.add_p(rule)
                added.append((ptype, rule))
        elif not ed.has_g(rule):
            ed.add_g(rule)
            added.append((ptype, rule))
    for ptype, rule in remove:
        if (ed.remove_p(rule) if ptype == "p" else ed.remove_g(rule)):
            removed.append((ptype, rule))
    for (optype, old), (nptype, new) in update:
        if optype != nptype:
            raise ConfigurationError("an update keeps the rule type ('p' or 'g')",
                                     key="policy")
        if old == new:
            continue
        if optype == "p":
            gone = ed.remove_p(old)
            if not gone:
                continue
            place = min(r.index for r in gone)
            present = ed.remove_p(new)
            if present:
                place = min(place, *(r.index for r in present))
            ed.add_p(new, index=place)
        else:
            if not ed.remove_g(old):
                continue
            ed.remove_g(new)
            ed.add_g(new)
        updated.append(((optype, old), (nptype, new)))
    return ed.snapshot(), added, removed, updated


def _values(rule: Sequence[str]) -> tuple[str, ...]:
    if isinstance(rule, str):
        raise ConfigurationError("a rule is a sequence of values, not a string", key="policy")
    return tuple(rule)


def _by_type(changes: Sequence[RuleChange]) -> list[tuple[str, list[list[str]]]]:
    out: dict[str, list[list[str]]] = {}
    for ptype, rule in changes:
        out.setdefault(ptype, []).append(list(rule))
    return list(out.items())


def _call(adapter: Any, batch: str, single: str, ptype: str, rules: list[list[str]]) -> None:
    if hasattr(adapter, batch):
        getattr(adapter, batch)(ptype, ptype, rules)
    else:
        for rule in rules:
            getattr(adapter, single)(ptype, ptype, rule)


#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more: larger changes are
#: announced without their rules (the replicas then reload in full).
_MAX_ANNOUNCEMENT = 7900


def _announcement(origin: str, added: Sequence[RuleChange] = (),
                  removed: Sequence[RuleChange] = (),
                  updated: Sequence[tuple[RuleChange, RuleChange]] = ()) -> str:
    """The payload announcing a change: its origin and, if it fits, the change."""
    message: dict[str, Any] = {"origin": origin}
    if added or removed or updated:
        message["changes"] = {
            "add": [[t, *r] for t, r in added],
            "remove": [[t, *r] for t, r in removed],
            "update": [[[o[0], *o[1]], [n[0], *n[1]]] for o, n in updated],
        }
    text = json.dumps(message, separators=(",", ":"))
    if len(text.encode()) > _MAX_ANNOUNCEMENT:
        text = json.dumps({"origin": origin}, separators=(",", ":"))
    return text


def _parse_announcement(payload: str) -> dict[str, Any] | None:
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _rule_change(item: Any) -> RuleChange:
    if not isinstance(item, list) or not item or not all(isinstance(v, str) for v in item):
        raise ValueError("not a rule")
    return item[0], tuple(item[1:])
