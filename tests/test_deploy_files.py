"""Deployment files (docker/, docker-compose.yml, .dockerignore): checked as text, without building anything.
Building and running the images for real is `make images` (docker/build.sh, buildah)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cloud", ROOT / "docker" / "Dockerfile.edge"]
SECRETISH = re.compile(r"\.(pem|crt|key|p12)\b|ca-certificates|cacert|pipcert|secret|api_key", re.I)


def _instructions(path: Path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines()
                                          if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in (s.strip() for s in text.splitlines()) if ln]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_basics(path):
    ins = _instructions(path)
    kinds = [k for k, _ in ins]
    # the base image is a build argument with the public default
    first_from = kinds.index("FROM")
    base_args = [a for k, a in ins[:first_from] if k == "ARG" and a.startswith("BASE_IMAGE=")]
    assert base_args and base_args[0].split("=", 1)[1].startswith("python:3.11"), "ARG BASE_IMAGE=python:3.11... before FROM"
    assert all(a.split()[0] == "${BASE_IMAGE}" for k, a in ins if k == "FROM" and "--from" not in a)
    # runs as a non-root user, with a health check
    users = [a for k, a in ins if k == "USER"]
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
    # pinned dependencies installed before the source is copied (fast rebuilds)
    req = next(i for i, (k, a) in enumerate(ins) if k == "COPY" and "requirements" in a)
    install = next(i for i, (k, a) in enumerate(ins) if k == "RUN" and "pip-install.sh" in a)
    source = next(i for i, (k, a) in enumerate(ins) if k == "COPY" and a.startswith("shared/"))
    assert req < install < source


def test_edge_image_has_no_server_stack():
    ins = _instructions(ROOT / "docker" / "Dockerfile.edge")
    copies = " ".join(a for k, a in ins if k == "COPY")
    assert "cloud_server" not in copies and "requirements-edge.txt" in copies
    pins = {re.split(r"[=<>]", ln)[0].lower().replace("_", "-")
            for ln in (ROOT / "requirements-edge.txt").read_text().splitlines() if ln and not ln.startswith("#")}
    assert not pins & {"fastapi", "uvicorn", "starlette", "prometheus-client", "pydantic-settings",
                       "python-multipart"}
    # the same pins as requirements.txt
    full = {ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")}
    edge = {ln.strip() for ln in (ROOT / "requirements-edge.txt").read_text().splitlines()
            if ln and not ln.startswith("#")}
    assert edge <= full, f"pins not in requirements.txt: {sorted(edge - full)}"


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
    from edge_client.client import _GrpcTransport

    seen = {}
    real = grpc.insecure_channel

    def spy(target, options=None, *a, **k):
        seen["target"], seen["options"] = target, dict(options or [])
        return real(target, options, *a, **k)

    monkeypatch.setattr(grpc, "insecure_channel", spy)
    monkeypatch.setenv("SPLITINFER_GRPC_LB_POLICY", "round_robin")
    t = _GrpcTransport("dns:///localhost:1", None, False, None, 1 << 20, [("grpc.enable_retries", 0)])
    t.channel.close()
    assert seen["target"] == "dns:///localhost:1"
    assert seen["options"]["grpc.lb_policy_name"] == "round_robin"
    assert seen["options"]["grpc.enable_retries"] == 0
