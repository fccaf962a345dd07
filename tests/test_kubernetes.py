"""deploy/kubernetes/: validated offline against the Kubernetes schemas, and consistent.

Built-in kinds (Service, StatefulSet, Deployment, PersistentVolumeClaim) go through
``kubernetes-validate --strict`` (its schemas ship in the package: no cluster, no network).
The prometheus-operator kinds (the ServiceMonitors here, the PrometheusRule in
alerts/kubernetes/) are custom resources it has no schema for; ``tests/kubernetes/
validate-crds.mjs`` checks them against @kubernetes-models/prometheus-operator's schemas,
generated from prometheus-operator's API types as its CRDs are: types, required fields,
enumerations and patterns are checked, unknown fields are not refused (as an API server
without strict field validation prunes them). That ``--shard auto/N`` splits a fleet exactly
once among pods named as this StatefulSet names them is tests/test_sharding.py's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmm_cert_exporter import rules
from vmm_cert_exporter.sharding import parse_shard

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
PROMETHEUS_RULE = ROOT / "alerts" / "kubernetes" / "vmm-certificates.prometheusrule.yaml"
VALIDATE_CRDS = ROOT / "tests" / "kubernetes" / "validate-crds.mjs"
CUSTOM = {"ServiceMonitor", "PrometheusRule"}


def resources(*paths: Path) -> list[dict[str, Any]]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources(*MANIFESTS) if r["kind"] == kind}


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("kubernetes-validate") or str(
        Path(__file__).resolve().parents[1] / ".venv" / "bin" / "kubernetes-validate"
    )
    return subprocess.run(
        [tool, "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def validate_crds(documents: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None, "node (make node) runs the custom resources' validator"
    return subprocess.run(
        [node, str(VALIDATE_CRDS)],
        input=json.dumps(documents),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---- the schemas ---------------------------------------------------------------------------


def test_the_manifests_are_there() -> None:
    kinds = sorted(r["kind"] for r in resources(*MANIFESTS))
    assert kinds == [
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "Service",
        "ServiceMonitor",
        "ServiceMonitor",
        "StatefulSet",
    ]
    assert not [r for r in resources(*MANIFESTS) if r["kind"] in ("Secret", "ConfigMap")]


def test_built_in_kinds_pass_kubernetes_validate_strict() -> None:
    built_in = [p for p in MANIFESTS if not {r["kind"] for r in resources(p)} & CUSTOM]
    assert len(built_in) == 2
    result = kubernetes_validate(*built_in)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\S+) against version", result.stdout)
    assert len(passed) == 5, result.stdout
    assert "WARN" not in result.stdout + result.stderr


def test_kubernetes_validate_refuses_a_broken_statefulset(tmp_path: Path) -> None:
    for spoil in (
        lambda s: s.update(replica=3),  # unknown field
        lambda s: s.update(replicas="3"),  # wrong type
        lambda s: s.pop("selector"),  # required
    ):
        docs = resources(KUBERNETES / "exporter.yaml")
        statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
        spoil(statefulset["spec"])
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        assert kubernetes_validate(path).returncode != 0


def test_custom_resources_pass_the_prometheus_operator_schemas() -> None:
    custom = [r for r in resources(*MANIFESTS, PROMETHEUS_RULE) if r["kind"] in CUSTOM]
    assert len(custom) == 3
    result = validate_crds(custom)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"ok {r['kind']} {r['metadata']['name']}" for r in custom]


def test_the_custom_resource_validator_refuses_broken_ones() -> None:
    """One run of the validator over spoilt copies (it takes seconds to start)."""
    spoilt, reasons = [], []
    for where, value, why in (
        ("interval", "soon", "must match pattern"),
        ("port", 9868, "must be string"),
        ("relabel action", "bogus", "must be equal to one of the allowed values"),
    ):
        monitor = by_kind("ServiceMonitor")["vmm-cert-exporter"]
        endpoint = monitor["spec"]["endpoints"][0]
        if where == "relabel action":
            endpoint["relabelings"][0]["action"] = value
        else:
            endpoint[where] = value
        spoilt.append(monitor)
        reasons.append(why)
    rule = resources(PROMETHEUS_RULE)[0]
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    spoilt.append(rule)
    reasons.append("must have required property 'expr'")
    result = validate_crds(spoilt)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == len(spoilt)
    for line, why in zip(lines, reasons, strict=True):
        assert line.startswith("invalid ") and why.replace("'", "") in line.replace("'", ""), line


# ---- what they say -------------------------------------------------------------------------


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def test_the_statefulset_gives_each_pod_its_shard() -> None:
    statefulset = by_kind("StatefulSet")["vmm-cert-exporter"]
    (container,) = pod_spec(statefulset)["containers"]
    args = container["args"]
    total = statefulset["spec"]["replicas"]
    assert args[args.index("--shard") + 1] == f"auto/{total}"
    # the pods' names, as the StatefulSet makes them, are the shards 0..N-1
    name = statefulset["metadata"]["name"]
    pods = [f"{name}-{k}" for k in range(total)]
    shards = [parse_shard(f"auto/{total}", hostname=pod.__str__) for pod in pods]
    assert [s.index for s in shards] == list(range(total))
    # the headless Service names the pods and selects exactly them
    service = by_kind("Service")[statefulset["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize(
    ("kind", "name"), [("StatefulSet", "vmm-cert-exporter"), ("Deployment", "vmm-cert-receiver")]
)
def test_non_root_read_only_secrets_referenced_not_included(kind: str, name: str) -> None:
    workload = by_kind(kind)[name]
    spec = pod_spec(workload)
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert "\nUSER 10001" in (ROOT / "Dockerfile").read_text()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    # the secret is mounted where CREDENTIALS_DIRECTORY says; the manifests only name it
    secret = volumes["credentials"]["secret"]["secretName"]
    assert mounts["credentials"] == env["CREDENTIALS_DIRECTORY"]
    header = KUBERNETES / ("exporter.yaml" if kind == "StatefulSet" else "receiver.yaml")
    text = header.read_text()
    assert f"kubectl create secret generic {secret} " in text
    config_map = volumes["config"]["configMap"]["name"]
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    assert mounts["config"] == str(config_path.parent)
    created = re.search(
        rf"kubectl create configmap {config_map} --from-file={config_path.name}=(\S+)", text
    )
    assert created is not None
    shipped = ROOT / created.group(1)
    # every credential the shipped configuration names is a key of the secret created
    named = set(re.findall(r"\$CREDENTIALS_DIRECTORY/([\w.-]+)", shipped.read_text()))
    given = set(re.findall(r"--from-file=([\w.-]+)=", text.split("create secret", 1)[1]))
    assert named == given
    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= requests.keys()
    assert "memory" in container["resources"]["limits"]


def test_the_exporters_resources_are_the_ones_scaling_md_derives() -> None:
    (container,) = pod_spec(by_kind("StatefulSet")["vmm-cert-exporter"])["containers"]
    resources_ = container["resources"]
    scaling = " ".join((ROOT / "docs" / "scaling.md").read_text().split())
    wanted = (
        f"requests `cpu: {resources_['requests']['cpu']}`, "
        f"`memory: {resources_['requests']['memory']}`, limit "
        f"`memory: {resources_['limits']['memory']}`"
    )
    assert wanted in scaling
    assert "cpu" not in resources_["limits"]


def test_the_receiver_is_one_replica_with_its_journal_on_a_claim() -> None:
    deployment = by_kind("Deployment")["vmm-cert-receiver"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two writers
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    claim = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"]["claimName"] in by_kind("PersistentVolumeClaim")
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["name"])
    journal = yaml.safe_load((ROOT / "deploy" / "receiver.example.yml").read_text())["receiver"][
        "journal"
    ]
    assert Path(journal).parent == Path(mount["mountPath"])
    assert spec["securityContext"]["fsGroup"] == 10001  # the claim is writable by the user
    service = by_kind("Service")["vmm-cert-receiver"]
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 9869


def test_the_service_monitors_keep_the_jobs_the_rules_select() -> None:
    monitors = by_kind("ServiceMonitor")
    exporter = monitors["vmm-cert-exporter"]["spec"]["endpoints"][0]["relabelings"]
    assert {"action": "replace", "targetLabel": "job", "replacement": rules.DEFAULT_JOB} in exporter
    shard = next(r for r in exporter if r["targetLabel"] == "shard")
    assert shard["sourceLabels"] == ["__meta_kubernetes_pod_name"]
    # Prometheus anchors the regex at both ends
    assert (
        re.fullmatch(shard["regex"], "vmm-cert-exporter-11").expand(  # type: ignore[union-attr]
            shard["replacement"].replace("$1", r"\1")
        )
        == "11"
    )
    receiver = monitors["vmm-cert-receiver"]["spec"]["endpoints"][0]["relabelings"]
    jobs = {
        j["job_name"]
        for j in yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    }
    (job,) = [r["replacement"] for r in receiver if r["targetLabel"] == "job"]
    assert job in jobs
    for name, monitor in monitors.items():
        selected = monitor["spec"]["selector"]["matchLabels"]
        matching = [
            s
            for s in by_kind("Service").values()
            if selected.items() <= s["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, name
        ports = {p["name"] for p in matching[0]["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in ports


def test_the_readmes_kubernetes_path_creates_what_the_statefulset_references() -> None:
    readme = " ".join((ROOT / "README.md").read_text().replace("\\\n", " ").split())
    spec = pod_spec(by_kind("StatefulSet")["vmm-cert-exporter"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_map = volumes["config"]["configMap"]["name"]
    secret = volumes["credentials"]["secret"]["secretName"]
    assert (
        f"kubectl create configmap {config_map} --from-file=config.yml=deploy/config.example.yml"
        in readme
    )
    assert f"kubectl create secret generic {secret} --from-file=winrm-password=" in readme
    applied = re.findall(r"-f (\S+\.yaml)", readme)
    assert {ROOT / p for p in applied} == {
        KUBERNETES / "exporter.yaml",
        KUBERNETES / "servicemonitor.yaml",
        PROMETHEUS_RULE,
    }
