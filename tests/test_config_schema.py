"""The JSON Schema of endpointsec.toml, every error at once, and finding the file."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import endpointsec
from endpointsec import Config, ConfigurationError, load_config
from endpointsec.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = endpointsec.config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# -- the shipped examples validate ----------------------------------------------------

def _shipped_examples() -> Iterator[Any]:
    for md in sorted((ROOT / "docs").rglob("*.md")):
        blocks = re.findall(r"```toml\n(.*?)```", md.read_text(encoding="utf-8"), re.S)
        for i, block in enumerate(blocks):
            yield pytest.param(block, id=f"{md.relative_to(ROOT)}[{i}]")
    for toml in sorted((ROOT / "examples").glob("*/endpointsec.toml")):
        yield pytest.param(toml.read_text(encoding="utf-8"), id=str(toml.relative_to(ROOT)))


EXAMPLES = list(_shipped_examples())


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("text", EXAMPLES)
def test_shipped_example_validates(validator: jsonschema.Draft202012Validator,
                                   text: str) -> None:
    data = tomllib.loads(text)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []


def test_schema_refuses_what_the_loader_refuses(
        validator: jsonschema.Draft202012Validator) -> None:
    bad = {"identity": {"sourcez": ["asgi-tls"]}, "defaults": {"mtls": "maybe"},
           "routes": [{"path": "/x", "methods": ["get"]}], "server": {"port": 65536}}
    paths = sorted(".".join(map(str, e.path)) for e in validator.iter_errors(bad))
    # ("identity": its additionalProperties; "routes": the anyOf of array and table forms)
    assert paths == ["defaults.mtls", "identity", "routes", "server.port"]
    with pytest.raises(ConfigurationError) as info:
        Config.from_mapping(bad)
    assert sorted(e.key or "" for e in info.value.errors) == [
        "defaults.mtls", "identity.sourcez", "routes[0].methods", "server.port"]


# -- the schema's keys are the loader's keys ----------------------------------------

def _sample(schema: dict[str, Any]) -> Any:
    """A value of the schema's type (not necessarily a valid one)."""
    if "anyOf" in schema:
        return _sample(schema["anyOf"][0])
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    return {"string": "x", "boolean": True, "integer": 1, "number": 1.0,
            "object": {}, "array": []}.get(kind, "x")


def _tables(schema: dict[str, Any], data_path: tuple[Any, ...] = (),
            dotted: str = "") -> Iterator[tuple[tuple[Any, ...], str, dict[str, Any]]]:
    """Every table of the schema: where it sits in a document, its dotted key, itself."""
    yield data_path, dotted, schema
    for key, sub in schema.get("properties", {}).items():
        name = f"{dotted}.{key}" if dotted else key
        if sub.get("type") == "object":
            yield from _tables(sub, (*data_path, key), name)
            extra = sub.get("additionalProperties")
            if isinstance(extra, dict) and extra.get("type") == "object":
                yield from _tables(extra, (*data_path, key, "example.org"),
                                   f"{name}.example.org")
        elif "anyOf" in sub and sub["anyOf"][0].get("type") == "array" \
                and sub["anyOf"][0]["items"].get("type") == "object":
            yield from _tables(sub["anyOf"][0]["items"], (*data_path, key, 0), f"{name}[0]")


