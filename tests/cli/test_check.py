"""``endpointsec check``: each kind of problem, and a clean configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from endpointsec.cli import main
from endpointsec.cli.check import lint, sample_path

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
IDP = "https://idp.example.com"

CLEAN_POLICY = f"""\
# the orders service reads orders; admins manage them, except the vault
p, {ORDERS}, *, /orders/:id, GET, allow
p, role:admin, *, /orders/*, *, allow
p, role:admin, *, /orders/vault, *, deny
g, {IDP}#alice, role:admin, *
p, orders:read, *, orders, read, allow
g, {ORDERS}, orders:read, *
"""

CLEAN_ROUTES = """
[[routes]]
path = "/health"
public = true

[[routes]]
path = "/orders/{id}"
methods = ["GET", "DELETE"]

[[routes]]
path = "/reports"
resource = "orders"
action = "read"
"""


def _project(tmp_path: Path, policy: str, routes: str = CLEAN_ROUTES,
             extra: str = "") -> Path:
    (tmp_path / "policy.csv").write_text(policy)
    config = tmp_path / "endpointsec.toml"
    config.write_text(f'[policy]\npolicy = "policy.csv"\n{extra}\n{routes}')
    return config


def test_clean_configuration_exits_0(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = _project(tmp_path, CLEAN_POLICY)
    assert main(["check", str(config)]) == 0
    assert capsys.readouterr().out == f"check {config}\n  0 problems found\n"


def test_config_is_found_like_serve_and_explain(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # no argument: $ENDPOINTSEC_CONFIG, else ./endpointsec.toml
    config = _project(tmp_path, CLEAN_POLICY)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "no configuration file" in err and "--config FILE" in err
    monkeypatch.setenv("ENDPOINTSEC_CONFIG", str(config))
    assert main(["check"]) == 0
    assert capsys.readouterr().out == f"check {config}\n  0 problems found\n"
    monkeypatch.delenv("ENDPOINTSEC_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    assert capsys.readouterr().out == "check endpointsec.toml\n  0 problems found\n"
    # --config, as in serve and explain
    assert main(["check", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"check {config}\n  0 problems found\n"
    assert main(["check", "other.toml", "--config", str(config)]) == 2
    assert "two configuration files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra_rule", "routes", "expected"),
    [
        pytest.param(f"p, {ORDERS}, *, /orders/:id, GET, allow",
                     CLEAN_ROUTES, "policy.csv:8: duplicate of line 2", id="duplicate"),
        pytest.param("p, role:ops, *, /ops, get, allow", CLEAN_ROUTES,
                     "action 'get' is not an upper-case HTTP method", id="lowercase-action"),
        pytest.param("p, role:ops, *, ops/x, GET, allow", CLEAN_ROUTES,
                     "object 'ops/x' is not a normalized path", id="relative-object"),
        pytest.param("p, role:ops, *, /a/../b, GET, allow", CLEAN_ROUTES,
                     "object '/a/../b' is not a normalized path", id="dot-dot-object"),
        pytest.param("p, role:ops, *, /a//b, GET, allow", CLEAN_ROUTES,
                     "object '/a//b' is not a normalized path", id="double-slash-object"),
        pytest.param("p, alice, *, /orders/:id, GET, allow", CLEAN_ROUTES,
                     "subject 'alice' is no caller's principal", id="bare-subject"),
        pytest.param("p, role:ops, *, /ops, GET, maybe", CLEAN_ROUTES,
                     "policy.csv:8: [p, role:ops, *, /ops, GET, maybe] has effect 'maybe'",
                     id="bad-effect"),
        pytest.param("p, role:admin, *, /orders/vault, GET, allow", CLEAN_ROUTES,
                     "policy.csv:8: allow rule [p, role:admin, *, /orders/vault, GET, allow] "
                     "is shadowed by deny rule [p, role:admin, *, /orders/vault, *, deny] "
                     "(for example GET /orders/vault)", id="shadowed-allow"),
        pytest.param(f"p, {IDP}#alice, *, /orders/:id, PUT, allow", CLEAN_ROUTES
                     + '\n[[routes]]\npath = "/vault/{id}"\nmethods = ["GET"]\n',
                     "routes[3]: route /vault/{id} has no rule allowing GET "
                     "(for example /vault/_sample_): every request to it is denied",
                     id="route-without-rule"),
        pytest.param("g, alice, role:admin, *", CLEAN_ROUTES,
                     "[g, alice, role:admin, *] can never apply: member 'alice'",
                     id="g-member-not-a-principal"),
        pytest.param("", CLEAN_ROUTES + '\n[[routes]]\npath = "/admin/*"\n',
                     "route /admin/* has no rule allowing any method", id="any-method"),
    ],
)
def test_each_problem_is_reported(tmp_path: Path, extra_rule: str, routes: str,
                                  expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = _project(tmp_path, CLEAN_POLICY + extra_rule + "\n", routes)
    assert main(["check", str(config)]) == 1
    out = capsys.readouterr().out
    assert "  ERROR  " in out and expected in out, out
    assert "  1 problem found" in out


def test_partial_shadowing_is_not_a_problem(tmp_path: Path) -> None:
    # /orders/* for admins with a carve-out for /orders/vault is the intended pattern.
    problems, _ = lint(_project(tmp_path, CLEAN_POLICY))
    assert problems == []


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        pytest.param('[policy]\npolicy = "policy.csv"\npolcy = 1\n', "policy.polcy: unknown key",
                     id="unknown-key"),
        pytest.param('[policy]\npolicy = "nope.csv"\n', "policy.policy: file not found",
                     id="missing-policy"),
        pytest.param("[policy\n", "is not valid TOML", id="bad-toml"),
        pytest.param("", "policy: no policy configured", id="no-policy"),
    ],
)
def test_configuration_errors_are_problems(tmp_path: Path, config_text: str, expected: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policy.csv").write_text(CLEAN_POLICY)
    config = tmp_path / "endpointsec.toml"
    config.write_text(config_text)
    assert main(["check", str(config)]) == 1
    out = capsys.readouterr().out
    assert expected in out
    assert "  1 problem found" in out


def test_every_configuration_error_is_a_problem(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policy.csv").write_text(CLEAN_POLICY)
    config = tmp_path / "endpointsec.toml"
    config.write_text('[policy]\npolicy = "policy.csv"\npolcy = 1\n'
                      '[defaults]\nmtls = "requird"\n[server]\nprot = 1\n')
    assert main(["check", str(config)]) == 1
    out = capsys.readouterr().out
    assert "endpointsec.toml: policy.polcy: unknown key (did you mean 'policy'?)" in out
    assert "endpointsec.toml: defaults.mtls: must be one of" in out
    assert "endpointsec.toml: server.prot: unknown key (did you mean 'port'?)" in out
    assert "  3 problems found" in out


def test_allow_authenticated_is_noted(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "endpointsec.toml"
    config.write_text("[policy]\nallow_authenticated = true\n")
    assert main(["check", str(config)]) == 0
    assert "note   [policy] allow_authenticated" in capsys.readouterr().out


def test_custom_model_without_sub_obj_act_is_noted(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text(
        "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj\n\n"
        "[policy_effect]\ne = some(where (p.eft == allow))\n\n"
        "[matchers]\nm = r.sub == p.sub && r.obj == p.obj\n")
    config = _project(tmp_path, "p, a, /x\n", routes="", extra='model = "model.conf"')
    problems, notes = lint(config)
    assert problems == []
    assert notes and "no sub/obj/act" in notes[0]


@pytest.mark.parametrize(
    ("template", "sample"),
    [
        ("/orders/{id}", "/orders/_sample_"),
        ("/orders/:id/items", "/orders/_sample_/items"),
        ("/reports/*", "/reports/_sample_"),
        ("/files/*.txt", "/files/_sample_.txt"),
        ("*", "/_sample_"),
        ("/", "/"),
    ],
)
def test_sample_path(template: str, sample: str) -> None:
    assert sample_path(template) == sample


def test_custom_model_skips_shape_checks_but_finds_shadowing(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text(
        "[request_definition]\nr = sub, obj, act\n\n"
        "[policy_definition]\np = sub, obj, act, eft\n\n"
        "[policy_effect]\ne = some(where (p.eft == allow)) && !some(where (p.eft == deny))\n\n"
        "[matchers]\nm = r.sub == p.sub && keyMatch2(r.obj, p.obj) && r.act == p.act\n")
    config = _project(tmp_path, "p, role:a, /x/:id, GET, allow\np, role:a, /x/*, GET, deny\n",
                      routes="", extra='model = "model.conf"')
    problems, notes = lint(config)
    assert [p.message for p in problems] == [
        "allow rule [p, role:a, /x/:id, GET, allow] is shadowed by deny rule "
        "[p, role:a, /x/*, GET, deny] (for example GET /x/_sample_)"]
    assert "rule-shape checks skipped" in notes[0]


def test_copy_of_the_default_model_gets_every_check(tmp_path: Path) -> None:
    from endpointsec.policy.enforcer import DEFAULT_MODEL_PATH

    (tmp_path / "model.conf").write_text(DEFAULT_MODEL_PATH.read_text())
    config = _project(tmp_path, CLEAN_POLICY + "p, alice, *, /x, GET, allow\n",
                      extra='model = "model.conf"')
    problems, notes = lint(config)
    assert notes == []
    assert any("subject 'alice'" in p.message for p in problems)


_segment = st.one_of(
    st.from_regex(r"[a-z0-9_.-]{1,8}", fullmatch=True).filter(lambda s: s not in (".", "..")),
    st.from_regex(r"\{[a-z_][a-z0-9_]{0,5}\}", fullmatch=True),
    st.from_regex(r":[a-z_][a-z0-9_]{0,5}", fullmatch=True),
)


@given(st.lists(_segment, min_size=1, max_size=5), st.booleans())
def test_sample_path_matches_both_template_kinds(segments: list[str], tail: bool) -> None:
    """The example request for a template is matched by the route table's template and
    by Casbin's keyMatch2 (the two places a template is used)."""
    from casbin.util.builtin_operators import key_match2

    from endpointsec.routing import compile_template

    template = "/" + "/".join(segments) + ("/*" if tail else "")
    sample = sample_path(template)
    assert compile_template(template).match(sample)
    assert key_match2(sample, template.replace("{", ":").replace("}", ""))


# Line numbers count every line of the file, as Casbin's loader reads it: comments,
# blank lines and CRLF endings do not shift them.
MALFORMED_POLICY = (
    "# header comment\n"                                                   # 1
    "\n"                                                                   # 2
    "p, role:ops, *, /orders/{id}, GET, allow\n"                           # 3
    "   # indented comment\r\n"                                            # 4
    "P, role:ops, *, /orders, GET, allow\n"                                # 5
    "p, role:ops, *, /orders/:id, GET, permit\n"                           # 6
    "p, role:ops, *, /internal/x|/admin/*, *, deny\n"                      # 7
    "p, role:ops, *, /reports/?.*, GET, allow\n"                           # 8
    'p, role:ops, *, "/quoted", GET, allow\n'                              # 9
    "p, role:ops, *, /a/{id, GET, allow\n"                                 # 10
    "p, role:ops, *, /x(y, GET, allow\n"                                   # 11
    "p, role:ops, *, /y], GET, allow\n"                                    # 12
    "g, role:ops, admin\n"                                                 # 13
    "p, role:ops, *, /items:batch, POST, allow\n"                          # 14
    "p, role:ops, *, /files/*.txt, GET, allow\n"                           # 15
    "p, role:ops, *, /fine/:id, GET, allow\n"                              # 16
)
MALFORMED_EXPECTED = [
    ("policy.csv:3", "'{id}' is not a parameter for Casbin's keyMatch2"),
    ("policy.csv:3", "write ':id'"),
    ("policy.csv:5", "has rule type 'P', unknown to the model"),
    ("policy.csv:6", "has effect 'permit'"),
    ("policy.csv:7", "'|': regular-expression syntax is not a keyMatch2 form"),
    ("policy.csv:8", "'?': regular-expression syntax"),
    ("policy.csv:9", "contains a '\"'"),
    ("policy.csv:10", "unbalanced '{' or '}'"),
    ("policy.csv:11", "unbalanced '('"),
    ("policy.csv:12", "unbalanced ']'"),
    ("policy.csv:13", "has 2 values after 'g'"),
    ("policy.csv:14", "segment 'items:batch'"),
    ("policy.csv:15", "'*' is only a keyMatch2 form as a final '/*'"),
]


def test_every_malformed_line_is_reported_with_its_line_number(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _project(tmp_path, MALFORMED_POLICY, routes="")
    assert main(["check", str(config)]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("  ERROR  ")]
    assert len(errors) == 12, out
    for where, text in MALFORMED_EXPECTED:
        assert any(e.startswith(f"  ERROR  {where}: ") and text in e for e in errors), (where, out)
    assert "policy.csv:16" not in out
    assert "  12 problems found" in out


def test_loading_reports_every_malformed_line_at_once(tmp_path: Path) -> None:
    """The same checks refuse the policy at start-up, all in one message."""
    from endpointsec.errors import ConfigurationError
    from endpointsec.policy import CasbinPolicy

    (tmp_path / "policy.csv").write_text(MALFORMED_POLICY)
    with pytest.raises(ConfigurationError) as info:
        CasbinPolicy(policy=tmp_path / "policy.csv")
    message = str(info.value)
    assert "12 problems in the policy" in message
    for where, text in MALFORMED_EXPECTED:
        assert any(f"policy.csv:{where.split(':')[1]}: " in line and text in line
                   for line in message.splitlines()), (where, message)


@pytest.mark.parametrize(("rule", "warned"), [
    pytest.param("g, spiffe://example.org/ns/shop/sa/web, role:storefront, *", True,
                 id="spiffe-to-role"),
    pytest.param("g, uri:urn:example:web, scope:orders, *", True, id="uri-to-scope"),
    pytest.param("g, dns:web.example.org, group:ops, *", True, id="dns-to-group"),
    pytest.param("g, sha256:" + "ab" * 32 + ", role:admin, *", True, id="sha256-to-role"),
    pytest.param("g, spiffe://example.org/ns/shop/sa/web, workload:storefront, *", False,
                 id="workload-namespace"),
    pytest.param("g, role:ops, admin, *", False, id="token-role-to-role"),
])
def test_certificate_subject_given_a_token_role_is_a_warning(
        tmp_path: Path, rule: str, warned: bool, capsys: pytest.CaptureFixture[str]) -> None:
    config = _project(tmp_path, CLEAN_POLICY + rule + "\n")
    assert main(["check", str(config)]) == 0  # a warning does not fail the check
    out = capsys.readouterr().out
    assert ("  WARN   policy.csv:8: " in out and "token namespace" in out) is warned, out
