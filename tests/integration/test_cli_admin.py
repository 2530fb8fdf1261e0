"""``teachloop admin``: init, keys and orgs, through the real CLI on a temporary TEACHLOOP_HOME."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from teachloop.cli import _common
from teachloop.cli.main import app

KEY = re.compile(r"tl_[a-z2-7]{12}_[a-z2-7]{52}")


@pytest.fixture
def cli(teachloop_home: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # tables unfolded, whatever the terminal. rich's ``width`` is a property: restoring it would pin the width it
    # computed (80 without a terminal) for every later test; ``_width`` (None: follow $COLUMNS) restores cleanly
    monkeypatch.setattr(_common.console, "_width", 200)
    return CliRunner()


def _ok(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _fails(cli: CliRunner, *args: str, code: int) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_init_prints_a_working_key_once_and_is_idempotent(cli: CliRunner, teachloop_home: Path) -> None:
    out = _ok(cli, "admin", "init", "--email", "ada@example.com")
    [secret] = set(KEY.findall(out))
    assert f"export TEACHLOOP_API_KEY={secret}" in out
    assert (teachloop_home / "teachloop.db").exists()
    assert "ada@example.com (owner) in 'default'" in _ok(cli, "admin", "keys", "check", secret)

    again = _ok(cli, "admin", "init")
    assert "already initialised" in again and not KEY.search(again)
    assert "already initialised" in _ok(cli, "admin", "init", "--org", "default")

    research = _ok(cli, "admin", "init", "--org", "research")
    assert "created organisation 'research'" in research and KEY.search(research)
    orgs = _ok(cli, "admin", "orgs", "list")
    assert "default" in orgs and "research" in orgs


def test_keys_create_list_check_revoke(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    _ok(cli, "admin", "init")
    secret = _ok(cli, "admin", "keys", "create", "--name", "ci bot", "--role", "viewer", "--quiet").strip()
    assert KEY.fullmatch(secret)
    service = KEY.findall(_ok(cli, "admin", "keys", "create", "--service", "--name", "dashboard"))[0]
    monkeypatch.setenv("TEACHLOOP_API_KEY", secret)
    checked = _ok(cli, "admin", "keys", "check")
    assert "(viewer)" in checked
    key_id = re.search(r"key key_\w+", checked).group(0).split()[1]  # type: ignore[union-attr]
    assert "service key (member)" in _ok(cli, "admin", "keys", "check", service)

    listed = _ok(cli, "admin", "keys", "list")
    assert key_id in listed and "ci bot" in listed and "(service)" in listed
    assert secret not in listed and secret[-52:] not in listed

    assert f"revoked key {key_id}" in _ok(cli, "admin", "keys", "revoke", key_id)
    assert "already revoked" in _ok(cli, "admin", "keys", "revoke", key_id)
    line = _fails(cli, "admin", "keys", "check", code=2)
    assert line == "error: API key revoked; create one with `teachloop admin keys create`"
    assert key_id not in _ok(cli, "admin", "keys", "list", "--active")


def test_bad_operator_input_is_one_line(cli: CliRunner) -> None:
    assert "teachloop admin init" in _fails(cli, "admin", "keys", "list", code=2)  # nothing migrated yet
    _ok(cli, "admin", "init")
    _ok(cli, "admin", "init", "--org", "second")
    assert "pass --org" in _fails(cli, "admin", "keys", "create", code=2)
    assert "not found" in _fails(cli, "admin", "keys", "revoke", "key_nope", "--org", "second", code=2)
    assert "unknown role" in _fails(
        cli, "admin", "keys", "create", "--org", "second", "--role", "czar", code=2
    )
    assert "no user" in _fails(cli, "admin", "keys", "create", "--org", "second", "--email", "x@y.z", code=2)
    assert "not found" in _fails(cli, "admin", "keys", "list", "--org", "third", code=2)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_database_is_one_line_with_the_password_masked(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", f"postgresql://ops:hunter2@127.0.0.1:{_closed_port()}/tl")
    line = _fails(cli, "admin", "init", code=1)
    assert "ops:***@127.0.0.1" in line and "hunter2" not in line


def test_wrong_database_url_is_one_line(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", "mysql://u@h/db")
    assert "unsupported database URL" in _fails(cli, "admin", "init", code=2)


def test_missing_psycopg_is_one_line(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    line = _fails(cli, "admin", "orgs", "list", code=2)
    assert line == "error: PostgreSQL needs the 'postgres' extra: pip install 'teachloop[postgres]'"


@pytest.mark.postgres
def test_init_on_postgres(cli: CliRunner, monkeypatch: pytest.MonkeyPatch, postgres_url: str) -> None:
    monkeypatch.setenv("TEACHLOOP_DATABASE_URL", postgres_url)
    out = _ok(cli, "admin", "init", "--org", f"pg-{_closed_port()}")
    assert "postgresql+psycopg://" in out and KEY.search(out)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["up"],
        ["serve"],
        ["worker"],
        ["admin"],
        ["admin", "init"],
        ["admin", "keys"],
        ["admin", "keys", "create"],
        ["admin", "keys", "list"],
        ["admin", "keys", "check"],
        ["admin", "keys", "revoke"],
        ["admin", "orgs"],
        ["admin", "orgs", "list"],
    ],
)
def test_every_command_has_help(cli: CliRunner, command: list[str]) -> None:
    result = cli.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 5
