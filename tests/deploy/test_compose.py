"""deploy/compose.yaml: valid against the Compose specification, and wired the way the README
says: a mirror cloned from the primary, migrations before the service, DSNs to the right
hosts and logins, settings mirrorpool accepts. There is no Docker engine here, so what can run
without one runs for real: the mirror's healthcheck query on a real mirror; the primary's init
script on a fresh primary, then the migrate command and mirrorpool itself with the services'
own DSNs, to show the logins it made are the ones the README describes (the service's passes
mirrorpool's check, uses the owner's tables without a GRANT, and creates nothing)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import httpx
import jsonschema
import psycopg
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

from app.api.auth import hash_key
from app.devdb import SUPERUSER, LocalPair, free_ports
from app.dsn import parse_dsn
from app.settings import load_settings
from tests.conftest import start_server, stop_server
from tests.deploy import REPO
from tests.deploy.database import (
    connect,
    create_database,
    fresh_server,
    local_dsn,
    mirrorpool,
    owner_of_schema,
    owner_of_table,
    privileges,
)
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
# The logins compose/primary-init.sh makes (README, "Docker Compose"): the schema's owner, as
# whom migrations run, and the service's own.
OWNER = "app_owner"
SERVICE = "mirrorpool"


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
    # What the primary's init script does for the mirror runs for real below.
    assert primary_init_script().name == "primary-init.sh"


def primary_init_script() -> Path:
    """The script the primary runs on its first start."""
    return mounted_file("primary", "/docker-entrypoint-initdb.d/10-primary-init.sh")


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


@dataclass
class Primary:
    """A fresh primary after compose/primary-init.sh ran on it as the image runs it."""

    pair: LocalPair
    pgdata: Path  # the folder the script took for $PGDATA (it appends to pg_hba.conf)
    down: int  # a port nothing listens on, for a host that is down

    def ports(self, *, promoted: bool = False) -> dict[str, int]:
        """Where the compose hosts are: `primary` here and `mirror` down; or, once the
        mirror has been promoted and the primary is gone, the writer at `mirror`."""
        here, down = self.pair.primary.port, self.down
        if promoted:
            return {"primary": down, "mirror": here}
        return {"primary": here, "mirror": down}

    def env(self, service: str, *, promoted: bool = False) -> dict[str, str]:
        """A service's MIRRORPOOL_* settings, its DSNs pointed here."""
        env = {k: v for k, v in env_of(service).items() if k.startswith("MIRRORPOOL_")}
        for key in ("MIRRORPOOL_PRIMARY_DSN", "MIRRORPOOL_MIRROR_DSN", "MIRRORPOOL_MIGRATIONS_DSN"):
            env[key] = local_dsn(env[key], self.ports(promoted=promoted))
        return env

    def dsn(self, service: str, variable: str) -> str:
        """One of a service's DSNs, pointed here."""
        return self.env(service)[variable]


