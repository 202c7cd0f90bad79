"""The gRPC front end end to end on loopback: Infer, InferStream, ModelMetadata, health, reflection, every
refusal (with the server still answering afterwards), API keys, limits, graceful shutdown, and a fuzz test
that sends a thousand mutated bitstreams."""

from __future__ import annotations

import random
import struct
import threading
import time
import zlib

import grpc
import pytest

from _service import encoder, frames, reference, MODEL, grpc_stub, running_server, slow_tail, wait_for  # noqa: F401 (fixtures)

from shared._proto import SERVICE_NAME, splitinfer_pb2 as pb


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_weights):
    with running_server(tiny_bundle, tiny_weights) as s:
        yield s


@pytest.fixture(scope="module")
def stub(server):
    channel, stub = grpc_stub(server.grpc_port)
    yield stub
    channel.close()


def _inflight(server) -> float:
    return server.dataplane.metrics.registry.get_sample_value("splitinfer_inflight_requests")


def _ok(stub, frame, **kw) -> pb.InferResponse:
    return stub.Infer(pb.InferRequest(model=MODEL, bitstream=frame.data, **kw), timeout=10)


def _refused(stub, request, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as e:
        stub.Infer(request, timeout=10)
    assert e.value.code() == code, (e.value.code(), e.value.details())
    assert e.value.details(), "a refusal must say why"
    return e.value.details()


# ------------------------------------------------------------------------------------------ answers
def test_infer_matches_the_in_process_pipeline(stub, frames, reference, tiny_bundle):
    for frame, ref in zip(frames, reference):
        r = _ok(stub, frame)
        assert r.model == MODEL and r.bundle_id == tiny_bundle.bundle_id
        assert r.rung == frame.rung
        assert r.bytes_received == frame.n_bytes and r.bpp == pytest.approx(frame.bpp)
        assert (r.input_height, r.input_width) == frame.input_hw
        assert [c.index for c in r.topk] == [i for i, _, _ in ref.topk]
        assert [c.name for c in r.topk] == [n for _, n, _ in ref.topk]
        assert [c.score for c in r.topk] == pytest.approx([p for _, _, p in ref.topk], abs=1e-5)
        assert {"parse", "decode", "queue", "tail", "total"} <= set(r.timings_ms)
        assert r.request_id and r.batch_size >= 1 and not r.outputs  # classification: no outputs of its own


def test_request_id_and_top_k_are_honoured(stub, frames):
    r = _ok(stub, frames[0], request_id="cam-7/frame-42", top_k=2)
    assert r.request_id == "cam-7/frame-42" and len(r.topk) == 2


def test_bitrate_hint_picks_the_rung_per_request(stub, encoder, heldout_items):
    """Edge and server map a hint to the same rung (shared.bundle.select_rung); switching needs no reload."""
    from shared.hint import BitrateHint

    bundle = encoder.bundle
    image = heldout_items[0][0]
    for rung in bundle.rungs:
        hint = BitrateHint(target_bpp=rung.bpp)
        frame = encoder.encode(image, rung=hint.rung(bundle))
        r = _ok(stub, frame, target_bpp=rung.bpp, expected_rung=frame.rung)
        assert r.rung == r.hinted_rung == rung.index
    # a link rate: kbit/s over fps is bits per frame, over the input's pixels
    h, w = bundle.manifest["preprocess"]["input_size"]
    target = bundle.rungs[1].bpp
    link = pb.LinkRate(kbit_per_s=target * h * w * 10 / 1000.0, fps=10)
    frame = encoder.encode(image, rung=1)
    r = stub.Infer(pb.InferRequest(model=MODEL, bitstream=frame.data, link=link, expected_rung=1), timeout=10)
    assert r.hinted_rung == 1 and r.rung == 1


def test_stream_answers_in_order_and_survives_bad_frames(stub, frames, reference):
    reqs = []
    for i, f in enumerate(frames):
        reqs.append(pb.InferRequest(model=MODEL, bitstream=f.data, request_id=f"ok-{i}"))
        reqs.append(pb.InferRequest(model=MODEL, bitstream=f.data[:-5], request_id=f"bad-{i}"))
    reqs.append(pb.InferRequest(model="no-such-model", bitstream=frames[0].data, request_id="unknown"))
    out = list(stub.InferStream(iter(reqs), timeout=30))
    assert [o.request_id for o in out] == [r.request_id for r in reqs]
    for i, ref in enumerate(reference):
        good, bad = out[2 * i], out[2 * i + 1]
        assert good.WhichOneof("outcome") == "result"
        assert good.result.topk[0].index == ref.topk[0][0] and good.result.rung == frames[i].rung
        assert bad.WhichOneof("outcome") == "error"
        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and bad.error.message
    assert out[-1].error.code == grpc.StatusCode.NOT_FOUND.value[0] and out[-1].error.kind == "not_found"


def test_model_metadata(stub, tiny_bundle):
    resp = stub.ModelMetadata(pb.ModelMetadataRequest(), timeout=10)
    (m,) = resp.models
    assert (m.name, m.bundle_id, m.backbone, m.split) == (MODEL, tiny_bundle.bundle_id, "cifar_resnet20", "layer1")
    assert m.task == "classification" and m.num_classes == 10 and m.backbone_loaded
    assert (m.input_height, m.input_width) == (32, 32) and m.rate_model == tiny_bundle.config.rate_model
    assert [r.index for r in m.rungs] == [r.index for r in tiny_bundle.rungs]
    for got, want in zip(m.rungs, tiny_bundle.rungs):
        assert getattr(got, "lambda") == pytest.approx(want.lam)
        assert got.bpp == pytest.approx(want.bpp) and got.n_images == want.metrics["n_images"]
    assert resp.server_version
    one = stub.ModelMetadata(pb.ModelMetadataRequest(model=MODEL), timeout=10)
    assert [x.name for x in one.models] == [MODEL]
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelMetadata(pb.ModelMetadataRequest(model="nope"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_rungs_load_on_first_use_or_all_at_start(tiny_bundle, tiny_weights, frames):
    def resident(stub):
        (m,) = stub.ModelMetadata(pb.ModelMetadataRequest(), timeout=10).models
        return [r.resident for r in m.rungs]

    n = len(tiny_bundle.rungs)
    with running_server(tiny_bundle, tiny_weights, enable_rest=False) as s:
        channel, stub = grpc_stub(s.grpc_port)
        assert resident(stub) == [False] * n
        _ok(stub, frames[-1])
        assert resident(stub) == [i == frames[-1].rung for i in range(n)]
        channel.close()
    with running_server(tiny_bundle, tiny_weights, enable_rest=False, preload=True) as s:
        channel, stub = grpc_stub(s.grpc_port)
        assert resident(stub) == [True] * n
        channel.close()


# ------------------------------------------------------------------------------------------ refusals
def _mutate(data: bytes) -> bytes:
    d = bytearray(data)
    d[len(d) // 2] ^= 0x10
    return bytes(d)


def _reframe(data: bytes) -> bytes:
    """Change a payload byte and fix the outer checksum: only the entropy decoder can notice."""
    body = bytearray(data[:-4])
    body[-3] ^= 0xFF
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


REFUSALS = {
    "garbage": (lambda f: dict(model=MODEL, bitstream=b"\x00garbage" * 8), "INVALID_ARGUMENT"),
    "truncated": (lambda f: dict(model=MODEL, bitstream=f.data[: len(f.data) // 2]), "INVALID_ARGUMENT"),
    "mutated": (lambda f: dict(model=MODEL, bitstream=_mutate(f.data)), "INVALID_ARGUMENT"),
    "mutated_payload": (lambda f: dict(model=MODEL, bitstream=_reframe(f.data)), "INVALID_ARGUMENT"),
    "unknown_model": (lambda f: dict(model="resnet9000-nope", bitstream=f.data), "NOT_FOUND"),
    "unknown_rung": (lambda f: dict(model=MODEL, bitstream=f.data, expected_rung=9), "INVALID_ARGUMENT"),
    "rung_disagrees": (lambda f: dict(model=MODEL, bitstream=f.data, expected_rung=(f.rung + 1) % 3),
                       "INVALID_ARGUMENT"),
    "hint_disagrees": (lambda f: dict(model=MODEL, bitstream=f.data, target_bpp=1000.0, expected_rung=f.rung or 1),
                       "INVALID_ARGUMENT"),
    "missing_bitstream": (lambda f: dict(model=MODEL), "INVALID_ARGUMENT"),
    "missing_model": (lambda f: dict(bitstream=f.data), "INVALID_ARGUMENT"),
    "negative_hint": (lambda f: dict(model=MODEL, bitstream=f.data, target_bpp=-1.0), "INVALID_ARGUMENT"),
    "link_without_fps": (lambda f: dict(model=MODEL, bitstream=f.data, link=pb.LinkRate(kbit_per_s=100)),
                         "INVALID_ARGUMENT"),
    "top_k_too_large": (lambda f: dict(model=MODEL, bitstream=f.data, top_k=1000), "INVALID_ARGUMENT"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_clean_and_the_server_goes_on(stub, frames, case):
    make, code = REFUSALS[case]
    frame = frames[1]
    message = _refused(stub, pb.InferRequest(**make(frame)), grpc.StatusCode[code])
    if case == "unknown_model":
        assert MODEL in message  # says what is served
    assert _ok(stub, frame).rung == frame.rung


def test_oversized_messages_are_refused(tiny_bundle, tiny_weights, frames):
    with running_server(tiny_bundle, tiny_weights, enable_rest=False, max_bitstream_bytes=1024) as s:
        channel, stub = grpc_stub(s.grpc_port)
        # over the data plane's bitstream limit, under gRPC's message limit
        _refused(stub, pb.InferRequest(model=MODEL, bitstream=b"S" * 2048), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # over gRPC's message limit: refused before it reaches the data plane
        _refused(stub, pb.InferRequest(model=MODEL, bitstream=b"S" * (1 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert _ok(stub, frames[0]).rung == frames[0].rung
        channel.close()


def test_fuzz_mutated_bitstreams(stub, frames, reference):
    """1,000 mutated valid bitstreams (bit flips, byte changes, truncation, insertion, and payload changes with a
    fixed-up checksum): every answer is the original frame's result (the mutation was invisible after
    decoding: the symbol checksum matched) or a clean INVALID_ARGUMENT with a message; never a crash."""
    rng = random.Random(20240611)

    def mutate(d: bytes) -> bytes:
        d = bytearray(d)
        kind = rng.randrange(6)
        if kind == 0:
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            d = d[: rng.randrange(len(d))]
        elif kind == 2:
            d[rng.randrange(len(d))] = rng.randrange(256)
        elif kind == 3:
            i = rng.randrange(len(d) + 1)
            d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        else:  # change the body (header or payloads), then fix the outer CRC so the decoder must cope
            body = d[:-4]
            lo = 0 if kind == 4 else max(0, len(body) - 64)
            for _ in range(rng.randrange(1, 4)):
                body[rng.randrange(lo, len(body))] = rng.randrange(256)
            d = body + struct.pack(">I", zlib.crc32(bytes(body)))
        return bytes(d)

    def requests():
        for i in range(1000):
            k = rng.randrange(len(frames))
            data = mutate(frames[k].data)
            sent.append((k, data))
            yield pb.InferRequest(model=MODEL, bitstream=data, request_id=str(i))

    sent = []
    outcomes = {"result": 0, "error": 0}
    for i, out in enumerate(stub.InferStream(requests(), timeout=120)):
        k, data = sent[i]
        kind = out.WhichOneof("outcome")
        outcomes[kind] += 1
        if kind == "result":
            assert [c.index for c in out.result.topk] == [j for j, _, _ in reference[k].topk]
            assert out.result.bytes_received == len(data)
        else:
            assert out.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], out.error
            assert out.error.message
    assert sum(outcomes.values()) == 1000 and outcomes["error"] > 900
    # unary calls too (a sample), then the server still answers correctly
    for _ in range(50):
        k = rng.randrange(len(frames))
        try:
            r = stub.Infer(pb.InferRequest(model=MODEL, bitstream=mutate(frames[k].data)), timeout=10)
            assert r.topk[0].index == reference[k].topk[0][0]
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details()
    assert _ok(stub, frames[0]).topk[0].index == reference[0].topk[0][0]


# ------------------------------------------------------------------------------------------ operations
def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(db)
    svc = pool.FindServiceByName(SERVICE_NAME)
    assert {m.name for m in svc.methods} == {"Infer", "InferStream", "ModelMetadata", "EdgePackage"}
    req = pool.FindMessageTypeByName("splitinfer.v1.InferRequest")
    assert {"model", "bitstream", "target_bpp", "link", "expected_rung", "request_id"} <= set(req.fields_by_name)
    channel.close()


def test_api_keys(tiny_bundle, tiny_weights, frames):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with running_server(tiny_bundle, tiny_weights, enable_rest=False, api_keys=["k-one", "k-two"]) as s:
        channel, stub = grpc_stub(s.grpc_port)
        req = pb.InferRequest(model=MODEL, bitstream=frames[0].data)
        for metadata in (None, [("authorization", "Bearer wrong")], [("x-api-key", "k-three")],
                         [("authorization", "Basic k-one")]):
            with pytest.raises(grpc.RpcError) as e:
                stub.Infer(req, timeout=5, metadata=metadata)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            list(stub.InferStream(iter([req]), timeout=5))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelMetadata(pb.ModelMetadataRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Infer(req, timeout=5, metadata=[("authorization", "Bearer k-two")]).rung == frames[0].rung
        assert stub.Infer(req, timeout=5, metadata=[("x-api-key", "k-one")]).rung == frames[0].rung
        health = health_pb2_grpc.HealthStub(channel)  # probes need no key
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        channel.close()


@pytest.mark.timing
def test_concurrency_limit_and_deadlines(tiny_bundle, tiny_weights, frames):
    with running_server(tiny_bundle, tiny_weights, enable_rest=False, max_concurrent_requests=1,
                        batch_max_size=1) as s:
        channel, stub = grpc_stub(s.grpc_port)
        req = pb.InferRequest(model=MODEL, bitstream=frames[0].data)
        with slow_tail(s, 0.5):
            first = stub.Infer.future(req, timeout=10)
            assert wait_for(lambda: _inflight(s) == 1)
            _refused(stub, req, grpc.StatusCode.RESOURCE_EXHAUSTED)  # a second request while one is in flight
            assert first.result().rung == frames[0].rung
            # the client's deadline: the call ends on time, the server goes on
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                stub.Infer(req, timeout=0.2)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 0.45
            assert wait_for(lambda: _inflight(s) == 0)
        assert stub.Infer(req, timeout=10).rung == frames[0].rung
        channel.close()
    with running_server(tiny_bundle, tiny_weights, enable_rest=False, request_timeout_s=0.2) as s:
        channel, stub = grpc_stub(s.grpc_port)
        with slow_tail(s, 0.4):
            _refused(stub, pb.InferRequest(model=MODEL, bitstream=frames[0].data), grpc.StatusCode.DEADLINE_EXCEEDED)
            _refused(stub, pb.InferRequest(model=MODEL, bitstream=frames[1].data), grpc.StatusCode.DEADLINE_EXCEEDED)
        channel.close()


@pytest.mark.timing
def test_graceful_shutdown_lets_requests_in_flight_finish(tiny_bundle, tiny_weights, frames):
    with running_server(tiny_bundle, tiny_weights, enable_rest=False) as s:
        channel, stub = grpc_stub(s.grpc_port)
        req = pb.InferRequest(model=MODEL, bitstream=frames[0].data)
        with slow_tail(s, 0.6):
            in_flight = stub.Infer.future(req, timeout=10)
            assert wait_for(lambda: _inflight(s) == 1)
            stopper = threading.Thread(target=s.stop, kwargs={"grace": 5.0})
            t0 = time.monotonic()
            stopper.start()
            assert wait_for(lambda: not s.dataplane.ready())
            with pytest.raises(grpc.RpcError) as e:  # new calls are turned away during the grace period
                stub.Infer(req, timeout=2)
            # UNAVAILABLE from the data plane, or CANCELLED by gRPC itself once its server is stopping
            assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert in_flight.result().rung == frames[0].rung  # the call in flight completes
            stopper.join(10)
            assert not stopper.is_alive() and time.monotonic() - t0 < 5.0
        channel.close()
