"""Deployment files (docker/, docker-compose.yml, .dockerignore): checked as text, without building anything.
Building and running the images for real is `make images` (docker/build.sh, buildah)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cloud", ROOT / "docker" / "Dockerfile.edge",
               ROOT / "docker" / "Dockerfile.cloud-cpu"]
SECRETISH = re.compile(r"\.(pem|crt|key|p12)\b|ca-certificates|cacert|pipcert|secret|api_key", re.I)


def _instructions(path: Path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines()
                                          if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in (s.strip() for s in text.splitlines()) if ln]


def _stages(path: Path):
    """{stage name or "final": its instructions}; the last stage is "final" (what the image holds)."""
    ins = _instructions(path)
    starts = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    stages = {}
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(ins)
        words = [w for w in ins[i][1].split() if not w.startswith("--platform=")]
        named = len(words) > 2 and words[1].upper() == "AS"
        name = "final" if n == len(starts) - 1 else (words[2] if named else str(n))
        stages[name] = ins[i:end]
    return stages


def _req_names(path: Path):
    return {re.split(r"[=<>\[; ]", ln.strip())[0].lower().replace("_", "-")
            for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_basics(path):
    ins = _instructions(path)
    kinds = [k for k, _ in ins]
    # the base image is a build argument with the public default; the image itself is FROM it
    first_from = kinds.index("FROM")
    base_args = [a for k, a in ins[:first_from] if k == "ARG" and a.startswith("BASE_IMAGE=")]
    assert base_args and base_args[0].split("=", 1)[1].startswith("python:3.11"), "ARG BASE_IMAGE=python:3.11... before FROM"
    final = _stages(path)["final"]
    assert final[0][1].split() == ["${BASE_IMAGE}"], "the image itself: FROM ${BASE_IMAGE}, for the target platform"
    # every other stage is FROM an image named by a build argument declared before the first FROM
    declared = {a.split("=", 1)[0] for k, a in ins[:first_from] if k == "ARG"}
    for k, a in ins:
        if k == "FROM":
            image = [w for w in a.split() if not w.startswith("--platform=")][0]
            assert re.fullmatch(r"\$\{(\w+)\}", image) and image[2:-1] in declared, f"FROM {a}"
    # runs as a non-root user, with a health check
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "last USER must not be root"
    assert "HEALTHCHECK" in kinds and not any(a.upper().startswith("NONE") for k, a in ins if k == "HEALTHCHECK")
    # no secrets or CA bundles copied in; pip's CA only as a build secret mount
    for k, a in ins:
        if k in {"COPY", "ADD"}:
            assert not SECRETISH.search(a), f"{k} {a}: looks like a secret or CA bundle"
        if k == "ENV":
            assert not re.search(r"PIP_CERT|REQUESTS_CA_BUNDLE|SSL_CERT_FILE|API_KEY=\S", a), f"ENV {a}"
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert "pipcert" not in runs or "--mount=type=secret,id=pipcert" in runs
    # in the final stage, pinned dependencies are installed before the source is copied (fast rebuilds)
    req = next(i for i, (k, a) in enumerate(final) if k == "COPY" and "requirements" in a)
    install = next(i for i, (k, a) in enumerate(final) if k == "RUN" and "pip-install.sh" in a)
    source = next(i for i, (k, a) in enumerate(final) if k == "COPY" and re.search(r"(^|\s|/)(shared|app)/", a))
    assert req < install < source


def test_edge_image_is_torch_free():
    path = ROOT / "docker" / "Dockerfile.edge"
    ins, stages = _instructions(path), _stages(path)
    final = stages["final"]
    # the edge installs requirements-edge.txt, never the full requirements.txt, and that file has no torch stack
    text = " ".join(a for k, a in ins if k in {"COPY", "RUN"})
    assert "requirements-edge.txt" in text
    assert not re.search(r"(?<![\w-])requirements\.txt", text), "the edge image must not see requirements.txt"
    install = next(a for k, a in final if k == "RUN" and "pip-install.sh" in a)
    assert "requirements-edge.txt" in install
    pins = _req_names(ROOT / "requirements-edge.txt")
    heavy = {"torch", "torchvision", "compressai", "grpcio-tools", "triton", "torch-geometric", "onnx"}
    assert not pins & heavy, sorted(pins & heavy)
    assert not [p for p in pins if p.startswith(("nvidia-", "cuda-"))]
    assert {"onnxruntime", "numpy", "pillow", "safetensors", "grpcio", "protobuf"} <= pins
    # pip goes after the install, in the same RUN (a later RUN would leave it in the install's layer)
    assert re.search(r"pip uninstall -y.* pip\b", install) and "python3 -m venv" in install
    # build checks: the client imports, torch does not
    checks = " ".join(a for k, a in final if k == "RUN")
    assert "import edge_client" in checks and 'python -c "import torch"' in checks


def test_edge_export_stage():
    """The edge packages are exported in (and so match) the cloud image; the final stage takes only what the edge
    runtime needs from it."""
    path = ROOT / "docker" / "Dockerfile.edge"
    ins, stages = _instructions(path), _stages(path)
    first_from = [k for k, _ in ins].index("FROM")
    cloud_arg = next(a for k, a in ins[:first_from] if k == "ARG" and a.startswith("CLOUD_IMAGE="))
    assert cloud_arg.split("=", 1)[1].startswith("splitinfer-cloud")
    # on the build platform: the packages are platform-independent, and an arm64 edge needs no arm64 cloud image
    assert "export" in stages and stages["export"][0][1].split()[:2] == ["--platform=$BUILDPLATFORM", "${CLOUD_IMAGE}"]
    export_runs = " ".join(a for k, a in stages["export"] if k == "RUN")
    assert "-m splitinfer export-edge" in export_runs and "shared.proto_build" in export_runs
    assert "/opt/splitinfer/bundles" in export_runs, "bundles baked into the cloud image are exported too"
    assert re.search(r"rm -f \S*rung-\*\.safetensors", export_runs), "the edge image needs no rung weights"
    final = stages["final"]
    copies = [a for k, a in final if k == "COPY"]
    assert not any("cloud_server" in a for a in copies)
    # the app comes from the export stage (trimmed, with the generated stubs), never straight from the context
    assert not any(re.match(r"(shared|edge_client|splitinfer)/", a) for a in copies)
    assert any(a.startswith("--from=export") and "/edge" in a for a in copies)
    from shared.bundle import DEFAULT_BUNDLE

    env = " ".join(a for k, a in final if k == "ENV")
    assert f"SPLITINFER_BUNDLE=/opt/splitinfer/edge/{DEFAULT_BUNDLE}" in env
    # docker/build.sh builds the edge FROM the cloud image it just built
    build_sh = (ROOT / "docker" / "build.sh").read_text()
    assert '--build-arg "CLOUD_IMAGE=$CLOUD"' in build_sh


def test_edge_image_has_no_server_stack():
    ins = _instructions(ROOT / "docker" / "Dockerfile.edge")
    copies = " ".join(a for k, a in ins if k == "COPY")
    assert "cloud_server" not in copies and "requirements-edge.txt" in copies
    pins = _req_names(ROOT / "requirements-edge.txt")
    assert not pins & {"fastapi", "uvicorn", "starlette", "prometheus-client", "pydantic-settings",
                       "python-multipart"}
    # the same pins as requirements.txt
    full = {ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")}
    edge = {ln.strip() for ln in (ROOT / "requirements-edge.txt").read_text().splitlines()
            if ln and not ln.startswith("#")}
    assert edge <= full, f"pins not in requirements.txt: {sorted(edge - full)}"


def test_edge_entrypoint_refuses_torch_subcommands():
    """Every subcommand but `edge` needs PyTorch; the edge entrypoint says so instead of a ModuleNotFoundError."""
    from splitinfer.cli import COMMANDS

    script = ROOT / "docker" / "edge-entrypoint.sh"
    text = script.read_text()
    for name in COMMANDS:
        if name != "edge":
            assert re.search(rf"[|\s]{re.escape(name)}[|)]", text), f"edge-entrypoint.sh: {name} not handled"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITINFER_")}
    r = subprocess.run(["sh", str(script), "info"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2 and "needs PyTorch" in r.stderr
    assert "SPLITINFER_EDGE_THREADS" in text


def test_cloud_cpu_image_is_torch_free():
    """docker/Dockerfile.cloud-cpu: requirements-cloud-cpu.txt (ONNX Runtime, no torch), cloud packages exported
    beforehand (the image cannot export them), the compiled coder checked at build time."""
    path = ROOT / "docker" / "Dockerfile.cloud-cpu"
    ins, final = _instructions(path), _stages(path)["final"]
    text = " ".join(a for k, a in ins if k in {"COPY", "RUN"})
    assert "requirements-cloud-cpu.txt" in text
    assert not re.search(r"(?<![\w-])requirements\.txt", text), "the CPU cloud image must not see requirements.txt"
    pins = _req_names(ROOT / "requirements-cloud-cpu.txt")
    assert not pins & {"torch", "torchvision", "compressai", "grpcio-tools", "triton", "onnx"}
    assert {"onnxruntime", "numpy", "grpcio", "fastapi", "uvicorn"} <= pins
    install = next(a for k, a in final if k == "RUN" and "pip-install.sh" in a)
    assert re.search(r"pip uninstall -y.* pip\b", install) and "PIP_WHEELS=/wheels" in install
    copies = [a.split() for k, a in final if k == "COPY"]
    assert ["prebuilt/cloud/", "/opt/splitinfer/cloud/"] in copies
    checks = " ".join(a for k, a in final if k == "RUN")
    assert "OnnxCloudDecoder" in checks and "'torch'" in checks and "implementation()" in checks
    env = " ".join(a for k, a in final if k == "ENV")
    assert "SPLITINFER_CLOUD_RUNTIME=onnx" in env
    assert any(k == "ENTRYPOINT" and "cloud-cpu-entrypoint.sh" in a for k, a in final)
    make = (ROOT / "Makefile").read_text()
    assert "images-cloud-cpu:" in make and "\tscripts/build_cloud_cpu.sh" in make


def test_cloud_cpu_entrypoint_needs_a_package():
    if Path("/opt/splitinfer/cloud").exists():
        pytest.skip("/opt/splitinfer/cloud exists here")
    script = ROOT / "docker" / "cloud-cpu-entrypoint.sh"
    r = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no cloud package" in r.stderr
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)


def test_dockerignore():
    rules = {ln.strip().rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    for needed in (".venv", ".git", ".gpu", ".whl"):
        assert needed in rules, f".dockerignore must exclude {needed}"
    assert any("pem" in r for r in rules)


def test_compose_file():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: docker-compose.yml not parsed")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"cloud", "edge"} <= set(services)
    for name in ("cloud", "edge"):
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
        assert "BASE_IMAGE" in build["args"]
    cloud, edge = services["cloud"], services["edge"]
    # the edge's export stage runs FROM the cloud service's image, handed over as a named context (built first)
    name = edge["build"]["args"]["CLOUD_IMAGE"]
    assert edge["build"]["additional_contexts"][name] == "service:cloud"
    assert "TORCH_INDEX_URL" not in edge["build"]["args"], "the edge installs no torch"
    assert cloud["environment"]["SPLITINFER_HOST"] == "0.0.0.0"
    assert "healthcheck" in cloud
    assert edge["depends_on"]["cloud"]["condition"] == "service_healthy"
    env = edge["environment"]
    assert env["SPLITINFER_SERVER"].startswith("dns:///cloud:")
    assert env["SPLITINFER_GRPC_LB_POLICY"] == "round_robin"
    assert "SPLITINFER_BITRATE" in env
    # nothing secret written into the compose file itself
    assert not any(re.search(r"API_KEYS?$", k) and v for k, v in {**cloud["environment"], **env}.items())


def test_edge_client_takes_grpc_options(monkeypatch):
    """dns:/// targets and round_robin: the channel options reach grpc (no server needed)."""
    grpc = pytest.importorskip("grpc")
    from edge_client.transports import GrpcTransport

    seen = {}
    real = grpc.insecure_channel

    def spy(target, options=None, *a, **k):
        seen["target"], seen["options"] = target, dict(options or [])
        return real(target, options, *a, **k)

    monkeypatch.setattr(grpc, "insecure_channel", spy)
    monkeypatch.setenv("SPLITINFER_GRPC_LB_POLICY", "round_robin")
    t = GrpcTransport("dns:///localhost:1", None, False, None, 1 << 20, [("grpc.enable_retries", 0)])
    t.channel.close()
    assert seen["target"] == "dns:///localhost:1"
    assert seen["options"]["grpc.lb_policy_name"] == "round_robin"
    assert seen["options"]["grpc.enable_retries"] == 0
