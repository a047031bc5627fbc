"""``[policy]`` and ``[policy.paths]``: every key, its errors, and build_policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from policy_support import ListAdapter, csv_lines

from endpointsec._config import Table
from endpointsec.config import Config
from endpointsec.errors import ConfigurationError
from endpointsec.policy import (
    AllowAuthenticated,
    CasbinPolicy,
    PathOptions,
    PolicyConfig,
    build_policy,
)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "policy.csv").write_text(
        csv_lines([("spiffe://example.org/web", "*", "/orders/:id", "GET", "allow")]),
        encoding="utf-8")
    (tmp_path / "model.conf").write_text(
        "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act\n"
        "[policy_effect]\ne = some(where (p.eft == allow))\n"
        "[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n",
        encoding="utf-8")
    return tmp_path


def _read(data: dict[str, Any], base: Path) -> PolicyConfig:
    return PolicyConfig.from_table(Table(data, key="policy", base_dir=base))


def test_every_key(files: Path) -> None:
    cfg = _read({
        "model": "model.conf", "policy": "policy.csv", "dry_run": True, "watch": True,
        "watch_interval": 0.5, "domain_header": "x-tenant", "cache_size": 5,
        "paths": {"merge_slashes": False, "decode_encoded_slashes": True,
                  "backslash": "keep"},
    }, files)
    assert cfg == PolicyConfig(
        model=files / "model.conf", policy=files / "policy.csv", dry_run=True, watch=True,
        watch_interval=0.5, domain_header="x-tenant", cache_size=5,
        paths=PathOptions(merge_slashes=False, decode_encoded_slashes=True,
                          backslash="keep"),
    )


def test_defaults(files: Path) -> None:
    cfg = _read({"policy": "policy.csv"}, files)
    assert cfg.model is None
    assert cfg.dry_run is False
    assert cfg.watch is False
    assert cfg.watch_interval == 2.0
    assert cfg.domain_header is None
    assert cfg.cache_size == 10_000
    assert cfg.paths == PathOptions()
    assert cfg.paths.merge_slashes is True
    assert cfg.paths.decode_encoded_slashes is False
    assert cfg.paths.backslash == "slash"


INVALID = [
    ("unknown-key", {"polciy": "policy.csv"}, r"policy\.polciy: unknown key"),
    ("unknown-paths-key", {"paths": {"merge": True}}, r"policy\.paths\.merge: unknown key"),
    ("missing-file", {"policy": "nope.csv"}, r"policy\.policy: file not found"),
    ("missing-model", {"model": "nope.conf"}, r"policy\.model: file not found"),
    ("dry-run-not-bool", {"dry_run": "yes"}, r"policy\.dry_run: must be true or false"),
    ("interval-zero", {"watch_interval": 0}, r"policy\.watch_interval: must be at least"),
    ("cache-negative", {"cache_size": -1}, r"policy\.cache_size: must be at least 0"),
    ("backslash-choice", {"paths": {"backslash": "drop"}}, r"policy\.paths\.backslash"),
    ("slashes-conflict", {"paths": {"decode_encoded_slashes": True,
                                    "reject_encoded_slashes": True}}, "exclude each other"),
    ("allow-all-plus-policy", {"allow_authenticated": True, "policy": "policy.csv"},
     r"policy\.allow_authenticated: allow_authenticated cannot be combined"),
    ("empty-domain-header", {"domain_header": " "}, r"policy\.domain_header"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid(files: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _read(data, files)


def test_build_policy_without_a_policy_names_policy() -> None:
    with pytest.raises(ConfigurationError, match=r"^policy: no policy configured"):
        build_policy(PolicyConfig())


def test_build_allow_authenticated_is_explicit() -> None:
    policy = build_policy(PolicyConfig(allow_authenticated=True, dry_run=True))
    assert isinstance(policy, AllowAuthenticated)
    assert policy.dry_run is True
    assert policy.evaluate(subjects=["x"], resource="/", action="GET").allowed
    assert not policy.evaluate(subjects=[], resource="/", action="GET").allowed
    assert policy.roles_for(subjects=["x"]) == frozenset()


def test_build_casbin_policy_from_a_config_file(files: Path) -> None:
    (files / "endpointsec.toml").write_text(
        '[policy]\npolicy = "policy.csv"\ndomain_header = "x-tenant"\n'
        '[policy.paths]\nmerge_slashes = false\n', encoding="utf-8")
    from endpointsec.config import load_config

    config = load_config(files / "endpointsec.toml")
    policy = build_policy(config.policy)
    assert isinstance(policy, CasbinPolicy)
    assert policy.engine == "indexed"
    assert policy.normalize("//orders/1") == "//orders/1"
    assert policy.evaluate(subjects=["spiffe://example.org/web"], resource="/orders/1",
                           action="GET").allowed
    assert config.policy.domain_header == "x-tenant"


def test_build_with_a_python_adapter() -> None:
    adapter = ListAdapter([("alice", "*", "/x", "GET", "allow")])
    policy = build_policy(PolicyConfig(adapter=adapter))
    assert policy.evaluate(subjects=["alice"], resource="/x", action="GET").allowed


def test_config_from_mapping_reads_policy(files: Path) -> None:
    config = Config.from_mapping({"policy": {"policy": "policy.csv", "cache_size": 0}},
                                 base_dir=files)
    assert config.policy.policy == files / "policy.csv"
    assert config.policy.cache_size == 0


def test_python_construction_is_validated() -> None:
    with pytest.raises(ConfigurationError, match=r"policy\.watch_interval"):
        PolicyConfig(allow_authenticated=True, watch_interval=0)
    with pytest.raises(ConfigurationError, match="not both"):
        PolicyConfig(policy=Path("p.csv"), adapter=ListAdapter())


def test_built_policies_satisfy_the_policy_protocol(files: Path) -> None:
    from endpointsec.protocols import Policy

    assert isinstance(build_policy(PolicyConfig(policy=files / "policy.csv")), Policy)
    assert isinstance(build_policy(PolicyConfig(allow_authenticated=True)), Policy)
