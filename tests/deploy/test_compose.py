"""deploy/compose.yaml: valid against the Compose specification, and wired the way the README
says: a mirror cloned from the primary, migrations before the service, DSNs to the right
hosts, settings mirrorpool accepts. There is no Docker engine here, so what can run without
one runs for real: the mirror's healthcheck query on a real mirror, the migrate command on a
real primary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

from app.api.auth import hash_key
from app.cluster.dsn import parse_dsn
from app.devdb import LocalPair
from app.settings import load_settings
from tests.deploy import REPO
from tests.deploy.dockerfile import read

DEPLOY = REPO / "deploy"
RAW = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
# What a user exports before `docker compose up` (README): a key with every scope.
USER_ENV = {
    "MIRRORPOOL_API_KEYS": json.dumps(
        [{"id": "demo", "sha256": hash_key("demo"), "scopes": ["read", "write", "admin"]}]
    )
}
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"compose would stop: {name}: {arg}")
        return arg if op else ""

    return VARIABLE.sub(substitute, value)


COMPOSE = interpolate(RAW, USER_ENV)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
MIRRORPOOL_SERVICES = [n for n, s in SERVICES.items() if s.get("image") == "mirrorpool:local"]


def env_of(service: str) -> dict[str, str]:
    """A service's environment, as the container gets it (values as strings)."""
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping, please"
    return {k: str(v) for k, v in env.items()}


def test_valid_against_the_compose_specification() -> None:
    # The Compose specification's own JSON schema, as vendored by check-jsonschema
    # (compose-spec/compose-spec, schema/compose-spec.json, Apache-2.0).
    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(RAW)
    ]
    assert errors == []


def test_the_schema_check_catches_a_mistake() -> None:
    schema = get_builtin_schema("vendor.compose-spec")
    broken = json.loads(json.dumps(RAW))
    broken["services"]["mirror"]["depends_on"]["primary"]["condition"] = "service_ready"
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


def test_the_services_the_readme_promises() -> None:
    always = {n for n, s in SERVICES.items() if "profiles" not in s}
    assert always == {"primary", "mirror", "migrate", "mirrorpool"}
    assert SERVICES["pgbouncer"]["profiles"] == ["pgbouncer"]
    assert SERVICES["mirrorpool-pgbouncer"]["profiles"] == ["pgbouncer"]
    assert SERVICES["mirrorpool"]["ports"] == ["127.0.0.1:8000:8000"]  # not on every interface


