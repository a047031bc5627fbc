"""CasbinPolicy: semantics across subjects, explain, dry-run, reload, errors, adapters."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import casbin
import pytest
from policy_support import ListAdapter, csv_lines

from endpointsec.core import decide
from endpointsec.errors import ConfigurationError
from endpointsec.facts import MTLS, PeerIdentity, Principal, RequestFacts, RequestPrincipal
from endpointsec.facts import Requirements as Req
from endpointsec.identity.spiffe import parse_spiffe_id
from endpointsec.policy import DEFAULT_MODEL_PATH, CasbinPolicy
from endpointsec.policy import enforcer as enforcer_module

WEB = "spiffe://example.org/ns/shop/sa/web"
BATCH = "spiffe://example.org/ns/shop/sa/batch"
ISS_ALICE = "https://issuer.example#alice"

POLICY_P = [
    (WEB, "*", "/orders/:id", "GET", "allow"),
    (WEB, "*", "/orders", "POST", "allow"),
    ("admin", "*", "/admin/*", "*", "allow"),
    ("admin", "*", "/admin/keys", "DELETE", "deny"),
    (ISS_ALICE, "*", "/profile", "GET", "allow"),
    ("role:auditor", "*", "/audit/*", "GET", "allow"),
    ("tenant-admin", "acme", "/tenants/acme/*", "*", "allow"),
    ("suspended", "*", "/*", "*", "deny"),
    ("reader", "*", "/reports/:year/:month", "GET", "allow"),
]
POLICY_G = [
    ("role:ops", "admin", "*"),
    (BATCH, "suspended", "*"),
    ("bob-tenant", "tenant-admin", "acme"),
    ("group:finance", "reader", "*"),
]

# (id, subjects, method, path, domain, allowed, reason fragment)
SEMANTICS = [
    ("peer-allowed-by-template", [WEB], "GET", "/orders/42", None, True, "for '" + WEB),
    ("template-is-one-segment", [WEB], "GET", "/orders/42/items", None, False,
     "no rule matched"),
    ("method-must-match", [WEB], "DELETE", "/orders/42", None, False, "no rule matched"),
    ("exact-object", [WEB], "POST", "/orders", None, True, "allowed"),
    ("request-principal", [ISS_ALICE], "GET", "/profile", None, True, "allowed"),
    ("role-from-token-via-g", [ISS_ALICE, "role:ops"], "PUT", "/admin/users", None, True,
     "held by 'role:ops'"),
    ("deny-rule-overrides-allow", ["role:ops"], "DELETE", "/admin/keys", None, False,
     "deny rule for 'admin'"),
    ("deny-on-one-subject-overrides-allow-on-another", [BATCH, WEB], "GET", "/orders/1", None,
     False, "held by '" + BATCH),
    ("scope-subject-needs-a-rule", ["scope:orders.read"], "GET", "/orders/1", None, False,
     "no rule matched"),
    ("nothing-matches-is-deny", ["nobody"], "GET", "/", None, False, "denied by default"),
    ("no-subjects-is-deny", [], "GET", "/orders/1", None, False, "no subject"),
    ("domain-rule-in-its-domain", ["bob-tenant"], "POST", "/tenants/acme/users", "acme",
     True, "tenant-admin"),
    ("domain-role-not-in-other-domain", ["bob-tenant"], "POST", "/tenants/acme/users",
     "globex", False, "in domain 'globex'"),
    ("domain-role-not-without-domain", ["bob-tenant"], "POST", "/tenants/acme/users", None,
     False, "no rule matched"),
    ("global-rule-applies-in-a-domain", [WEB], "GET", "/orders/7", "acme", True, "allowed"),
    ("group-role-multi-segment-template", ["group:finance"], "GET", "/reports/2026/11", None,
     True, "held by 'group:finance'"),
    ("star-domain-header-is-no-domain", ["bob-tenant"], "POST", "/tenants/acme/users", "*",
     False, "no rule matched"),
]


def _write(path: Path, p: list[tuple[str, ...]], g: list[tuple[str, ...]]) -> Path:
    path.write_text(csv_lines(p, g), encoding="utf-8")
    return path


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "policy.csv", POLICY_P, POLICY_G)


@pytest.fixture
def policy(policy_file: Path) -> CasbinPolicy:
    return CasbinPolicy(policy=policy_file)


@pytest.mark.parametrize(("subjects", "method", "path", "domain", "allowed", "reason"),
                         [c[1:] for c in SEMANTICS], ids=[c[0] for c in SEMANTICS])
def test_semantics(policy: CasbinPolicy, subjects: list[str], method: str, path: str,
                   domain: str | None, allowed: bool, reason: str) -> None:
    result = policy.evaluate(subjects=subjects, resource=path, action=method, domain=domain)
    assert result.allowed is allowed
    assert reason in result.reason
    assert result.subjects == tuple(subjects)
    # Same answer from the cache.
    again = policy.evaluate(subjects=subjects, resource=path, action=method, domain=domain)
    assert again == result


def test_engine_is_indexed_for_the_default_model(policy_file: Path, tmp_path: Path) -> None:
    assert CasbinPolicy(policy=policy_file).engine == "indexed"
    copy = tmp_path / "model.conf"
    copy.write_text(DEFAULT_MODEL_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    assert CasbinPolicy(model=copy, policy=policy_file).engine == "indexed"


def test_explain_names_the_rule(policy: CasbinPolicy) -> None:
    result = policy.evaluate(subjects=["role:ops"], resource="/admin/keys", action="DELETE")
    assert result.matched_rule == ("p", "admin", "*", "/admin/keys", "DELETE", "deny")
    allowed = policy.evaluate(subjects=["role:ops"], resource="/admin/x", action="GET")
    assert allowed.matched_rule == ("p", "admin", "*", "/admin/*", "*", "allow")


def test_roles_for(policy: CasbinPolicy) -> None:
    assert policy.roles_for(subjects=["role:ops", BATCH]) == {"admin", "suspended"}
    assert policy.roles_for(subjects=["bob-tenant"], domain="acme") == {"tenant-admin"}
    assert policy.roles_for(subjects=["bob-tenant"]) == frozenset()


def _facts(*, subjects_peer: str | None, roles: frozenset[str] = frozenset(),
           path: str = "/orders/1", method: str = "GET",
           requirements: Req | None = None) -> RequestFacts:
    peer = PeerIdentity(subject="CN=x", fingerprint_sha256="00" * 32,
                        uri_sans=(subjects_peer,),
                        spiffe_id=parse_spiffe_id(subjects_peer)) if subjects_peer else None
    token = RequestPrincipal(issuer="https://issuer.example", subject="alice", roles=roles)
    return RequestFacts(method=method, raw_path=path, path=path,
                        principal=Principal(peer=peer, request=token),
                        requirements=requirements or Req(mtls=MTLS.OPTIONAL))


def test_through_the_core_decision(policy: CasbinPolicy) -> None:
    allowed = decide(_facts(subjects_peer=WEB), policy)
    assert allowed.allowed and allowed.status == 200
    assert allowed.matched_rule == ("p", WEB, "*", "/orders/:id", "GET", "allow")
    denied = decide(_facts(subjects_peer=BATCH), policy)
    assert denied.status == 403
    assert "deny rule for 'suspended'" in denied.reason
    assert "rule:     p, suspended, *, /*, *, deny" in denied.explain()


def test_route_roles_use_implicit_roles(policy: CasbinPolicy) -> None:
    req = Req(mtls=MTLS.OPTIONAL, roles=frozenset({"admin"}))
    decision = decide(_facts(subjects_peer=None, roles=frozenset({"ops"}), path="/admin/x",
                             requirements=req), policy)
    assert decision.allowed, decision.reason


def test_dry_run_lets_the_request_through_as_would_deny(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file, dry_run=True)
    assert policy.dry_run is True
    decision = decide(_facts(subjects_peer=BATCH), policy)
    assert decision.allowed is True
    assert decision.would_deny is True
    assert "would deny" in decision.explain()


# -- reload -------------------------------------------------------------------------------


def test_reload_swaps_the_policy_and_the_cache(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file)
    assert not policy.evaluate(subjects=["carol"], resource="/x", action="GET").allowed
    _write(policy_file, [("carol", "*", "/x", "GET", "allow")], [])
    policy.reload()
    assert policy.generation == 1
    assert policy.evaluate(subjects=["carol"], resource="/x", action="GET").allowed
    assert not policy.evaluate(subjects=[WEB], resource="/orders/1", action="GET").allowed


BAD_POLICIES = [
    ("too-few-fields", "p, alice, /x, GET\n", "has 3 values after 'p'"),
    ("unknown-effect", "p, alice, *, /x, GET, maybe\n", "use 'allow' or 'deny'"),
    ("g-without-domain", "g, alice, admin\n", "has 2 values after 'g'"),
    ("bad-template-regex", "p, alice, *, /x/**, GET, allow\n", "not a valid keyMatch2"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in BAD_POLICIES],
                         ids=[c[0] for c in BAD_POLICIES])
def test_failed_reload_keeps_the_last_good_policy(
    policy_file: Path, text: str, message: str, caplog: pytest.LogCaptureFixture,
) -> None:
    policy = CasbinPolicy(policy=policy_file)
    policy_file.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="endpointsec.policy"), \
            pytest.raises(ConfigurationError, match=message):
        policy.reload()
    assert "keeping the last good policy" in caplog.text
    assert policy.last_reload_error is not None and message in policy.last_reload_error
    assert policy.generation == 0
    assert policy.evaluate(subjects=[WEB], resource="/orders/1", action="GET").allowed
    # The same file is refused at start-up too.
    with pytest.raises(ConfigurationError, match=message):
        CasbinPolicy(policy=policy_file)


def test_reload_of_a_deleted_file_keeps_the_last_good_policy(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file)
    policy_file.unlink()
    with pytest.raises(ConfigurationError, match="file not found"):
        policy.reload()
    assert policy.evaluate(subjects=[WEB], resource="/orders/1", action="GET").allowed


def test_check_files_waits_until_the_file_holds_still(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file)
    _write(policy_file, [("carol", "*", "/x", "GET", "allow"), ("dave", "*", "/y", "GET",
                                                               "allow")], [])
    policy.check_files()  # change seen: pending
    assert policy.generation == 0
    policy.check_files()  # unchanged since: loaded
    assert policy.generation == 1
    assert policy.evaluate(subjects=["carol"], resource="/x", action="GET").allowed
    policy.check_files()
    assert policy.generation == 1


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_watcher_reloads_on_change_and_survives_a_bad_file(
    policy_file: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    policy = CasbinPolicy(policy=policy_file, watch=True, watch_interval=0.02)
    try:
        assert policy.watching
        _write(policy_file, [("carol", "*", "/x", "GET", "allow")], [])
        assert _wait_for(lambda: policy.generation >= 1), "watcher did not reload"
        assert policy.evaluate(subjects=["carol"], resource="/x", action="GET").allowed
        with caplog.at_level(logging.ERROR, logger="endpointsec.policy"):
            policy_file.write_text("p, broken\n", encoding="utf-8")
            assert _wait_for(lambda: policy.last_reload_error is not None)
        assert "keeping the last good policy" in caplog.text
        assert policy.evaluate(subjects=["carol"], resource="/x", action="GET").allowed
    finally:
        policy.close()
    assert not policy.watching


def test_watch_needs_a_file() -> None:
    with pytest.raises(ConfigurationError, match=r"policy\.watch"):
        CasbinPolicy(adapter=ListAdapter([("a", "*", "/", "GET", "allow")]), watch=True)


def test_after_fork_restarts_the_watcher(policy_file: Path) -> None:
    with CasbinPolicy(policy=policy_file, watch=True, watch_interval=0.05) as policy:
        # Simulate what fork leaves behind: a thread object that is not running.
        policy._stop.set()
        assert policy._thread is not None
        policy._thread.join(timeout=5)
        policy._stop.clear()
        assert not policy.watching
        enforcer_module._after_fork_in_child()
        assert policy.watching
    assert not policy.watching


def test_reload_under_concurrent_evaluation(policy_file: Path) -> None:
    """Readers never see an error or a half-built policy while reloads swap snapshots."""
    policy = CasbinPolicy(policy=policy_file)
    a = csv_lines([("carol", "*", "/x", "GET", "allow")], [])
    b = csv_lines([("carol", "*", "/x", "GET", "deny"), ("carol", "*", "/x", "GET", "allow")])
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[tuple[bool, str]] = set()

    def reader() -> None:
        try:
            while not stop.is_set():
                r = policy.evaluate(subjects=["carol"], resource="/x", action="GET")
                seen.add((r.allowed, r.reason))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(60):
            policy_file.write_text(a if i % 2 else b, encoding="utf-8")
            policy.reload()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors
    assert all(not t.is_alive() for t in threads)
    allowed_reasons = {reason for ok, reason in seen if ok}
    denied_reasons = {reason for ok, reason in seen if not ok}
    assert allowed_reasons <= {"allowed by a rule for 'carol'"}
    assert denied_reasons <= {"denied by a deny rule for 'carol'",
                              "no rule matched GET /x for 1 subject(s); denied by default"}


# -- caches ---------------------------------------------------------------------------------


def test_views_are_bounded(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file, cache_size=3)
    for i in range(10):
        policy.evaluate(subjects=[WEB, f"https://issuer.example#user-{i}"],
                        resource="/orders/1", action="GET")
        assert len(policy._snapshot._views) <= 3


def test_a_new_path_reuses_the_view_and_stores_no_path(policy_file: Path) -> None:
    """Distinct paths cost a bucket lookup in one view; nothing is keyed on the path, so
    a long or attacker-chosen path is never kept."""
    policy = CasbinPolicy(policy=policy_file)
    long_path = "/orders/" + "x" * 4000
    assert policy.evaluate(subjects=[WEB], resource=long_path, action="GET").allowed
    for i in range(100):
        assert policy.evaluate(subjects=[WEB], resource=f"/orders/{i}", action="GET").allowed
    views = policy._snapshot._views
    assert len(views) == 1
    assert all(long_path not in repr(k) and "/orders/" not in repr(k) for k in views)


def test_cache_disabled(policy_file: Path) -> None:
    policy = CasbinPolicy(policy=policy_file, cache_size=0)
    assert policy.evaluate(subjects=[WEB], resource="/orders/1", action="GET").allowed
    assert not policy.evaluate(subjects=[WEB], resource="/admin", action="GET").allowed
    assert len(policy._snapshot._views) == 0


def test_views_are_dropped_with_their_policy(tmp_path: Path) -> None:
    """A reload builds a new snapshot: an answer is never served from a view of the old
    policy."""
    f = tmp_path / "p.csv"
    f.write_text(f"p, {WEB}, *, /orders/:id, GET, allow\n", encoding="utf-8")
    policy = CasbinPolicy(policy=f)
    assert policy.evaluate(subjects=[WEB], resource="/orders/1", action="GET").allowed
    f.write_text(f"p, {WEB}, *, /orders/:id, GET, deny\n", encoding="utf-8")
    policy.reload()
    assert not policy.evaluate(subjects=[WEB], resource="/orders/2", action="GET").allowed


def test_trailing_newline_quirk_matches_casbin() -> None:
    """Casbin anchors keyMatch2 with ``$``, which also matches before a final newline;
    the index's exact-object lookup reproduces it (normalized paths never contain one)."""
    p = [("alice", "*", "/x", "GET", "allow")]
    ours = CasbinPolicy(adapter=ListAdapter(p))
    ref = casbin.Enforcer(str(DEFAULT_MODEL_PATH), ListAdapter(p))
    for obj in ("/x", "/x\n", "/x\n\n", "\n/x"):
        expected = ref.enforce("alice", "*", obj, "GET")
        assert ours.evaluate(subjects=["alice"], resource=obj, action="GET").allowed is expected