@pytest.fixture(scope="module")
def primary(work_dir: Path) -> Iterator[Primary]:
    """A primary as the image has it before its init scripts (the superuser and the database
    POSTGRES_DB, nothing else), then compose/primary-init.sh run on it as the image does:
    executed, with the service's environment, psql reaching the server as POSTGRES_USER."""
    with fresh_server(work_dir / "compose-primary") as pair:
        primary_env = env_of("primary")
        create_database(pair, primary_env["POSTGRES_DB"])
        pgdata = work_dir / "compose-pgdata"
        pgdata.mkdir()
        (pgdata / "pg_hba.conf").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | primary_env
        env |= {
            # The harness's superuser stands for the image's (POSTGRES_USER), reached over TCP
            # with its password rather than on the image's trusted Unix socket.
            "POSTGRES_USER": SUPERUSER,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(pair.primary.port),
            "PGPASSWORD": pair.password,
            "PGDATA": str(pgdata),
            "PATH": f"{pair.bindir}{os.pathsep}{os.environ['PATH']}",
        }
        script = primary_init_script()
        result = subprocess.run(
            [str(script)], env=env, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stderr
        yield Primary(pair, pgdata, free_ports(1)[0])


def test_the_init_script_lets_the_mirror_stream(primary: Primary) -> None:
    hba = (primary.pgdata / "pg_hba.conf").read_text().splitlines()
    assert hba == ["host replication replicator all scram-sha-256"]
    with primary.pair.primary.connect(env_of("primary")["POSTGRES_DB"]) as conn:
        slots = conn.execute("SELECT slot_name, slot_type FROM pg_replication_slots").fetchall()
        assert slots == [("mirror", "physical")]  # the slot mirror-entrypoint.sh streams from
        role = conn.execute(
            "SELECT rolreplication, rolcanlogin FROM pg_roles WHERE rolname = 'replicator'"
        ).fetchone()
        assert role == (True, True)


@pytest.mark.parametrize("service", MIRRORPOOL_SERVICES)
async def test_each_service_logs_in_as_a_login_mirrorpool_accepts(
    primary: Primary, service: str
) -> None:
    # mirrorpool's own start-up check, on the login the service's DSNs name (the PgBouncer
    # service's primary DSN names the same login, through PgBouncer: checked directly here).
    for variable in ("MIRRORPOOL_PRIMARY_DSN", "MIRRORPOOL_MIRROR_DSN"):
        ports = primary.ports(promoted=variable == "MIRRORPOOL_MIRROR_DSN")
        dsn = local_dsn(env_of(service)[variable], ports | {"pgbouncer": ports["primary"]})
        found = await privileges(dsn)
        assert found.user == SERVICE
        assert found.dangers() == []
        assert not found.superuser
        assert found.creates_in == ()  # nowhere to create a function another key would reach
    # What the DSNs named before: the image's superuser, which mirrorpool refuses.
    superuser = await privileges(primary.pair.primary.dsn(env_of("primary")["POSTGRES_DB"]))
    assert "is a superuser" in superuser.dangers()


def test_the_owner_owns_the_schema_and_is_no_administrator(primary: Primary) -> None:
    owner_dsn = primary.dsn("migrate", "MIRRORPOOL_MIGRATIONS_DSN")
    with connect(owner_dsn) as conn:
        assert owner_of_schema(conn) == OWNER
        row = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolbypassrls, rolcreatedb FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False, False, False)  # an owner, not an administrator


