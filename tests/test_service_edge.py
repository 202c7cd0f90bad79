"""The edge client (Python API and ``splitinfer edge``), ``splitinfer serve`` as a process, TLS, the generated
stubs, and what importing the edge pulls in (never FastAPI, uvicorn or the cloud server)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _service import encoder, MODEL, make_settings, running_server  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_weights):
    with running_server(tiny_bundle, tiny_weights) as s:
        yield s


@pytest.fixture(scope="module")
def images(heldout_items):
    return [p for p, _ in heldout_items[:4]]


@pytest.fixture(scope="module")
def reference(tiny_bundle, tiny_weights, encoder, images):
    """Top-1 of the in-process pipeline per (image, rung)."""
    from cloud_server import CloudDecoder

    dec = CloudDecoder(tiny_bundle, weights=str(tiny_weights))
    return {(str(p), r.index): dec.decode(encoder.encode(p, rung=r.index).data).label
            for p in images for r in tiny_bundle.rungs}


def _client(server, encoder, rest=False, **kw):
    from edge_client import EdgeClient

    port = server.http_port if rest else server.grpc_port
    return EdgeClient(f"127.0.0.1:{port}", encoder=encoder, rest=rest, **kw)


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_client_round_trip_and_hints(server, encoder, images, reference, tiny_bundle, rest):
    with _client(server, encoder, rest=rest) as c:
        assert c.model == MODEL
        for rung in tiny_bundle.rungs:
            r = c.infer(images[0], bitrate=rung.bpp)
            assert r.ok and r.rung == r.hinted_rung == rung.index
            assert r.label[0] == reference[(str(images[0]), rung.index)]
            assert r.n_bytes > 0 and r.bpp == pytest.approx(8 * r.n_bytes / (32 * 32))
            assert r.latency_ms > 0 and r.encode_ms > 0 and "tail" in r.server_timings_ms
        from shared.hint import BitrateHint

        target = tiny_bundle.rungs[1].bpp
        r = c.infer(images[1], hint=BitrateHint(kbit_per_s=target * 32 * 32 * 10 / 1000, fps=10))
        assert r.rung == r.hinted_rung == 1
        r = c.infer(images[1], rung=2)
        assert r.rung == 2 and r.label[0] == reference[(str(images[1]), 2)]


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_client_stream(server, encoder, images, reference, rest):
    with _client(server, encoder, rest=rest) as c:
        out = list(c.stream(images, rung=1))
    assert [r.source for r in out] == [str(p) for p in images]
    assert all(r.ok and r.rung == 1 for r in out)
    assert [r.label[0] for r in out] == [reference[(str(p), 1)] for p in images]


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_stream_reports_refused_frames_and_goes_on(server, encoder, images, rest):
    """The transport's stream (one InferStream; over REST one request per frame): a refused frame is answered with
    its error, in its place, and the frames after it are answered."""
    from edge_client import EdgeClient
    from edge_client.transports import Transport

    with _client(server, encoder, rest=rest) as c:
        assert isinstance(c, EdgeClient) and isinstance(c.transport, Transport)
        c.connect()
        good = encoder.encode(images[0], rung=0)
        t = c.transport
        from shared.hint import BitrateHint

        reqs = [t.request(MODEL, good, BitrateHint(), None, "a", 5),
                t.request(MODEL, type(good)(good.data[:-9], 0, good.input_hw), BitrateHint(), None, "b", 5),
                t.request(MODEL, good, BitrateHint(), None, "c", 5)]
        out = list(t.stream(iter(reqs), 10, 10))
        assert [("error" if o.error else "result" if o.result else None) for o in out] == ["result", "error", "result"]
        assert [o.request_id for o in out] == ["a", "b", "c"] and out[1].error.kind


def test_bundle_mismatch_is_a_clear_error(server, tiny_bundle, tiny_weights, tmp_path, images):
    from edge_client import BundleMismatchError, EdgeClient, EdgeEncoder
    from shared.bundle import merge_bundles

    other = merge_bundles(tmp_path / "other", [(tiny_bundle, 0), (tiny_bundle, 1)])
    enc = EdgeEncoder(other, weights=str(tiny_weights))
    for rest in (False, True):
        port = server.http_port if rest else server.grpc_port
        with EdgeClient(f"127.0.0.1:{port}", encoder=enc, rest=rest) as c:
            with pytest.raises(BundleMismatchError) as e:
                c.infer(images[0])
            msg = str(e.value)
            assert other.bundle_id in msg and tiny_bundle.bundle_id in msg and "same bundle" in msg
        with EdgeClient(f"127.0.0.1:{port}", encoder=enc, rest=rest, model=MODEL) as c:
            with pytest.raises(BundleMismatchError, match=tiny_bundle.bundle_id):
                c.infer(images[0])
        with EdgeClient(f"127.0.0.1:{port}", encoder=enc, rest=rest, model="nope") as c:
            with pytest.raises(BundleMismatchError, match="no model 'nope'"):
                c.connect()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_until_the_server_is_up(tiny_bundle, tiny_weights, encoder, images):
    from cloud_server.server import SplitInferServer
    from edge_client import EdgeClient

    port = _free_port()
    started = {}

    def start_later():
        time.sleep(0.6)
        started["server"] = SplitInferServer(make_settings(tiny_bundle, tiny_weights, grpc_port=port,
                                                           enable_rest=False)).start()

    t = threading.Thread(target=start_later)
    t.start()
    try:
        with EdgeClient(f"127.0.0.1:{port}", encoder=encoder, retries=8, backoff_s=0.1, timeout_s=15) as c:
            r = c.infer(images[0], rung=0)
        assert r.ok and r.rung == 0
    finally:
        t.join()
        started["server"].stop(grace=1)


@pytest.mark.timing
def test_deadline_and_unavailable(encoder, images):
    from edge_client import EdgeClient, ServiceError

    # nothing listens: UNAVAILABLE after the retries, well within the deadline
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(ServiceError) as e:
        EdgeClient(f"127.0.0.1:{port}", encoder=encoder, retries=2, backoff_s=0.05, timeout_s=5).infer(images[0])
    assert e.value.code == "UNAVAILABLE" and time.monotonic() - t0 < 3
    with pytest.raises(ServiceError) as e:
        EdgeClient(f"127.0.0.1:{port}", encoder=encoder, rest=True, retries=1, backoff_s=0.05).infer(images[0])
    assert e.value.code == 503
    # something listens but never answers: the deadline ends the call
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        for rest in (False, True):
            t0 = time.monotonic()
            with pytest.raises(ServiceError) as e:
                EdgeClient(f"127.0.0.1:{silent.getsockname()[1]}", encoder=encoder, rest=rest, retries=0,
                           timeout_s=0.5).infer(images[0])
            assert e.value.code in ("DEADLINE_EXCEEDED", "UNAVAILABLE") and time.monotonic() - t0 < 2.5


def test_edge_import_does_not_pull_the_server(server, tiny_bundle, tiny_weights, images):
    """In a fresh interpreter: import the edge, run requests over gRPC and REST, then look at sys.modules."""
    code = f"""