def test_the_image_is_built_from_this_repository() -> None:
    for name in MIRRORPOOL_SERVICES:
        build = SERVICES[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"


def test_the_mirror_is_cloned_from_the_primary_and_streams_from_it() -> None:
    mirror = SERVICES["mirror"]
    assert mirror["depends_on"]["primary"]["condition"] == "service_healthy"
    # Same settings as the primary: a standby refuses to start with a smaller max_connections.
    assert mirror["command"] == SERVICES["primary"]["command"]
    script = mounted_file("mirror", mirror["entrypoint"][-1]).read_text()
    basebackup = script[script.index("pg_basebackup") :]
    assert "--write-recovery-conf" in basebackup and "--slot=mirror" in basebackup
    assert "host=primary" in basebackup
    assert 'exec postgres "$@"' in script
    init = mounted_file("primary", "/docker-entrypoint-initdb.d/10-replication.sh").read_text()
    assert "pg_create_physical_replication_slot('mirror')" in init
    assert "host replication replicator" in init


def mounted_file(service: str, target: str) -> Path:
    """The file in deploy/ that a service mounts at `target`."""
    volumes: list[str] = SERVICES[service]["volumes"]
    for volume in volumes:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            path = (DEPLOY / source).resolve()
            assert path.is_file(), f"{service} mounts {source}, which is missing"
            return path
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_shell_scripts_parse_and_are_executable() -> None:
    for script in sorted((DEPLOY / "compose").glob("*.sh")):
        assert os.access(script, os.X_OK), script  # initdb.d runs it, not sources it
        subprocess.run(["bash", "-n", str(script)], check=True)


def healthcheck_sql(service: str) -> str:
    """The SQL a service's CMD-SHELL healthcheck runs with psql --command."""
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    match = re.search(r'--command="([^"]+)"', test[1])
    assert match, test[1]
    return match[1]


def test_mirror_healthcheck_passes_on_a_streaming_mirror_only(pair: LocalPair) -> None:
    sql = healthcheck_sql("mirror")
    assert "grep -qx t" in SERVICES["mirror"]["healthcheck"]["test"][1]
    with pair.mirrors[0].connect() as conn:
        assert conn.execute(sql).fetchone() == (True,)
    with pair.primary.connect() as conn:
        assert conn.execute(sql).fetchone() == (False,)


def test_every_awaited_health_has_a_healthcheck() -> None:
    for name, service in SERVICES.items():
        for target, dependency in service.get("depends_on", {}).items():
            if dependency["condition"] == "service_healthy":
                # mirrorpool's services take the image's HEALTHCHECK.
                assert "healthcheck" in SERVICES[target] or target in MIRRORPOOL_SERVICES, (
                    f"{name} waits for {target} to be healthy, which has no healthcheck"
                )


def test_migrations_run_once_before_the_service_starts() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["migrate", "apply"]
    assert migrate["restart"] == "no"
    for name in ("mirrorpool", "mirrorpool-pgbouncer"):
        condition = SERVICES[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully"
        # The service reads the same folder, so /v1/migrations shows nothing pending.
        assert SERVICES[name]["volumes"] == migrate["volumes"]


def test_the_migrate_command_applies_the_example_migrations(pair: LocalPair, database: str) -> None:
    (volume,) = SERVICES["migrate"]["volumes"]
    folder = (DEPLOY / volume.split(":")[0]).resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRRORPOOL_")}
    env |= {
        "MIRRORPOOL_PRIMARY_DSN": pair.primary.dsn(database),
        "MIRRORPOOL_MIGRATIONS_DIR": str(folder),
    }
    command = [str(Path(sys.executable).parent / "mirrorpool"), *SERVICES["migrate"]["command"]]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("done    up   0001_notes.up.sql")
    with pair.primary.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('notes') IS NOT NULL").fetchone() == (True,)
    # A second run, as a restarted stack (or another replica) would do it, has nothing to do.
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert (again.returncode, again.stdout.strip()) == (0, "nothing to do")


def test_dsns_point_at_the_services_they_name() -> None:
    primary_env = env_of("primary")
    for name in MIRRORPOOL_SERVICES:
        env = env_of(name)
        for variable in ("MIRRORPOOL_PRIMARY_DSN", "MIRRORPOOL_MIRROR_DSN"):
            dsn = parse_dsn(env[variable])
            assert dsn["dbname"] == primary_env["POSTGRES_DB"]
            assert dsn["user"] == primary_env["POSTGRES_USER"]
            assert dsn["password"] == primary_env["POSTGRES_PASSWORD"]
        assert parse_dsn(env["MIRRORPOOL_MIRROR_DSN"])["host"] == "mirror"
    assert parse_dsn(env_of("mirrorpool")["MIRRORPOOL_PRIMARY_DSN"])["host"] == "primary"
    behind = env_of("mirrorpool-pgbouncer")
    assert parse_dsn(behind["MIRRORPOOL_PRIMARY_DSN"])["host"] == "pgbouncer"
    assert behind["MIRRORPOOL_PGBOUNCER"] == "true"
    # Migrations bypass PgBouncer: their session advisory lock needs a session of its own.
    assert parse_dsn(behind["MIRRORPOOL_MIGRATIONS_DSN"])["host"] == "primary"
    assert env_of("pgbouncer")["DB_HOST"] == "primary"
    assert env_of("pgbouncer")["POOL_MODE"] == "transaction"


@pytest.mark.parametrize("service", MIRRORPOOL_SERVICES)
def test_mirrorpool_accepts_each_services_settings(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [k for k in os.environ if k.startswith("MIRRORPOOL_")]:
        monkeypatch.delenv(key)
    image_env = read(REPO / "Dockerfile")[-1].env()
    for key, value in (image_env | env_of(service)).items():
        if key.startswith("MIRRORPOOL_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.primary_dsn is not None and settings.mirror_dsns
    if service != "migrate":
        settings.check_auth()  # the keys are there, so binding 0.0.0.0 is allowed


def test_stop_grace_covers_draining_then_closing_the_pools() -> None:
    # SIGKILL comes after stop_grace_period: it must outlast the drain of in-flight requests
    # and the pools' close, each bounded by MIRRORPOOL_SHUTDOWN_TIMEOUT.
    for name in ("mirrorpool", "mirrorpool-pgbouncer"):
        grace = float(SERVICES[name]["stop_grace_period"].removesuffix("s"))
        shutdown = float(env_of(name)["MIRRORPOOL_SHUTDOWN_TIMEOUT"])
        assert grace > 2 * shutdown, (name, grace, shutdown)


def test_the_api_key_is_required_not_defaulted() -> None:
    with pytest.raises(AssertionError, match="MIRRORPOOL_API_KEYS"):
        interpolate(RAW, {})
