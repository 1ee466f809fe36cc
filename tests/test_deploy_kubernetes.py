"""deploy/kubernetes: every variant rendered by kustomize as `kubectl apply -k` would, each
resource validated against the Kubernetes schemas (kubernetes-validate, offline), and the
daemon's side of the manifests checked: settings, probes, writable paths, replicas.

Rendering needs kubectl (its built-in kustomize, v5): it comes with this machine's image,
not from Debian's archive (whose kubectl 1.20 predates kustomize components), so
scripts/test-tools cannot install it; without it the rendering tests skip, or fail under
RUNNER_REQUIRE_TOOLS=1."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from runner.daemon.control_server import parse_tcp
from runner.settings import Settings, load_settings
from tests.tool_helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
VARIANTS = ["base", "overlays/git-sync", "overlays/postgres", "overlays/postgres-git-sync"]
# The oldest and newest schemas kubernetes-validate bundles that these manifests target.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
PREFIX = "DUCTAPE_RUNNER_"


@cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    kubectl = require_tool("kubectl", "kubectl")
    proc = subprocess.run(
        [kubectl, "kustomize", str(KUBE / variant)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def by_kind(variant: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in render(variant) if d["kind"] == kind]


def deployment(variant: str) -> dict[str, Any]:
    (found,) = by_kind(variant, "Deployment")
    return found


def container(variant: str, name: str = "runner") -> dict[str, Any]:
    pod = deployment(variant)["spec"]["template"]["spec"]
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return found


def env(variant: str) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(variant)["env"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_renders_and_validates_strictly(variant: str, version: str) -> None:
    for resource in render(variant):
        kubernetes_validate.validate(resource, version, strict=True)


def test_a_misspelt_field_does_not_validate() -> None:
    broken = yaml.safe_load(yaml.safe_dump(deployment("base")))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesytem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_example_secret_validates_and_names_only_settings(tmp_path: Path) -> None:
    secret = yaml.safe_load((KUBE / "credentials.example.yaml").read_text())
    kubernetes_validate.validate(secret, VERSIONS[-1], strict=True)
    names = set(secret["stringData"])
    assert {"DUCTAPE_RUNNER_ACCESS_TOKEN", "DUCTAPE_RUNNER_WORKSPACE_ID"} <= names
    assert {n.removeprefix(PREFIX).lower() for n in names} <= set(Settings.model_fields)


def test_every_file_under_deploy_kubernetes_is_used_by_a_kustomization() -> None:
    used = {KUBE / "credentials.example.yaml"}
    for kustomization in KUBE.rglob("kustomization.yaml"):
        used.add(kustomization)
        spec = yaml.safe_load(kustomization.read_text())
        here = kustomization.parent
        refs = [*spec.get("resources", []), *spec.get("components", [])]
        refs += [p["path"] for p in spec.get("patches", []) if "path" in p]
        refs += [f for g in spec.get("configMapGenerator", []) for f in g.get("files", [])]
        for ref in refs:
            target = (here / ref).resolve()
            assert target.exists(), f"{kustomization}: {ref}"
            used.add(target / "kustomization.yaml" if target.is_dir() else target)
    assert {p for p in KUBE.rglob("*") if p.is_file()} == used


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_as_non_root_on_a_read_only_root_with_no_capabilities(variant: str) -> None:
    pod = deployment(variant)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) > 0, c["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_path_the_daemon_writes_is_a_volume_and_every_mount_has_one(variant: str) -> None:
    pod = deployment(variant)["spec"]["template"]["spec"]
    volumes = {v["name"] for v in pod["volumes"]}
    for c in pod["containers"]:
        assert {m["name"] for m in c["volumeMounts"]} <= volumes, c["name"]
    mounts = {m["mountPath"]: m for m in container(variant)["volumeMounts"]}
    settings = env(variant)
    socket_dir = str(Path(settings["DUCTAPE_RUNNER_CONTROL_SOCKET"]).parent)
    writable = [socket_dir, "/tmp"]
    if not settings.get("DUCTAPE_RUNNER_STATE", "postgresql://").startswith("postgres"):
        writable.append(str(Path(settings["DUCTAPE_RUNNER_STATE"]).parent))
    for path in writable:
        assert path in mounts and not mounts[path].get("readOnly"), path
    jobs = settings["DUCTAPE_RUNNER_JOBS_DIR"]
    assert any(jobs.startswith(p) and m.get("readOnly") for p, m in mounts.items()), jobs


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_are_the_control_apis_open_health_endpoints(variant: str) -> None:
    runner = container(variant)
    (port,) = [p for p in runner["ports"] if p["name"] == "control"]
    host, tcp_port = parse_tcp(env(variant)["DUCTAPE_RUNNER_CONTROL_TCP"])
    assert (host, tcp_port) == ("0.0.0.0", port["containerPort"])  # kubelet is not loopback
    probes = {k: runner[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: (g["path"], g["port"]) for k, g in probes.items()} == {
        "startupProbe": ("/healthz", "control"),
        "livenessProbe": ("/healthz", "control"),
        "readinessProbe": ("/readyz", "control"),
    }
    (service,) = by_kind(variant, "Service")
    assert service["spec"]["publishNotReadyAddresses"] is True  # a degraded pod is still scraped
    assert service["spec"]["selector"] == deployment(variant)["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_environment_and_the_secret_give_valid_settings(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon reads in the pod: the container's env, and the Secret's keys as
    files in CREDENTIALS_DIRECTORY (the postgres variants take the DSN from there)."""
    secret = yaml.safe_load((KUBE / "credentials.example.yaml").read_text())["stringData"]
    secret[PREFIX + "STATE"] = "postgresql://runner:pw@postgres.db:5432/ductape_runner"
    for key, value in secret.items():
        (tmp_path / key).write_text(value)
    values = env(variant)
    for name, value in values.items():
        if name.startswith(PREFIX):
            assert isinstance(value, str | dict), name
            monkeypatch.setenv(name, value if isinstance(value, str) else "pod-0")
    settings = load_settings(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.access_token is not None
    assert settings.access_token.get_secret_value() == "your-access-token"
    postgres = "postgres" in variant
    assert settings.state.startswith("postgresql://") is postgres
    assert values["CREDENTIALS_DIRECTORY"] in {
        m["mountPath"] for m in container(variant)["volumeMounts"]
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_sqlite_runs_one_daemon_and_postgres_several_replicas(variant: str) -> None:
    spec = deployment(variant)["spec"]
    claims = by_kind(variant, "PersistentVolumeClaim")
    if "postgres" in variant:
        assert spec["replicas"] >= 2 and not claims
        assert PREFIX + "STATE" not in env(variant)  # the Secret's DSN applies
        assert env(variant)[PREFIX + "REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    else:
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
        assert [c["metadata"]["name"] for c in claims] == ["ductape-runner-state"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_jobs_folder_comes_from_the_configmap_or_git_sync(variant: str) -> None:
    jobs = env(variant)[PREFIX + "JOBS_DIR"]
    configmaps = by_kind(variant, "ConfigMap")
    if "git-sync" in variant:
        assert not configmaps
        args = dict(
            a.removeprefix("--").split("=", 1) for a in container(variant, "git-sync")["args"]
        )
        assert jobs.startswith(f"{args['root']}/{args['link']}/")
    else:
        (cm,) = configmaps
        assert jobs == "/etc/ductape-runner/jobs.d"
        assert sorted(cm["data"]) == sorted(p.name for p in (KUBE / "base" / "jobs.d").iterdir())


def test_the_example_jobs_of_the_configmap_pass_check() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "check", str(KUBE / "base" / "jobs.d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