import json, sys
import edge_client
after_import = sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN)
from edge_client import EdgeClient, EdgeEncoder
enc = EdgeEncoder({str(tiny_bundle.root)!r}, weights={str(tiny_weights)!r})
with EdgeClient("127.0.0.1:{server.grpc_port}", encoder=enc) as c:
    r1 = c.infer({str(images[0])!r}, rung=1)
    r2 = list(c.stream([{str(images[1])!r}], rung=0))[0]
with EdgeClient("127.0.0.1:{server.http_port}", encoder=enc, rest=True) as c:
    r3 = c.infer({str(images[0])!r}, rung=2)
after_use = sorted(m for m in sys.modules if m.split('.')[0] in FORBIDDEN)
print(json.dumps({{"after_import": after_import, "after_use": after_use, "rungs": [r1.rung, r2.rung, r3.rung]}}))
"""
    forbidden = ["fastapi", "uvicorn", "starlette", "cloud_server", "prometheus_client", "pydantic_settings"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", f"FORBIDDEN = {forbidden!r}\n" + code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rungs"] == [1, 0, 2]
    assert res["after_import"] == [] and res["after_use"] == [], res


def test_serve_and_edge_commands(tiny_bundle, tiny_weights, images, tmp_path, capsys):
    """``splitinfer serve`` as its own process (both front ends), ``splitinfer edge`` against it over gRPC,
    REST and a stream, then SIGTERM: a clean exit."""
    from splitinfer.cli import main

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "SPLITINFER_LOG_FORMAT": "json"}
    cmd = [sys.executable, "-m", "splitinfer", "serve", "--bundle", f"tiny={tiny_bundle.root}", "--weights",
           str(tiny_weights), "--http-port", "0", "--grpc-port", "0", "--preload"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving tiny" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        grpc_port = int(line.split("gRPC 127.0.0.1:")[1].split()[0])
        http_port = int(line.split("http://127.0.0.1:")[1].split()[0])
        common = ["--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights)]
        folder = images[0].parent
        assert main(["edge", "--server", f"127.0.0.1:{grpc_port}", "--bitrate", "100", *common, str(images[0]),
                     str(images[1]), "--topk", "2"]) == 0
        out = capsys.readouterr().out
        assert "model tiny" in out and "rung" in out and images[1].name in out
        assert main(["edge", "--server", f"127.0.0.1:{http_port}", "--rest", "--rung", "2", "--json", *common,
                     str(images[0])]) == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["ok"] and row["rung"] == 2 and row["bytes"] > 0 and row["latency_ms"] > 0
        assert main(["edge", "--server", f"127.0.0.1:{grpc_port}", "--stream", "--kbps", "1", "--fps", "1", "--json",
                     *common, str(folder)]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
        assert len(rows) == len(list(folder.glob("*.png"))) and all(r["ok"] for r in rows)
        assert main(["edge", "--server", f"127.0.0.1:{grpc_port}", "--model", "nope", *common, str(images[0])]) == 2
        assert "no model 'nope'" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read()
    assert rc == 0, err[-2000:]
    logs = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    infer_logs = [x for x in logs if x.get("event") == "infer"]
    assert infer_logs and all({"request_id", "model", "outcome", "ms"} <= set(x) for x in infer_logs)
    assert any(x.get("message") == "stopped" for x in logs)


def test_command_help(capsys):
    from splitinfer.cli import main

    for cmd, flags in (("serve", ["--bundle", "--http-port", "--grpc-port", "--preload", "--host", "--weights"]),
                       ("edge", ["--server", "--rest", "--bitrate", "--stream", "--timeout", "--api-key"])):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert all(f in out for f in flags), (cmd, out)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_on_both_front_ends(tiny_bundle, tiny_weights, encoder, images, tmp_path):
    from edge_client import EdgeClient

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    with running_server(tiny_bundle, tiny_weights, tls_cert_file=cert, tls_key_file=key, api_keys=["k"]) as s:
        for rest, port in ((False, s.grpc_port), (True, s.http_port)):
            with EdgeClient(f"localhost:{port}", encoder=encoder, rest=rest, tls=True, root_cert=cert,
                            api_key="k") as c:
                assert c.infer(images[0], rung=1).rung == 1
        import httpx

        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{s.http_port}/v2/health/live", timeout=3)


def test_generated_stubs_are_built_not_committed(tmp_path):
    from shared import proto_build

    out = tmp_path / "out"
    proto_build.generate(proto_build.PROTO_FILE, out)
    assert all((out / f).is_file() for f in proto_build.GENERATED)
    assert not proto_build.is_stale(proto_build.PROTO_FILE, out)
    changed = tmp_path / "splitinfer.proto"
    changed.write_text(proto_build.PROTO_FILE.read_text() + "\n// changed\n")
    assert proto_build.is_stale(changed, out)
    assert proto_build.ensure_generated(changed, out) and not proto_build.is_stale(changed, out)
    assert "from shared._proto import splitinfer_pb2" in (out / "splitinfer_pb2_grpc.py").read_text()
    if (ROOT / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "shared/_proto/splitinfer_pb2.py"], cwd=ROOT)
        assert ignored.returncode == 0, "generated stubs must be ignored by git"
        tracked = subprocess.run(["git", "check-ignore", "-q", "shared/_proto/__init__.py"], cwd=ROOT)
        assert tracked.returncode == 1


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_a_wheel_from_a_clean_checkout_carries_the_stubs(tmp_path):
    """The stubs are not committed: ``setup.py``'s build hook generates them into the wheel, so an install from it
    (which has no proto/ to generate from) imports both services' stubs without grpcio-tools."""
    import zipfile

    subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp_path / "src")], check=True)
    for rel in ("setup.py", "pyproject.toml", "shared/proto_build.py", "proto/grpc_service.proto",
                "proto/splitinfer.proto"):  # this working tree's versions (a clone has the committed ones)
        shutil.copy(ROOT / rel, tmp_path / "src" / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(tmp_path / "src")], check=True, capture_output=True)
    (whl,) = (tmp_path / "wheel").glob("splitinfer-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert {"shared/_proto/splitinfer_pb2_grpc.py", "shared/_proto/grpc_service_pb2_grpc.py"} <= names
    zipfile.ZipFile(whl).extractall(tmp_path / "site")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.modules['grpc_tools'] = None\n"
            "from shared._proto import splitinfer_pb2_grpc, grpc_service_pb2_grpc\n"
            "import shared; print(shared.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and str(tmp_path / "site") in out.stdout, out.stderr[-2000:]