# -- bring your own model / adapter; Casbin errors are denials ---------------------------------

RBAC_MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && regexMatch(r.obj, p.obj) && r.act == p.act
"""


def test_custom_model_uses_the_plain_enforcer(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(RBAC_MODEL, encoding="utf-8")
    policy_file = tmp_path / "p.csv"
    policy_file.write_text("p, admin, ^/admin/.*$, GET\ng, alice, admin\n", encoding="utf-8")
    policy = CasbinPolicy(model=model, policy=policy_file)
    assert policy.engine == "enforcer"
    assert policy.request_tokens == ("sub", "obj", "act")
    result = policy.evaluate(subjects=["bob", "alice"], resource="/admin/x", action="GET")
    assert result.allowed
    assert result.matched_rule == ("p", "admin", "^/admin/.*$", "GET")
    assert policy.roles_for(subjects=["alice"]) == {"admin"}
    assert not policy.evaluate(subjects=["bob"], resource="/admin/x", action="GET").allowed


def test_custom_model_with_an_adapter(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(RBAC_MODEL, encoding="utf-8")
    adapter = ListAdapter([("admin", "^/a$", "GET")], [])
    adapter.g = [["alice", "admin"]]
    policy = CasbinPolicy(model=model, adapter=adapter)
    assert policy.evaluate(subjects=["alice"], resource="/a", action="GET").allowed
    adapter.p = []
    policy.reload()
    assert adapter.loads == 2
    assert not policy.evaluate(subjects=["alice"], resource="/a", action="GET").allowed


CASBIN_ERRORS = [
    ("unknown-field-in-matcher",
     RBAC_MODEL.replace("r.act == p.act", "r.act == p.nope"), "p, alice, ^/a$, GET\n",
     "NameNotDefined"),
    ("bad-regex-in-policy", RBAC_MODEL, "p, alice, ^/a**, GET\n", "multiple repeat"),
]


@pytest.mark.parametrize(("model_text", "policy_text", "fragment"),
                         [c[1:] for c in CASBIN_ERRORS], ids=[c[0] for c in CASBIN_ERRORS])
def test_casbin_errors_are_a_deny_with_a_reason(
    tmp_path: Path, model_text: str, policy_text: str, fragment: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = tmp_path / "model.conf"
    model.write_text(model_text, encoding="utf-8")
    policy_file = tmp_path / "p.csv"
    policy_file.write_text(policy_text, encoding="utf-8")
    policy = CasbinPolicy(model=model, policy=policy_file)
    with caplog.at_level(logging.ERROR, logger="endpointsec.policy"):
        result = policy.evaluate(subjects=["alice"], resource="/a", action="GET")
    assert result.allowed is False
    assert "policy evaluation failed" in result.reason
    assert fragment in result.reason
    assert "policy evaluation failed" in caplog.text
    decision = decide(_facts(subjects_peer=WEB, path="/a"), policy)
    assert decision.status == 403


def test_unfillable_request_definition_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(RBAC_MODEL.replace("r = sub, obj, act", "r = sub, obj, act, ip")
                     .replace("r.act == p.act", "r.act == p.act && r.ip == ''"),
                     encoding="utf-8")
    policy_file = tmp_path / "p.csv"
    policy_file.write_text("p, a, b, c\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="'ip'"):
        CasbinPolicy(model=model, policy=policy_file)


def test_unreadable_model_is_a_configuration_error(tmp_path: Path, policy_file: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"policy\.model"):
        CasbinPolicy(model=tmp_path / "missing.conf", policy=policy_file)
    broken = tmp_path / "broken.conf"
    broken.write_text("[request_definition]\nr = sub\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="Casbin could not load"):
        CasbinPolicy(model=broken, policy=policy_file)


def test_policy_and_adapter_exclude_each_other(policy_file: Path) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        CasbinPolicy(policy=policy_file, adapter=ListAdapter())


def test_default_model_needs_rules() -> None:
    with pytest.raises(ConfigurationError, match="no policy configured"):
        CasbinPolicy()


def test_adapter_failure_is_a_configuration_error() -> None:
    class Broken(ListAdapter):
        def load_policy(self, model: object) -> None:
            raise OSError("database is down")

    with pytest.raises(ConfigurationError, match="database is down"):
        CasbinPolicy(adapter=Broken())
