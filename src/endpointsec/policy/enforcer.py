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
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin

from endpointsec.errors import ConfigurationError
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
        self.by_segment: dict[str, list[tuple[Matcher, _Rule]]] = {}
        self.other: list[tuple[Matcher, _Rule]] = []

    def add(self, rule: _Rule, compiled: dict[str, Matcher]) -> None:
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
            for match, rule in self.by_segment.get(segment, ()):
                if match(resource):
                    out.append(rule)
        for match, rule in self.other:
            if match(resource):
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


class _Bounded(dict[Any, Any]):
    """A dict that drops its oldest entries beyond ``size`` (insertion order)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def add(self, key: Any, value: Any) -> None:
        if self.size <= 0:
            return
        while len(self) >= self.size:
            try:
                del self[next(iter(self))]
            except (StopIteration, KeyError, RuntimeError):  # another thread got there
                break
        self[key] = value


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
        compiled: dict[str, Matcher] = {}
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
        self._views = _Bounded(cache_size)
        #: Per (subjects, domain): every role held.
        self._roles = _Bounded(cache_size)
        self.rule_count = len(p_rules)
        self.role_count = len(g_rules)

    @staticmethod
    def _matcher(template: str, where: str) -> Matcher:
        # Casbin's own regular expression, compiled once: the same answers by
        # construction, and faster than splitting the path into segments.
        try:
            return re.compile(_key_match2_regex(template)).match
        except re.error as exc:
            raise ConfigurationError(
                f"{where}: object {template[:120]!r} is not a valid keyMatch2 pattern "
                f"({exc})", key="policy.policy") from None

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
        self._roles.add(key, result)
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
                self._views.add(key, view)
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
        self._results = _Bounded(cache_size)
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
            return hit  # type: ignore[no-any-return]
        try:
            result = self._evaluate(subjects, resource, action, domain or "*")
        except Exception as exc:  # fail closed with a reason, never a 500
            return _failed(subjects, resource, action, exc)
        if len(resource) <= _MAX_CACHED_RESOURCE:
            self._results.add(key, result)
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
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self._watch_interval * 2))

    def __enter__(self) -> CasbinPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# After fork (gunicorn with preload_app), threads do not survive: restart watchers.
_watching: weakref.WeakSet[CasbinPolicy] = weakref.WeakSet()
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    for policy in list(_watching):
        if policy._thread is not None and not policy._stop.is_set():
            policy._start_watcher()


def _register_fork_hook(policy: CasbinPolicy) -> None:
    global _fork_hook_installed
    _watching.add(policy)
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        hook: Callable[[], None] = _after_fork_in_child
        os.register_at_fork(after_in_child=hook)
        _fork_hook_installed = True
