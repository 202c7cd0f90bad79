"""Kubernetes manifests (deploy/*.yaml) and the KServe InferenceServices (deploy/kserve/*.yaml), checked offline.

No cluster is reachable from the development machines or CI, so nothing here applies a manifest: every Kubernetes
resource is validated against the Kubernetes OpenAPI schemas that the `kubernetes-validate` package bundles (strict:
unknown fields fail), for the oldest version the manifests claim (gRPC probes are GA from 1.27) and the newest the
package holds; and the values that must agree with the server (ports, setting names, health service names, drain
time) are read from the code, not written here a second time.

KServe publishes its CRD's schema only in its own repository (its PyPI package, `kserve`, carries generated Python
models, no CRD), so an InferenceService is checked for its required fields and for what KServe and Knative expect
of a custom predictor; the Kubernetes part of the predictor (its PodSpec: containers, probes, volumes) is validated
against the Kubernetes Pod schema.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install -r requirements.txt)")

from cloud_server.settings import Settings  # noqa: E402
from shared._proto import OIP_SERVICE_NAME, SERVICE_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_FILES = sorted(DEPLOY.glob("*.yaml"))
KSERVE_FILES = sorted((DEPLOY / "kserve").glob("*.yaml"))
# gRPC probes: beta (on by default) in 1.24, GA in 1.27; the newest schema kubernetes-validate bundles
MIN_K8S = "1.27"
K8S_VERSIONS = (MIN_K8S, kubernetes_validate.latest_version())
# grpc.health.v1 names the server reports (cloud_server/grpc/server.py start(), cloud_server/grpc/oip_service.py register())
HEALTH_SERVICES = {"", SERVICE_NAME, OIP_SERVICE_NAME}
PREFIX = Settings.model_config["env_prefix"]
# KServe v1beta1 PredictorSpec fields that are not PodSpec fields (ComponentExtensionSpec and the predictor
# implementations; from the kserve 0.21 Python SDK's V1beta1PredictorSpec.attribute_map)
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType", "autoScaling",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
    "deploymentStrategy", "storageUris", "storageContainerName", "workerSpec", "model", "sklearn", "xgboost",
    "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml", "lightgbm", "paddle",
}


def _docs(path: Path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all(files):
    return [(p, d) for p in files for d in _docs(p)]


def _of_kind(kind: str):
    found = [d for _, d in _all(K8S_FILES) if d["kind"] == kind]
    assert found, f"no {kind} in deploy/"
    return found


def _deployment():
    (dep,) = _of_kind("Deployment")
    return dep


def _container(pod_spec: dict) -> dict:
    assert len(pod_spec["containers"]) == 1, "one container: the splitinfer server"
    return pod_spec["containers"][0]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _settings(container: dict) -> Settings:
    """The settings the server will run with: the container's SPLITINFER_ variables over the defaults (a value from
    the downward API, the CPU limit in whole cores, stands in as 2)."""
    values = {}
    for name, e in _env(container).items():
        if name.startswith(PREFIX):
            field = name[len(PREFIX):].lower()
            assert field in Settings.model_fields, f"{name}: no such setting in cloud_server/settings.py"
            values[field] = e["value"] if "value" in e else "2"
    return Settings(**values)


def _setting(container: dict, name: str):
    return getattr(_settings(container), name)


def _validate(doc: dict, version: str):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')} against Kubernetes {e.version}: "
                             f"{'.'.join(map(str, e.path))}: {e.message}") from None


def test_manifests_exist():
    kinds = sorted(d["kind"] for _, d in _all(K8S_FILES))
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service"], kinds
    assert [d["kind"] for _, d in _all(KSERVE_FILES)] == ["InferenceService", "InferenceService"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_schema(path, version):
    """Every resource validates against the Kubernetes schema (strict: a misspelt or misplaced field fails)."""
    for doc in _docs(path):
        _validate(doc, version)


def test_validator_rejects_a_broken_manifest():
    """The check can fail: a misspelt probe field and a port given as text are refused."""
    dep = copy.deepcopy(_deployment())
    c = _container(dep["spec"]["template"]["spec"])
    c["readinessProbes"] = c.pop("readinessProbe")
    with pytest.raises(AssertionError, match="readinessProbes"):
        _validate(dep, MIN_K8S)
    dep = copy.deepcopy(_deployment())
    _container(dep["spec"]["template"]["spec"])["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(AssertionError):
        _validate(dep, MIN_K8S)


def test_env_names_are_settings():
    """Every SPLITINFER_ variable is a setting of cloud_server/settings.py, and the values parse."""
    containers = [_container(_deployment()["spec"]["template"]["spec"])]
    containers += [_container(d["spec"]["predictor"]) for _, d in _all(KSERVE_FILES)]
    for c in containers:
        _settings(c)
    with pytest.raises(AssertionError, match="no such setting"):
        _settings({"env": [{"name": PREFIX + "GRPC_PROT", "value": "1"}]})


def test_deployment_ports_are_the_server_defaults():
    c = _container(_deployment()["spec"]["template"]["spec"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    defaults = {"grpc": Settings.model_fields["grpc_port"].default, "http": Settings.model_fields["http_port"].default}
    assert ports == defaults
    # explicit env values, where given, are the defaults too (the image sets the same: docker/Dockerfile.cloud)
    assert _setting(c, "grpc_port") == defaults["grpc"] and _setting(c, "http_port") == defaults["http"]
    assert _setting(c, "host") == "0.0.0.0", "bind every interface, or the kubelet's probes cannot reach it"
    assert _setting(c, "enable_grpc") and _setting(c, "enable_rest")
    ann = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == defaults["http"]


def test_probes_use_grpc_health_and_wait_for_the_model():
    c = _container(_deployment()["spec"]["template"]["spec"])
    grpc_port = _setting(c, "grpc_port")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[kind]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{kind}: gRPC health"
        assert probe["grpc"]["port"] == grpc_port, kind
        assert probe["grpc"].get("service", "") in HEALTH_SERVICES, f"{kind}: the server reports no such service"
    # the gRPC port opens, and health turns SERVING, only after the repository is loaded; with preload that is
    # every rung (cloud_server/server.py: load in __init__, health set in start())
    assert _setting(c, "preload") is True
    # a slow start is the startup probe's business, not the liveness probe's
    s = c["startupProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 120


def test_drain_outlasts_the_server_stop():
    """SIGTERM comes after preStop; the server's stop() then takes at most 2 x shutdown_grace_s + 5 s (it waits for
    requests in flight up to the grace, then joins uvicorn up to grace + 5: cloud_server/server.py). The kubelet's
    terminationGracePeriodSeconds counts the preStop hook too."""
    pod = _deployment()["spec"]["template"]["spec"]
    c = _container(pod)
    grace = float(_setting(c, "shutdown_grace_s"))
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep", "preStop: wait for the endpoints to drop the pod before SIGTERM"
    pre_stop = float(cmd[1])
    assert pre_stop >= 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + 2 * grace + 5 + 5


def test_resources_api_keys_and_threads():
    pod = _deployment()["spec"]["template"]["spec"]
    c = _container(pod)
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert res["limits"]["memory"] == "2Gi" and res["requests"]["memory"] == "1Gi"
    env = _env(c)
    # threads follow the CPU limit, not the node's core count
    for name in ("OMP_NUM_THREADS", PREFIX + "MAX_CONCURRENT_DECODES"):
        assert env[name]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu", name
    # API keys: a file from a Secret, never a literal in the manifest
    assert PREFIX + "API_KEYS" not in env
    key_file = env[PREFIX + "API_KEY_FILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert any(key_file.startswith(mounts[name].rstrip("/") + "/") for name in secrets if name in mounts)
    # the image's service user
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001


def test_services_select_the_pods():
    dep = _deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    c = _container(dep["spec"]["template"]["spec"])
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    services = _of_kind("Service")
    assert any(s["spec"].get("clusterIP") == "None" for s in services), "a headless Service for dns:/// round robin"
    for s in services:
        assert s["spec"]["selector"].items() <= labels.items(), s["metadata"]["name"]
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in named, p
            assert p["port"] == named[p["targetPort"]], "the Service's port numbers are the server's"


def test_hpa_scales_the_deployment_on_cpu():
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    dep = _deployment()
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in _container(dep["spec"]["template"]["spec"])["resources"]["requests"], "utilization needs a request"
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (pdb,) = _of_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain must be able to evict one pod"


@pytest.mark.parametrize("path", KSERVE_FILES, ids=lambda p: p.name)
def test_kserve_inference_service(path):
    (isvc,) = _docs(path)
    # required fields of serving.kserve.io/v1beta1 InferenceService with a custom predictor
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    name = isvc["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 45
    predictor = isvc["spec"]["predictor"]
    assert set(isvc["spec"]) <= {"predictor", "transformer", "explainer"}
    c = _container(predictor)
    # KServe finds the model server by this name, and reads a custom predictor's protocol from PROTOCOL (v1|v2)
    assert c["name"] == "kserve-container" and c["image"]
    assert _env(c)["PROTOCOL"]["value"] == "v2"
    # one port: KServe exposes HTTP or gRPC, not both; Knative's names are h2c (HTTP/2, gRPC) and http1
    (port,) = c["ports"]
    transport = {"h2c": "grpc", "http1": "http"}[port["name"]]
    assert port["containerPort"] == _setting(c, f"{transport}_port")
    assert _setting(c, "host") == "0.0.0.0" and _setting(c, "preload") is True
    assert (_setting(c, "grpc_port"), _setting(c, "http_port")) == (8081, 8080), "KServe's port convention"
    assert {"grpc": "grpc", "http": "rest"}[transport] in path.name
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c[kind]
        if transport == "grpc":
            assert probe["grpc"]["port"] == port["containerPort"]
            assert probe["grpc"].get("service", "") in HEALTH_SERVICES
        else:
            assert probe["httpGet"]["port"] == port["containerPort"]
            assert probe["httpGet"]["path"] in {"/v2/health/ready", "/v2/health/live"}
    assert c["readinessProbe"].get("httpGet", {}).get("path", "/v2/health/ready") == "/v2/health/ready"
    # Knative refuses these in a revision's container (it drains through its queue-proxy itself)
    assert "lifecycle" not in c and "startupProbe" not in c
    assert not any("valueFrom" in e for e in c.get("env", [])), "Knative refuses resourceFieldRef by default"
    assert _env(c)["OMP_NUM_THREADS"]["value"] == str(int(float(c["resources"]["limits"]["cpu"])))
    # the same resources as the Deployment
    dep_c = _container(_deployment()["spec"]["template"]["spec"])
    assert c["resources"] == dep_c["resources"]
    # the rest of the predictor is a Kubernetes PodSpec: validate it as a Pod's
    extra = set(predictor) & KSERVE_PREDICTOR_FIELDS
    pod_spec = {k: v for k, v in predictor.items() if k not in extra}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}
    for version in K8S_VERSIONS:
        _validate(pod, version)
    if predictor.get("scaleMetric") is not None:
        assert predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