def _document(data_path: tuple[Any, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    doc: Any = leaf
    for part in reversed(data_path):
        doc = [doc] if part == 0 else {part: doc}
    return doc  # type: ignore[no-any-return]


def _errors(doc: dict[str, Any], tmp_path: Path) -> list[ConfigurationError]:
    try:
        Config.from_mapping(doc, base_dir=tmp_path)
    except ConfigurationError as exc:
        return exc.errors
    return []


SCHEMA_TABLES = list(_tables(endpointsec.config_schema()))


def test_every_section_is_in_the_schema() -> None:
    dotted = {t[1] for t in SCHEMA_TABLES}
    assert {"", "identity", "identity.trust_domains.example.org", "proxy", "proxy.headers",
            "tokens", "tokens.issuers[0]", "policy", "policy.paths", "defaults", "routes[0]",
            "server"} <= dotted


@pytest.mark.parametrize(("data_path", "dotted", "table"), SCHEMA_TABLES,
                         ids=[t[1] or "<root>" for t in SCHEMA_TABLES])
def test_schema_keys_are_the_loader_keys(tmp_path: Path, data_path: tuple[Any, ...],
                                         dotted: str, table: dict[str, Any]) -> None:
    def full(key: str) -> str:
        return f"{dotted}.{key}" if dotted else key

    # every key of the schema is one the loader reads (never an "unknown key")
    for key, sub in table["properties"].items():
        errors = _errors(_document(data_path, {key: _sample(sub)}), tmp_path)
        unknown = [e for e in errors if e.message.startswith("unknown key")]
        assert unknown == [], key
    # a key the schema does not have is refused by both
    if table.get("additionalProperties") is False:
        errors = _errors(_document(data_path, {"not_a_key": 1}), tmp_path)
        assert full("not_a_key") in [e.key for e in errors
                                      if e.message.startswith("unknown key")]


def test_config_schema_is_exported() -> None:
    assert "config_schema" in endpointsec.__all__
    schema = endpointsec.config_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["defaults"]["properties"]["mtls"]["enum"] == [
        "required", "optional", "none"]
    assert schema["properties"]["server"]["properties"]["port"]["default"] == 8443


def test_schema_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == endpointsec.config_schema()
    out = tmp_path / "endpointsec.schema.json"
    assert main(["schema", "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == endpointsec.config_schema()


# -- every error at once ---------------------------------------------------------------

def test_every_error_is_reported_with_its_key(tmp_path: Path) -> None:
    text = """
[identity]
sourcez = ["asgi-tls"]
cache_size = -1

[[tokens.issuers]]
issuer = "https://idp.example"
audience = ["orders"]
algorithms = ["ES256"]
jwks_url = "https://idp.example/jwks"

[defaults]
mtls = "requird"

[[routes]]
path = "orders"
methods = ["get"]

[polcy]
"""
    cfg = tmp_path / "endpointsec.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load_config(cfg)
    found = {e.key: e.message for e in info.value.errors}
    assert found == {
        "identity.cache_size": "must be at least 0",
        "identity.sourcez": "unknown key (did you mean 'sources'?)",
        "tokens.issuers[0].audiences": "is required",
        "tokens.issuers[0].audience": "unknown key (did you mean 'audiences'?)",
        "defaults.mtls": "must be one of 'required', 'optional', 'none', not 'requird' "
                         "(did you mean 'required'?)",
        "routes[0].path": "must start with '/'",
        "routes[0].methods": "unknown HTTP method (upper case) 'get'; expected one of GET, "
                             "HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE, CONNECT "
                             "(did you mean 'GET'?)",
        "polcy": "unknown key (did you mean 'policy'?)",
    }
    message = str(info.value)
    assert message.startswith("8 configuration errors:\n")
    for key, problem in found.items():
        assert f"  {key}: {problem}" in message
    assert info.value.key == "identity.cache_size"
    assert isinstance(info.value, ValueError)


def test_one_error_reads_as_before(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Config.from_mapping({"server": {"port": -1}})
    assert str(info.value) == "server.port: must be at least 0"
    assert [e.key for e in info.value.errors] == ["server.port"]


def test_cross_key_checks_run_for_valid_sections_only() -> None:
    # the issuer's own key errors are reported; its cross-key check ("exactly one key
    # source") is not piled on top, while another section's cross-key check still runs
    with pytest.raises(ConfigurationError) as info:
        Config.from_mapping({
            "tokens": {"issuers": [{"issuer": "x", "audiences": ["a"], "algorithms": 3}]},
            "policy": {"allow_authenticated": True, "policy": "/dev/null"},
        })
    assert [(e.key, e.message) for e in info.value.errors] == [
        ("tokens.issuers[0].algorithms", "must be a list of strings"),
        ("policy.allow_authenticated",
         "allow_authenticated cannot be combined with a Casbin model or policy"),
    ]


def test_cli_prints_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "endpointsec.toml"
    cfg.write_text('[defaults]\nmtls = "maybe"\ntokn = "required"\n')
    assert main(["explain", "--config", str(cfg), "--path", "/"]) == 2
    err = capsys.readouterr().err
    assert "defaults.mtls: must be one of" in err
    assert "defaults.tokn: unknown key (did you mean 'token'?)" in err


# -- finding the file ------------------------------------------------------------------

def test_load_config_reads_the_environment_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "conf" / "service.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("[policy]\nallow_authenticated = true\n")
    (tmp_path / "endpointsec.toml").write_text("[policy]\nallow_authenticated = false\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENDPOINTSEC_CONFIG", str(elsewhere))
    cfg = load_config()
    assert cfg.source == elsewhere
    assert cfg.policy.allow_authenticated
    # an explicit path wins
    assert load_config("endpointsec.toml").policy.allow_authenticated is False


def test_load_config_falls_back_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "endpointsec.toml").write_text("[policy]\nallow_authenticated = true\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    cfg = load_config()
    assert cfg.source == Path("endpointsec.toml")
    assert cfg.policy.allow_authenticated


def test_load_config_without_any_file(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENDPOINTSEC_CONFIG", raising=False)
    with pytest.raises(ConfigurationError, match=r"ENDPOINTSEC_CONFIG is not set and there "
                                                 r"is no endpointsec\.toml in"):
        load_config()


def test_load_config_environment_variable_names_a_missing_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # never a silent fall back to ./endpointsec.toml: the variable was set on purpose
    (tmp_path / "endpointsec.toml").write_text("[policy]\nallow_authenticated = true\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ENDPOINTSEC_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigurationError, match=r"^ENDPOINTSEC_CONFIG: .*absent\.toml"):
        load_config()


def test_an_entry_that_is_not_a_table_is_reported_once() -> None:
    with pytest.raises(ConfigurationError) as info:
        Config.from_mapping({"routes": [3, {"path": "/x", "publik": True}],
                             "identity": [], "tokens": {"issuers": "x"}})
    assert [(e.key, e.message) for e in info.value.errors] == [
        ("identity", "must be a table"),
        ("tokens.issuers", "must be an array of tables"),
        ("routes[0]", "must be a table"),
        ("routes[1].publik", "unknown key (did you mean 'public'?)"),
    ]
