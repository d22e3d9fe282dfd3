"""Settings: defaults, environment variables, and one readable line for every bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.dsn import split_dsn_list
from app.errors import SettingsError
from app.settings import LogLevel, load_settings

SECRET = "s3cr3t-pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory) -> None:
    """No MIRRORPOOL_* variable or .env file of the machine leaks into these tests."""
    import os  # noqa: PLC0415

    for name in list(os.environ):
        if name.startswith("MIRRORPOOL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]


def test_defaults_are_usable() -> None:
    s = load_settings()
    assert s.primary_dsn is None
    assert s.mirror_dsns == []
    assert (s.pool_min_size, s.pool_max_size) == (2, 10)
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.health_interval == 1.0
    assert s.log_level is LogLevel.INFO


def test_reads_stable_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRRORPOOL_PRIMARY_DSN", f"host=db1 user=app password={SECRET}")
    monkeypatch.setenv("MIRRORPOOL_MIRROR_DSN", "host=db2 user=app")
    monkeypatch.setenv("MIRRORPOOL_HOST", "0.0.0.0")
    monkeypatch.setenv("MIRRORPOOL_PORT", "9000")
    monkeypatch.setenv("MIRRORPOOL_POOL_MIN_SIZE", "1")
    monkeypatch.setenv("MIRRORPOOL_POOL_MAX_SIZE", "3")
    monkeypatch.setenv("MIRRORPOOL_HEALTH_INTERVAL", "0.25")
    monkeypatch.setenv("MIRRORPOOL_LOG_LEVEL", "DEBUG")
    s = load_settings()
    assert s.primary_dsn is not None
    assert s.primary_dsn.get_secret_value() == f"host=db1 user=app password={SECRET}"
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())
    assert s.mirror_dsns == ["host=db2 user=app"]
    assert (s.host, s.port, s.pool_min_size, s.pool_max_size) == ("0.0.0.0", 9000, 1, 3)
    assert s.health_interval == 0.25
    assert s.log_level is LogLevel.DEBUG


def test_reads_a_dotenv_file(tmp_path: pytest.TempPathFactory) -> None:
    (tmp_path / ".env").write_text("MIRRORPOOL_POOL_MAX_SIZE=7\n")  # type: ignore[operator]
    assert load_settings().pool_max_size == 7


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MIRRORPOOL_POOL_MIN_SIZE", "-1", "MIRRORPOOL_POOL_MIN_SIZE: Input should be greater"),
        ("MIRRORPOOL_POOL_MAX_SIZE", "0", "MIRRORPOOL_POOL_MAX_SIZE: Input should be greater"),
        ("MIRRORPOOL_POOL_MAX_SIZE", "lots", "MIRRORPOOL_POOL_MAX_SIZE: Input should be a valid"),
        ("MIRRORPOOL_HEALTH_INTERVAL", "0.01", "MIRRORPOOL_HEALTH_INTERVAL: Input should be"),
        ("MIRRORPOOL_PORT", "70000", "MIRRORPOOL_PORT: Input should be less"),
        ("MIRRORPOOL_LOG_LEVEL", "loud", "MIRRORPOOL_LOG_LEVEL: Input should be 'debug'"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert repr(value) in message
    assert "\n" not in message


def test_min_above_max_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRRORPOOL_POOL_MIN_SIZE", "5")
    monkeypatch.setenv("MIRRORPOOL_POOL_MAX_SIZE", "2")
    with pytest.raises(
        SettingsError, match=r"POOL_MIN_SIZE \(5\) is greater than .*MAX_SIZE \(2\)"
    ):
        load_settings()


@pytest.mark.parametrize(
    "variable", ["MIRRORPOOL_PRIMARY_DSN", "MIRRORPOOL_MIRROR_DSN", "MIRRORPOOL_MIGRATIONS_DSN"]
)
def test_unparsable_dsn_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, f"host=db password={SECRET} 'unterminated")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert f"{variable}: is not a valid libpq connection string" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_pgbouncer_needs_a_migrations_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRRORPOOL_PGBOUNCER", "true")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "MIRRORPOOL_PGBOUNCER=true needs MIRRORPOOL_MIGRATIONS_DSN" in message
    assert "\n" not in message
    monkeypatch.setenv("MIRRORPOOL_MIGRATIONS_DSN", f"host=db1 password={SECRET}")
    s = load_settings()
    assert s.pgbouncer
    assert s.migrations_dsn is not None
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())


def test_mirror_list_splits_on_commas_between_dsns_only() -> None:
    text = (
        "host=a port=5433 options='-c search_path=x,y', "
        "postgresql://u@h1:5432,h2:5432/db?target_session_attrs=any,"
        "postgres://h3/db"
    )
    assert split_dsn_list(text) == [
        "host=a port=5433 options='-c search_path=x,y'",
        "postgresql://u@h1:5432,h2:5432/db?target_session_attrs=any",
        "postgres://h3/db",
    ]


def test_second_bad_mirror_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRRORPOOL_MIRROR_DSN", "host=a, host=b 'oops")
    with pytest.raises(SettingsError, match="MIRRORPOOL_MIRROR_DSN: mirror 2 is not a valid"):
        load_settings()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def base_env() -> dict[str, str]:
    import os  # noqa: PLC0415

    return {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}


def test_cli_exits_2_with_one_line_on_a_bad_setting() -> None:
    env = base_env() | {"MIRRORPOOL_POOL_MIN_SIZE": "-3", "MIRRORPOOL_PRIMARY_DSN": "host=x"}
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "MIRRORPOOL_POOL_MIN_SIZE" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_exits_2_when_no_primary_is_configured() -> None:
    result = run_cli("serve", env=base_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mirrorpool: MIRRORPOOL_PRIMARY_DSN is not set and no local pair runs in .devdb/ here: "
        "start one with `make run` in another shell (then run this again from this folder), "
        "or point MIRRORPOOL_PRIMARY_DSN at your primary"
    ]


def test_cli_bad_dsn_line_hides_the_password() -> None:
    env = base_env() | {"MIRRORPOOL_PRIMARY_DSN": f"postgresql://u:{SECRET}@h:notaport/db"}
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert "MIRRORPOOL_PRIMARY_DSN" in result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["serve"], ["migrate", "apply"]])
def test_cli_exits_2_when_pgbouncer_has_no_migrations_dsn(command: list[str]) -> None:
    env = base_env() | {
        "MIRRORPOOL_PGBOUNCER": "true",
        "MIRRORPOOL_PRIMARY_DSN": f"host=pgbouncer password={SECRET}",
    }
    result = run_cli(*command, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mirrorpool: invalid settings: MIRRORPOOL_PGBOUNCER=true needs ")
    assert "MIRRORPOOL_MIGRATIONS_DSN" in lines[0]
    assert SECRET not in result.stderr + result.stdout
