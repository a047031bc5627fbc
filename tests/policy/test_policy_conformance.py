"""Casbin's own Go test cases (``../shared/conformance/casbin/cases.json``) through
:class:`CasbinPolicy`.

Their models are not the shipped default model, so the facade takes its plain
``casbin.Enforcer`` path; each case is asked with a single subject (a Casbin request is
one subject). They agree, except for the divergences listed in ``DIVERGENCES`` with
their reasons; an enforcer exception is always a deny.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import casbin
import pytest
from casbin.util import key_match

from endpointsec.errors import ConfigurationError
from endpointsec.policy import CasbinPolicy

CONFORMANCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance" / "casbin"
CASES_FILE = CONFORMANCE / "cases.json"

if not CASES_FILE.is_file():
    pytest.skip(f"conformance data not found at {CASES_FILE} (../shared/conformance is "
                "provided next to the project checkout)", allow_module_level=True)

CASES: list[dict[str, Any]] = json.loads(CASES_FILE.read_text(encoding="utf-8"))

#: Cases whose expected value (from Go) pycasbin, hence endpointsec, does not reproduce.
DIVERGENCES: dict[tuple[str, tuple[str, ...]], str] = {
    ("TestGlobMatchModel", ("u1", "/foo/", "read")):
        "globMatch('/foo/', '/foo/*'): Go's glob lets '*' match the empty string; "
        "pycasbin's globMatch needs at least one character (known Go/Python divergence)",
    ("TestGlobMatchModel", ("u3", "/prefix/foo/", "read")):
        "globMatch('/prefix/foo/', '/*/foo/*'): same empty-'*' divergence as above",
    ("TestKeyMatchWithRBACInDomain", ("Username==test2", "engines/engine1", "*", "attach")):
        "the expected value needs keyMatch domain matching on g rules (a function "
        "registered in Go, not carried by the case data); with "
        "add_named_domain_matching_func('g', key_match) pycasbin agrees (checked below)",
}

#: Models endpointsec refuses at start-up: a deny for every request, by construction.
REFUSED_MODELS = {
    "examples/comment_model.conf":
        "an inline '; comment' after the request_definition: Go strips it, pycasbin keeps "
        "it in the token name ('act ; Request definition'), so the model cannot be filled "
        "from sub/dom/obj/act; endpointsec refuses the model at start-up (fail closed)",
}

#: Cases whose policy came from an adapter the extraction does not record.
ADAPTER_POLICY = {
    "TestInitWithAdapter": "examples/basic_policy.csv",
}


def _case_id(case: dict[str, Any]) -> str:
    return f"{case['test']}-{'-'.join(case['request'])}"


def _ask(policy: CasbinPolicy, request: list[str]) -> bool:
    values = dict(zip(policy.request_tokens, request, strict=True))
    subjects = [values["sub"]] if "sub" in values else []
    result = policy.evaluate(subjects=subjects, resource=values.get("obj", ""),
                             action=values.get("act", ""), domain=values.get("dom"))
    return result.allowed


_policies: dict[tuple[str, str | None, str | None], CasbinPolicy] = {}


def _policy(case: dict[str, Any]) -> CasbinPolicy:
    adapter_file = ADAPTER_POLICY.get(case["test"])
    key = (case["model"], case["policy"], adapter_file)
    if key not in _policies:
        model = CONFORMANCE / case["model"]
        if adapter_file is not None:
            adapter = casbin.FileAdapter(str(CONFORMANCE / adapter_file))
            _policies[key] = CasbinPolicy(model=model, adapter=adapter, cache_size=0)
        else:
            policy = CONFORMANCE / case["policy"] if case["policy"] else None
            _policies[key] = CasbinPolicy(model=model, policy=policy, cache_size=0)
    return _policies[key]


def test_case_count() -> None:
    assert len(CASES) == 206


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_casbin_case(case: dict[str, Any]) -> None:
    if case["model"] in REFUSED_MODELS:
        with pytest.raises(ConfigurationError, match="request_definition"):
            _policy(case)
        return
    got = _ask(_policy(case), case["request"])
    reason = DIVERGENCES.get((case["test"], tuple(case["request"])))
    if reason is not None:
        assert got is not case["expected"], f"divergence no longer holds: {reason}"
    else:
        assert got is case["expected"]


def test_keymatch_rbac_in_domain_divergence_reason() -> None:
    """The listed reason is the real one: with domain matching, pycasbin agrees with Go."""
    e = casbin.Enforcer(str(CONFORMANCE / "examples/keymatch_with_rbac_in_domain.conf"),
                        str(CONFORMANCE / "examples/keymatch_with_rbac_in_domain.csv"))
    request = ("Username==test2", "engines/engine1", "*", "attach")
    assert e.enforce(*request) is False
    e.add_named_domain_matching_func("g", key_match)
    assert e.enforce(*request) is True


def test_eval_with_literal_false_is_a_deny_not_an_error() -> None:
    """``eval()`` of ``r.sub == 'admin' || false`` raises in pycasbin (``false`` is not a
    Python name); the facade turns the exception into a deny with a reason."""
    case = next(c for c in CASES if c["test"] == "TestEvalPriority")
    policy = _policy(case)
    result = policy.evaluate(subjects=["user"], resource="users", action="write")
    assert result.allowed is False
    assert "policy evaluation failed" in result.reason
    assert "NameNotDefined" in result.reason
