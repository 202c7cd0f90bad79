"""Replicas behind a load balancer (issue 25, item 4).

Without HAProxy: the failover window (``edge_client/failover.py``) over fake calls that break mid-stream, and
``EdgeClient.stream`` against an in-process gRPC server whose first stream goes away after a few answers; the
HAProxy template renders and parses. With HAProxy (skipped where the binary is missing): two ``splitinfer serve``
replicas behind it, SIGKILL to the one holding the camera stream under a short load; every unary request and
every frame answered exactly once, the frames in order (``benchmarks/scale_out.py``'s cluster and load).
"""

from __future__ import annotations

import importlib.util
import queue
import shutil
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_client.failover import ResumableStream, StreamBroken, reset_by_the_path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "shared" / "assets" / "samples"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------ the window, faked
class Reset(Exception):
    pass


class FakeCall:
    """A call as gRPC makes one: a thread sends the requests as it reads them; answers come in order. It answers
    ``answers`` frames (None: all), then breaks with ``error`` (the frames it read after those are left unanswered)."""

    def __init__(self, requests, answers, error, log):
        self.q, self.cancelled, self.answers, self.error, self.log = queue.Queue(), threading.Event(), answers, error, log
        threading.Thread(target=self._send, args=(requests,), daemon=True).start()

    def _send(self, requests):
        for r in requests:
            if self.cancelled.is_set():  # gRPC stops reading once the call is over
                return
            self.log.append(r)
            self.q.put(r)
        self.q.put(None)

    def __iter__(self):
        n = 0
        while True:
            if self.answers is not None and n == self.answers:
                time.sleep(0.02)  # let the sender read ahead: frames sent, never answered
                raise self.error
            r = self.q.get(timeout=10)
            if r is None:
                return
            n += 1
            yield SimpleNamespace(id=r)

    def cancel(self):
        self.cancelled.set()


def _frames(n, pace=0.002):
    for k in range(n):
        time.sleep(pace)
        yield f"f{k:03d}"


def _stream(script, n=40, tries=3):
    """A ResumableStream whose i-th call answers ``script[i]`` frames then breaks (None: answers all)."""
    calls, log = [], []

    def open_call(reqs):
        answers = script[len(calls)] if len(calls) < len(script) else None
        calls.append(FakeCall(reqs, answers, Reset("replica gone"), log))
        return calls[-1]

    s = ResumableStream(open_call, _frames(n), request_key=lambda r: r, answer_key=lambda a: a.id,
                        resumable=lambda e: isinstance(e, Reset), tries=tries, backoff_s=0.01)
    return s, calls, log


def test_a_broken_stream_resumes_and_every_frame_is_answered_once_in_order():
    s, calls, log = _stream([7, 0, 12])  # breaks after 7 answers, at once on the next call, then after 12 more
    got = [a.id for a in s]
    assert got == [f"f{k:03d}" for k in range(40)]  # each once, in order
    assert len(calls) == 4 and s.resumes == 3 and s.unanswered == 0
    # the server read again only frames left unanswered (a frame handed to a call that is over is not read)
    assert 1 <= len(log) - 40 <= s.resent
    answered_before = {f"f{k:03d}" for k in range(7)}
    assert all(log.count(r) == 1 for r in answered_before)


def test_a_stream_that_cannot_be_resumed_ends_with_the_frames_it_leaves():
    s, calls, _ = _stream([3, 0, 0, 0], tries=3)
    got = []
    with pytest.raises(StreamBroken) as e:
        for a in s:
            got.append(a.id)
    assert got == ["f000", "f001", "f002"]
    assert e.value.tries == 3 and len(calls) == 4 and isinstance(e.value.cause, Reset)
    assert e.value.unanswered >= 1 and f"{e.value.unanswered} frame" in str(e.value)


def test_an_error_that_is_not_a_reset_is_not_retried():
    calls = []

    def open_call(reqs):
        calls.append(FakeCall(reqs, 2, ValueError("bad frame"), []))
        return calls[-1]

    s = ResumableStream(open_call, _frames(10), request_key=lambda r: r, answer_key=lambda a: a.id,
                        resumable=lambda e: isinstance(e, Reset), backoff_s=0.01)
    with pytest.raises(ValueError, match="bad frame"):
        list(s)
    assert len(calls) == 1 and s.resumes == 0


def test_what_counts_as_a_reset_on_the_way():
    from edge_client import ServiceError

    rst = "Stream removed (RST_STREAM (Received RST_STREAM with error code 8))"
    assert ServiceError("CANCELLED", rst).retryable and reset_by_the_path(ServiceError("CANCELLED", rst))
    assert ServiceError("UNAVAILABLE", "connection reset").retryable  # as before
    assert not ServiceError("CANCELLED", "Locally cancelled by application!").retryable
    assert not ServiceError("CANCELLED", rst, "invalid_argument").retryable  # the server's own answer
    assert not ServiceError("DEADLINE_EXCEEDED", "Deadline Exceeded").retryable


# ------------------------------------------------------------------------------------------ EdgeClient.stream
@pytest.fixture(scope="module")
def package(tiny_bundle, tiny_weights, tmp_path_factory):
    from edge_client import EdgePackage
    from shared.edge_export import export_edge

    return EdgePackage(export_edge(tiny_bundle, tmp_path_factory.mktemp("edge") / "tiny", weights=str(tiny_weights)))