def test_the_service_login_creates_nothing(primary: Primary) -> None:
    with connect(primary.dsn("mirrorpool", "MIRRORPOOL_PRIMARY_DSN")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE planted (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE SCHEMA planted")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        # It may promote the mirror, though: the README's walk-through may ask mirrorpool to
        # (POST /v1/admin/promote), and nothing else here would.
        promote = "SELECT has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE')"
        assert conn.execute(promote).fetchone() == (True,)


def run_the_migrate_job(primary: Primary, *, promoted: bool = False) -> CompletedProcess[str]:
    """The migrate job's command, with its settings and the migrations it mounts."""
    (volume,) = SERVICES["migrate"]["volumes"]
    folder = (DEPLOY / volume.split(":")[0]).resolve()
    env = primary.env("migrate", promoted=promoted) | {"MIRRORPOOL_MIGRATIONS_DIR": str(folder)}
    return mirrorpool(*SERVICES["migrate"]["command"], env=env)


@pytest.fixture(scope="module")
def migrated(primary: Primary) -> CompletedProcess[str]:
    """The migrate job's first run on the fresh primary, the mirror down (as it may well be
    then: the job waits for the primary only)."""
    return run_the_migrate_job(primary)


def test_the_migrate_job_applies_the_example_migrations_as_the_owner(
    primary: Primary, migrated: CompletedProcess[str]
) -> None:
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("done    up   0001_notes.up.sql")
    with connect(primary.dsn("migrate", "MIRRORPOOL_MIGRATIONS_DSN")) as conn:
        assert owner_of_table(conn, "notes") == OWNER
        assert owner_of_table(conn, "mirrorpool_schema_history") == OWNER
    # A second run, as a restarted stack does it, after a failover: the primary's host is gone
    # and the promoted mirror takes writes. The owner's DSN finds it; nothing is left to do.
    again = run_the_migrate_job(primary, promoted=True)
    assert (again.returncode, again.stdout.strip()) == (0, "nothing to do"), again.stderr


def test_the_service_uses_the_owners_tables_without_a_grant(
    primary: Primary, migrated: CompletedProcess[str]
) -> None:
    assert migrated.returncode == 0, migrated.stderr
    # Default privileges: nobody granted anything on notes after the migration made it.
    with connect(primary.dsn("mirrorpool", "MIRRORPOOL_PRIMARY_DSN")) as conn:
        row = conn.execute("INSERT INTO notes (body) VALUES ('hello') RETURNING id").fetchone()
        assert row is not None
        conn.execute("UPDATE notes SET body = 'hello again' WHERE id = %s", [row[0]])
        assert conn.execute("SELECT body FROM notes WHERE id = %s", [row[0]]).fetchone() == (
            "hello again",
        )
        conn.execute("DELETE FROM notes WHERE id = %s", [row[0]])
        # /v1/migrations reads the history the owner wrote.
        history = conn.execute("SELECT version FROM mirrorpool_schema_history").fetchall()
        assert history == [("1",)]
        # Still the owner's table: the service may not change or drop it.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE notes ADD COLUMN planted int")


def test_mirrorpool_serves_through_the_compose_logins(
    primary: Primary, migrated: CompletedProcess[str]
) -> None:
    assert migrated.returncode == 0, migrated.stderr
    # The service's own settings (API keys included), as README's walk-through uses them.
    server = start_server(primary.pair, **primary.env("mirrorpool"), MIRRORPOOL_AUTH="keys")
    try:
        health = httpx.get(
            server.url + "/health", headers={"Authorization": "Bearer demo"}, timeout=5
        ).json()
        assert (health["writer"], health["warnings"]) == ("primary", [])
        answer = httpx.post(
            server.url + "/v1/query",
            headers={"Authorization": "Bearer demo"},
            json={"sql": "INSERT INTO notes (body) VALUES ($1) RETURNING id", "params": ["hi"]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    finally:
        stop_server(server)
    # Through the image's superuser instead, mirrorpool stops at once, saying what to do.
    env = primary.env("mirrorpool") | {
        "MIRRORPOOL_PRIMARY_DSN": primary.pair.primary.dsn(env_of("primary")["POSTGRES_DB"])
    }
    refused = mirrorpool("serve", env=env)
    assert refused.returncode == 2
    assert "MIRRORPOOL_ALLOW_SUPERUSER=true" in refused.stderr


def test_dsns_point_at_the_services_they_name() -> None:
    primary_env = env_of("primary")
    for name in MIRRORPOOL_SERVICES:
        env = env_of(name)
        for variable in ("MIRRORPOOL_PRIMARY_DSN", "MIRRORPOOL_MIRROR_DSN"):
            dsn = parse_dsn(env[variable])
            assert dsn["dbname"] == primary_env["POSTGRES_DB"]
            # The service's own login, with the password primary-init.sh gave it; never the
            # image's superuser, which mirrorpool would refuse to serve through.
            assert (dsn["user"], dsn["password"]) == (SERVICE, primary_env["SERVICE_PASSWORD"])
        assert parse_dsn(env["MIRRORPOOL_MIRROR_DSN"])["host"] == "mirror"
        # Migrations as the schema's owner, straight to whichever of primary and mirror takes
        # writes (never through PgBouncer: their session advisory lock needs a session).
        migrations = parse_dsn(env["MIRRORPOOL_MIGRATIONS_DSN"])
        assert migrations["dbname"] == primary_env["POSTGRES_DB"]
        assert (migrations["user"], migrations["password"]) == (
            OWNER,
            primary_env["OWNER_PASSWORD"],
        )
        assert (migrations["host"], migrations["port"]) == ("primary,mirror", "5432,5432")
        assert migrations["target_session_attrs"] == "read-write"
    assert primary_env["POSTGRES_USER"] not in {SERVICE, OWNER}
    assert parse_dsn(env_of("mirrorpool")["MIRRORPOOL_PRIMARY_DSN"])["host"] == "primary"
    behind = env_of("mirrorpool-pgbouncer")
    assert parse_dsn(behind["MIRRORPOOL_PRIMARY_DSN"])["host"] == "pgbouncer"
    assert behind["MIRRORPOOL_PGBOUNCER"] == "true"
    bouncer = env_of("pgbouncer")
    assert bouncer["DB_HOST"] == "primary"
    assert bouncer["POOL_MODE"] == "transaction"
    # The image writes DB_USER and DB_PASSWORD to its userlist.txt: the one login PgBouncer
    # lets in and logs in as must be the one mirrorpool-pgbouncer connects with.
    through = parse_dsn(behind["MIRRORPOOL_PRIMARY_DSN"])
    assert (bouncer["DB_USER"], bouncer["DB_PASSWORD"]) == (through["user"], through["password"])


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
    # Migrations never fall back to the writer's DSN, the service's login that creates nothing.
    assert settings.migrations_dsn is not None
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
