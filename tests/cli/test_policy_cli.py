"""``endpointsec policy``: init, add, remove, list, export, import against a real database."""

from __future__ import annotations

from pathlib import Path

import pytest

from endpointsec.cli import main
from storage_support import Postgres

PW_ENV = "ENDPOINTSEC_TEST_POLICY_DB_PASSWORD"


@pytest.fixture
def config(postgres: Postgres, pg_table: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(PW_ENV, postgres.password)
    f = tmp_path / "endpointsec.toml"
    f.write_text(f'[policy]\ndatabase = "{postgres.dsn}"\n'
                 f'database_password_env = "{PW_ENV}"\ntable = "{pg_table}"\n')
    return f


def _rows(postgres: Postgres, table: str) -> list[tuple[object, ...]]:
    return postgres.execute(f'SELECT ptype, v0, v1, v2, v3, v4 FROM "{table}" ORDER BY id')


def test_init_add_list_remove(config: Path, postgres: Postgres, pg_table: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "init", "--config", str(config)]) == 0
    assert f"policy table {pg_table} is ready" in capsys.readouterr().out
    assert _rows(postgres, pg_table) == []
    args = ["p", "alice", "*", "/orders/:id", "GET", "allow"]
    assert main(["policy", "add", "--config", str(config), *args, "--dry-run"]) == 0
    assert "+ p, alice, *, /orders/:id, GET, allow" in capsys.readouterr().out
    assert _rows(postgres, pg_table) == []  # a dry run writes nothing
    assert main(["policy", "add", "--config", str(config), *args]) == 0
    assert main(["policy", "add", "--config", str(config), "g", "bob", "alice", "*"]) == 0
    assert main(["policy", "add", "--config", str(config), *args]) == 0  # already there
    assert capsys.readouterr().out.splitlines()[-1] == "0 added, 0 removed"
    assert main(["policy", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out == ("p, alice, *, /orders/:id, GET, allow\n"
                                       "g, bob, alice, *\n")
    assert main(["policy", "remove", "--config", str(config), *args]) == 0
    assert _rows(postgres, pg_table) == [("g", "bob", "alice", "*", None, None)]


def test_invalid_rule_is_refused_before_writing(config: Path, postgres: Postgres,
                                                pg_table: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "add", "--config", str(config),
                 "p", "alice", "*", "/orders/(", "GET", "allow"]) == 2
    assert "not a valid keyMatch2 pattern" in capsys.readouterr().err
    assert main(["policy", "add", "--config", str(config), "p", "alice", "*", "/x"]) == 2
    assert _rows(postgres, pg_table) == []


def test_export_import_replace(config: Path, postgres: Postgres, pg_table: str,
                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "policy.csv"
    csv.write_text("p, alice, *, /a, GET, allow\np, bob, *, /b, GET, allow\n"
                   "g, carol, bob, *\n")
    assert main(["policy", "import", "--config", str(config), str(csv)]) == 0
    assert len(_rows(postgres, pg_table)) == 3
    csv.write_text("p, alice, *, /a, GET, allow\np, dave, *, /d, GET, deny\n")
    assert main(["policy", "import", "--config", str(config), str(csv), "--replace",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "+ p, dave, *, /d, GET, deny" in out and "- g, carol, bob, *" in out
    assert len(_rows(postgres, pg_table)) == 3
    assert main(["policy", "import", "--config", str(config), str(csv), "--replace"]) == 0
    assert _rows(postgres, pg_table) == [("p", "alice", "*", "/a", "GET", "allow"),
                                         ("p", "dave", "*", "/d", "GET", "deny")]
    out_file = tmp_path / "out.csv"
    assert main(["policy", "export", "--config", str(config), "-o", str(out_file)]) == 0
    assert out_file.read_text() == "p, alice, *, /a, GET, allow\np, dave, *, /d, GET, deny\n"


def test_unreachable_database_exits_1(postgres: Postgres, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from storage_support import free_port

    monkeypatch.setenv(PW_ENV, "x")
    f = tmp_path / "endpointsec.toml"
    f.write_text(f'[policy]\ndatabase = "postgresql://u@127.0.0.1:{free_port()}/p"\n'
                 f'database_password_env = "{PW_ENV}"\n')
    assert main(["policy", "list", "--config", str(f)]) == 1
    assert "cannot connect to the policy database" in capsys.readouterr().err


def test_a_file_policy_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.csv").write_text("p, a, *, /a, GET, allow\n")
    f = tmp_path / "endpointsec.toml"
    f.write_text('[policy]\npolicy = "p.csv"\n')
    assert main(["policy", "list", "--config", str(f)]) == 2
    assert "needs [policy] database" in capsys.readouterr().err