def _flaky_server(bundle, answer_first: int):
    """A SplitInference server whose first InferStream answers ``answer_first`` frames, reads two more and ends
    with UNAVAILABLE (a replica going away); later streams answer every frame. ``seen``: request ids per stream."""
    import grpc

    from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

    seen = []

    class Flaky(pb_grpc.SplitInferenceServicer):
        def ModelMetadata(self, request, context):
            return pb.ModelMetadataResponse(models=[pb.ModelInfo(name="fake", bundle_id=bundle.bundle_id,
                                                                 backbone=bundle.model, split=bundle.split)])

        def InferStream(self, requests, context):
            mine = []
            seen.append(mine)
            first = len(seen) == 1
            for req in requests:
                mine.append(req.request_id)
                if first and len(mine) > answer_first:
                    if len(mine) == answer_first + 2:
                        context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
                    continue
                yield pb.InferStreamResponse(request_id=req.request_id, result=pb.InferResponse(
                    request_id=req.request_id, model="fake", bundle_id=bundle.bundle_id, rung=0,
                    bytes_received=len(req.bitstream), bpp=0.5, batch_size=1,
                    topk=[pb.ClassScore(index=3, name="three", score=0.75)]))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SplitInferenceServicer_to_server(Flaky(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, seen


def test_the_client_stream_goes_on_after_the_server_goes_away(package):
    from edge_client import EdgeClient, OnnxEdgeEncoder

    images = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix == ".JPEG")
    server, port, seen = _flaky_server(package.bundle, answer_first=2)
    try:
        with EdgeClient(f"127.0.0.1:{port}", encoder=OnnxEdgeEncoder(package, threads=1), backoff_s=0.01) as c:
            out = list(c.stream(images, rung=0))
    finally:
        server.stop(0)
    assert [r.source for r in out] == images and all(r.ok for r in out)  # each image once, in order
    assert len(seen) == 2 and len(seen[0]) == 4  # 2 answered, 2 read and left unanswered on the first stream
    assert seen[1][:2] == seen[0][2:4]  # those two sent first on the second, then the rest
    assert sorted(seen[1]) == sorted(r.request_id for r in out[2:])


def test_the_client_stream_gives_up_with_the_lost_frames_named(package):
    from edge_client import EdgeClient, OnnxEdgeEncoder, ServiceError

    images = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix == ".JPEG")
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")  # nothing registered: ModelMetadata would fail, so skip it
    server.start()
    server.stop(0)  # nothing listens any more: every new call is UNAVAILABLE
    with EdgeClient(f"127.0.0.1:{port}", encoder=OnnxEdgeEncoder(package, threads=1), check_bundle=False,
                    model="fake", retries=2, backoff_s=0.01) as c:
        with pytest.raises(ServiceError) as e:
            list(c.stream(images, rung=0))
    msg = str(e.value)
    assert e.value.code == "UNAVAILABLE" and "not resumed after 2 new calls" in msg and "lost" in msg, msg


# ------------------------------------------------------------------------------------------ the HAProxy config
def test_the_haproxy_template_renders():
    render = _load(ROOT / "deploy" / "haproxy" / "render.py", "haproxy_render")
    cfg = render.render([("10.0.0.5", 50051, 8000), ("10.0.0.6", 50052, 8001)], "127.0.0.1:1234", "*:8000")
    assert "bind 127.0.0.1:1234 proto h2" in cfg and "bind *:8000\n" in cfg
    assert "server r1 10.0.0.6:50052 proto h2 check port 8001 check-proto h1" in cfg
    assert "server r1 10.0.0.6:8001 track grpc_replicas/r1" in cfg
    assert not [ln for ln in cfg.splitlines() if "$" in ln and not ln.lstrip().startswith("#")]  # all filled
    for bad in ("10.0.0.5:50051", "host:x:8000", "h:0:8000"):
        with pytest.raises(ValueError, match="replica"):
            render.parse_replica(bad)
    assert render.parse_replica("[::1]:50051:8000") == ("[::1]", 50051, 8000)
    with pytest.raises(ValueError):
        render.render([])
    if shutil.which("haproxy"):  # haproxy's own parser accepts it
        out = subprocess.run(["haproxy", "-c", "-f", "/dev/stdin"], input=cfg, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------ with HAProxy
@pytest.mark.skipif(shutil.which("haproxy") is None,
                    reason="needs Debian's haproxy binary (apt-get install haproxy) to put replicas behind it")
def test_killing_a_replica_under_load_loses_nothing(tiny_bundle, tiny_weights, tiny_images, tmp_path):
    bench = _load(ROOT / "benchmarks" / "scale_out.py", "scale_out")
    enc, frames = bench.load_frames(str(tiny_bundle.root), str(tiny_weights), tiny_images, 4)
    source = bench.FrameSource(enc, frames)
    args = SimpleNamespace(kill_clients=2, fps=10.0, camera_window=64, before=3.0, during=1.0, after=4.0)
    with bench.Cluster(str(tiny_bundle.root), str(tiny_weights), tmp_path, log=print) as cluster:
        replicas = cluster.start_replicas(2)
        grpc_port, _ = cluster.haproxy(replicas)
        k = bench.kill_test(cluster, f"127.0.0.1:{grpc_port}", source, frames, args, print)
        assert replicas[k["victim"]].proc.poll() is not None  # it was killed
        assert k["stream_answers_before_kill"][k["victim"]] > 0, k  # ... and held the camera stream
    unary, stream = k["unary"], k["stream"]
    for kind in (unary, stream):
        assert kind["sent"] > 0 and kind["lost"] == 0 and kind["answered_twice"] == 0, k
        assert kind["answered"] == kind["sent"] and kind["failed"] == 0, k
    assert stream["out_of_order"] == 0 and stream["errors_ending_it"] == [] and k["wrong_id"] == 0, k
    # the stream went on after the kill, on the other replica
    assert stream["latency"]["after"]["n"] > 0 and unary["latency"]["after"]["n"] > 0, k
