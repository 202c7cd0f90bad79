"""The Open Inference Protocol as a standard client speaks it: NVIDIA's tritonclient (http and grpc, 2.73,
unmodified, default calls) against the server on loopback. Binary BYTES input framed as the spec says, outputs
all or named (binary and JSON), classification, the versions routes, health and metadata, Triton's streaming,
answers equal to the native service's; plus the tensor conversion itself (segmentation outputs included) and
the JSON depth limit."""

from __future__ import annotations

import base64
import json
import queue
import struct

import grpc
import httpx
import numpy as np
import pytest

from _service import encoder, frames, MODEL, grpc_stub, running_server  # noqa: F401 (fixtures)

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from shared._proto import OIP_SERVICE_NAME, SERVICE_NAME, splitinfer_pb2 as pb  # noqa: E402

ALL_OUTPUTS = ["topk_index", "topk_score", "topk_name"]


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_weights):
    with running_server(tiny_bundle, tiny_weights) as s:
        yield s


@pytest.fixture(scope="module")
def http_client(server):
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.http_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def native(server, frames):
    """What the native service (splitinfer.v1.SplitInference/Infer) answers for each frame."""
    channel, stub = grpc_stub(server.grpc_port)
    out = [stub.Infer(pb.InferRequest(model=MODEL, bitstream=f.data), timeout=10) for f in frames]
    channel.close()
    return out


def http_input(data: bytes, binary: bool = True):
    inp = httpclient.InferInput("bitstream", [1], "BYTES")
    inp.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=binary)
    return inp


def grpc_input(data: bytes):
    inp = grpcclient.InferInput("bitstream", [1], "BYTES")
    inp.set_data_from_numpy(np.array([data], dtype=np.object_))
    return inp


def text(e) -> str:
    """A BYTES element as tritonclient gives it back: bytes from binary data, str from JSON."""
    return e.decode() if isinstance(e, bytes) else e


def assert_same_answer(result, native_answer, k: int = 5):
    """tritonclient's as_numpy on every output equals the native service's answer."""
    idx, score, names = (result.as_numpy(n) for n in ALL_OUTPUTS)
    assert idx.shape == score.shape == names.shape == (1, k)
    assert idx.dtype == np.int64 and score.dtype == np.float32 and names.dtype == np.object_
    assert idx[0].tolist() == [c.index for c in native_answer.topk]
    assert [text(n) for n in names[0]] == [c.name for c in native_answer.topk]
    np.testing.assert_allclose(score[0], [c.score for c in native_answer.topk], rtol=1e-6)


# ------------------------------------------------------------------------------------------ HTTP
def test_http_health_and_metadata(http_client, tiny_bundle):
    c = http_client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, tiny_bundle.bundle_id)
    assert not c.is_model_ready(MODEL, "no-such-version") and not c.is_model_ready("nope")
    meta = c.get_server_metadata()
    assert meta["name"] == "splitinfer" and {"binary_tensor_data", "classification"} <= set(meta["extensions"])
    for version in ("", tiny_bundle.bundle_id):
        m = c.get_model_metadata(MODEL, version)
        assert m["name"] == MODEL and m["versions"] == [tiny_bundle.bundle_id]
        assert m["inputs"] == [{"name": "bitstream", "datatype": "BYTES", "shape": [1]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in m["outputs"]] == [
            ("topk_index", "INT64", [1, -1]), ("topk_score", "FP32", [1, -1]), ("topk_name", "BYTES", [1, -1])]
    with pytest.raises(InferenceServerException) as e:
        c.get_model_metadata(MODEL, "no-such-version")
    assert e.value.status() == "404" and tiny_bundle.bundle_id in e.value.message()


def test_http_default_infer_matches_the_native_service(http_client, frames, native):
    """The normal call: binary BYTES input, no outputs named (tritonclient then asks for binary outputs)."""
    for frame, ans in zip(frames, native):
        r = http_client.infer(MODEL, [http_input(frame.data)])
        assert_same_answer(r, ans)
        out = r.get_response()
        assert all("binary_data_size" in o["parameters"] and "data" not in o for o in out["outputs"])
        p = out["parameters"]
        assert p["rung"] == ans.rung == frame.rung and p["bytes_received"] == frame.n_bytes
        assert out["model_version"] == ans.bundle_id


def test_http_named_outputs_binary_and_json(http_client, frames, native):
    frame, ans = frames[1], native[1]
    outputs = [httpclient.InferRequestedOutput("topk_index", binary_data=True),
               httpclient.InferRequestedOutput("topk_name", binary_data=False)]
    r = http_client.infer(MODEL, [http_input(frame.data)], outputs=outputs)
    got = {o["name"]: o for o in r.get_response()["outputs"]}
    assert list(got) == ["topk_index", "topk_name"]  # only those asked for, in that order
    assert "binary_data_size" in got["topk_index"]["parameters"] and "data" not in got["topk_index"]
    assert got["topk_name"]["data"] == [c.name for c in ans.topk]
    assert r.as_numpy("topk_index")[0].tolist() == [c.index for c in ans.topk]
    assert [text(n) for n in r.as_numpy("topk_name")[0]] == [c.name for c in ans.topk]
    assert r.as_numpy("topk_score") is None
    # every output named, all JSON: the same numbers as binary
    r = http_client.infer(MODEL, [http_input(frame.data)],
                          outputs=[httpclient.InferRequestedOutput(n, binary_data=False) for n in ALL_OUTPUTS])
    assert "parameters" not in r.get_response()["outputs"][0]
    assert_same_answer(r, ans)


def test_http_classification_parameters_and_versions(http_client, frames, native, encoder, heldout_items,
                                                      tiny_bundle):
    frame, ans = frames[0], native[0]
    r = http_client.infer(MODEL, [http_input(frame.data)],
                          outputs=[httpclient.InferRequestedOutput("topk_score", class_count=3)])
    labels = r.as_numpy("topk_score")
    assert labels.shape == (1, 3)
    parsed = [lab.decode().split(":") for lab in labels[0]]
    assert [(int(i), n) for _, i, n in parsed] == [(c.index, c.name) for c in ans.topk[:3]]
    assert [float(s) for s, _, _ in parsed] == pytest.approx([c.score for c in ans.topk[:3]], abs=1e-6)
    # the project's request parameters, through tritonclient's custom parameters; the version route
    rung = tiny_bundle.rungs[2]
    f2 = encoder.encode(heldout_items[0][0], bitrate=rung.bpp)
    r = http_client.infer(MODEL, [http_input(f2.data)], model_version=tiny_bundle.bundle_id, request_id="cam-1",
                          parameters={"target_bpp": rung.bpp, "expected_rung": f2.rung, "top_k": 2})
    out = r.get_response()
    assert out["id"] == "cam-1" and out["parameters"]["hinted_rung"] == out["parameters"]["rung"] == f2.rung
    assert r.as_numpy("topk_index").shape == (1, 2)
    with pytest.raises(InferenceServerException) as e:
        http_client.infer(MODEL, [http_input(frame.data)], model_version="no-such-version")
    assert e.value.status() == "404"


def test_http_json_input_and_refusals(http_client, server, frames, native):
    # JSON BYTES data are base64 strings: a bitstream is not text
    b64 = base64.b64encode(frames[0].data)
    r = http_client.infer(MODEL, [http_input(b64, binary=False)])
    assert r.as_numpy("topk_index")[0].tolist() == [c.index for c in native[0].topk]
    for data, model, status, words in [
        (b"\x00garbage" * 8, MODEL, "400", "bitstream"),
        (frames[0].data, "nope", "404", MODEL),
    ]:
        with pytest.raises(InferenceServerException) as e:
            http_client.infer(model, [http_input(data)])
        assert e.value.status() == status and words in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http_client.infer(MODEL, [http_input(frames[0].data)], outputs=[httpclient.InferRequestedOutput("mask_png")])
    assert e.value.status() == "400" and "topk_index" in e.value.message()
    bad = httpclient.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([frames[0].data], dtype=np.object_))
    with pytest.raises(InferenceServerException) as e:
        http_client.infer(MODEL, [bad])
    assert e.value.status() == "400" and "bitstream" in e.value.message()


def _post(c: httpx.Client, body: dict, binary: bytes = b"", path: str = f"/v2/models/{MODEL}/infer"):
    header = json.dumps(body).encode()
    headers = {"inference-header-content-length": str(len(header))} if binary else {}
    return c.post(path, content=header + binary, headers=headers)


def test_http_raw_framing_refusals_and_json_depth(server, frames):
    data = frames[0].data
    element = struct.pack("<I", len(data)) + data
    one = {"name": "bitstream", "datatype": "BYTES", "shape": [1]}
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10) as c:
        cases = {
            "two_elements": ({"inputs": [{**one, "parameters": {"binary_data_size": 2 * len(element)}}]},
                             element * 2, "1 BYTES element"),
            "stray_bytes": ({"inputs": [{**one, "parameters": {"binary_data_size": len(element) + 2}}]},
                            element + b"\x00\x00", "stray"),
            "shape": ({"inputs": [{**one, "shape": [2], "parameters": {"binary_data_size": len(element)}}]},
                      element, "shape [1]"),
            "uncovered_binary": ({"inputs": [{**one, "parameters": {"binary_data_size": len(element)}}]},
                                 element + b"xyz", "3 bytes"),
            "shared_memory": ({"inputs": [{**one, "parameters": {"shared_memory_region": "r"}}]}, b"",
                              "shared memory"),
            "classification_elsewhere": ({"inputs": [{**one, "parameters": {"binary_data_size": len(element)}}],
                                          "outputs": [{"name": "topk_name", "parameters": {"classification": 2}}]},
                                         element, "topk_score"),
            "output_twice": ({"inputs": [{**one, "parameters": {"binary_data_size": len(element)}}],
                              "outputs": [{"name": "topk_name"}, {"name": "topk_name"}]}, element, "twice"),
            "binary_data_output_not_bool": ({"inputs": [{**one, "parameters": {"binary_data_size": len(element)}}],
                                             "parameters": {"binary_data_output": "perhaps"}}, element,
                                            "binary_data_output"),
        }
        for case, (body, binary, words) in cases.items():
            r = _post(c, body, binary)
            assert r.status_code == 400, (case, r.text)
            assert words in r.json()["error"], (case, r.json())
        # D1: a body nested 1,000 levels deep is a 400 (not a RecursionError and a 500); the connection stays up
        for deep in (b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000,
                     b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}"):
            r = c.post(f"/v2/models/{MODEL}/infer", content=deep, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "nested" in r.json()["error"], r.text
        r = _post(c, {"inputs": [{**one, "parameters": {"binary_data_size": len(element)}}]}, element)
        assert r.status_code == 200 and r.json()["parameters"]["rung"] == frames[0].rung
        # the versions routes
        for path in (f"/v2/models/{MODEL}/versions/{r.json()['model_version']}",
                     f"/v2/models/{MODEL}/versions/{r.json()['model_version']}/ready"):
            assert c.get(path).status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/nope/ready").status_code == 404


# ------------------------------------------------------------------------------------------ gRPC
def test_grpc_health_metadata_reflection(grpc_client, server, tiny_bundle):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from google.protobuf.descriptor_pool import DescriptorPool

    c = grpc_client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, tiny_bundle.bundle_id)
    meta = c.get_server_metadata(as_json=True)
    assert meta["name"] == "splitinfer" and "classification" in meta["extensions"]
    m = c.get_model_metadata(MODEL)
    assert m.name == MODEL and list(m.versions) == [tiny_bundle.bundle_id] and m.platform == "splitinfer"
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [("bitstream", "BYTES", [1])]
    assert [t.name for t in m.outputs] == ALL_OUTPUTS
    for call in (lambda: c.get_model_metadata(MODEL, "no-such-version"), lambda: c.is_model_ready("nope")):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.NOT_FOUND" and e.value.message()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=OIP_SERVICE_NAME), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(channel)
    assert {SERVICE_NAME, OIP_SERVICE_NAME, "grpc.health.v1.Health"} <= set(db.get_services())
    pool = DescriptorPool(db)
    methods = {m.name for m in pool.FindServiceByName(OIP_SERVICE_NAME).methods}
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
            "ModelStreamInfer"} == methods
    assert {m.name for m in pool.FindServiceByName(SERVICE_NAME).methods} == {"Infer", "InferStream", "ModelMetadata",
                                                                              "EdgePackage"}
    channel.close()


def test_grpc_default_and_named_outputs_match_the_native_service(grpc_client, frames, native, tiny_bundle):
    for frame, ans in zip(frames, native):
        r = grpc_client.infer(MODEL, [grpc_input(frame.data)])
        assert_same_answer(r, ans)
        resp = r.get_response()
        assert [o.name for o in resp.outputs] == ALL_OUTPUTS and len(resp.raw_output_contents) == 3
        assert resp.parameters["rung"].int64_param == frame.rung == ans.rung
        assert resp.parameters["bpp"].double_param == pytest.approx(frame.bpp)
    frame, ans = frames[2], native[2]
    r = grpc_client.infer(MODEL, [grpc_input(frame.data)], model_version=tiny_bundle.bundle_id, request_id="g-1",
                          outputs=[grpcclient.InferRequestedOutput("topk_name"),
                                   grpcclient.InferRequestedOutput("topk_score", class_count=2)],
                          parameters={"top_k": 3})
    assert [o.name for o in r.get_response().outputs] == ["topk_name", "topk_score"]
    assert r.get_response().id == "g-1"
    assert [n.decode() for n in r.as_numpy("topk_name")[0]] == [c.name for c in ans.topk[:3]]
    labels = [lab.decode().split(":") for lab in r.as_numpy("topk_score")[0]]
    assert [(int(i), n) for _, i, n in labels] == [(c.index, c.name) for c in ans.topk[:2]]
    assert r.as_numpy("topk_index") is None


def test_grpc_refusals(grpc_client, frames):
    cases = [
        (dict(model_name="nope"), frames[0].data, "StatusCode.NOT_FOUND"),
        (dict(model_name=MODEL, model_version="no-such-version"), frames[0].data, "StatusCode.NOT_FOUND"),
        (dict(model_name=MODEL), b"\x00garbage" * 8, "StatusCode.INVALID_ARGUMENT"),
        (dict(model_name=MODEL, parameters={"expected_rung": 9}), frames[0].data, "StatusCode.INVALID_ARGUMENT"),
        (dict(model_name=MODEL, parameters={"top_k": "many"}), frames[0].data, "StatusCode.INVALID_ARGUMENT"),
        (dict(model_name=MODEL, outputs=[grpcclient.InferRequestedOutput("class_pixels")]), frames[0].data,
         "StatusCode.INVALID_ARGUMENT"),
    ]
    for kw, data, status in cases:
        with pytest.raises(InferenceServerException) as e:
            grpc_client.infer(inputs=[grpc_input(data)], **kw)
        assert e.value.status() == status and e.value.message(), (kw, e.value)
    # unknown parameters are ignored, as on REST
    r = grpc_client.infer(MODEL, [grpc_input(frames[0].data)], parameters={"bitrate": 3}, priority=1)
    assert r.as_numpy("topk_index").shape == (1, 5)


def test_grpc_stream_infer(grpc_client, frames, native):
    """Triton's streaming extension, as tritonclient drives it: answers in order, a bad frame gets an error."""
    answers: "queue.Queue" = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    for i, f in enumerate(frames):
        grpc_client.async_stream_infer(MODEL, [grpc_input(f.data)], request_id=f"ok-{i}")
        grpc_client.async_stream_infer(MODEL, [grpc_input(f.data[:-5])], request_id=f"bad-{i}")
        sent += [("ok", i), ("bad", i)]
    got = [answers.get(timeout=30) for _ in sent]
    grpc_client.stop_stream()
    for (kind, i), (result, error) in zip(sent, got):
        if kind == "ok":
            assert error is None and result.get_response().id == f"ok-{i}"
            assert_same_answer(result, native[i])
        else:
            assert result is None and "bitstream" in error.message()


def test_api_keys_on_both_transports(tiny_bundle, tiny_weights, frames):
    with running_server(tiny_bundle, tiny_weights, api_keys=["k1"]) as s:
        g = grpcclient.InferenceServerClient(url=f"127.0.0.1:{s.grpc_port}")
        h = httpclient.InferenceServerClient(url=f"127.0.0.1:{s.http_port}")
        try:
            assert g.is_server_live() and g.is_server_ready() and h.is_server_live()  # probes stay open
            for call in (lambda c: c.infer(MODEL, [grpc_input(frames[0].data)]),
                         lambda c: c.get_model_metadata(MODEL), lambda c: c.is_model_ready(MODEL)):
                with pytest.raises(InferenceServerException) as e:
                    call(g)
                assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as e:
                h.infer(MODEL, [http_input(frames[0].data)])
            assert e.value.status() == "401"
            key = {"authorization": "Bearer k1"}
            assert g.infer(MODEL, [grpc_input(frames[0].data)], headers=key).as_numpy("topk_index").shape == (1, 5)
            assert h.infer(MODEL, [http_input(frames[0].data)], headers=key).as_numpy("topk_index").shape == (1, 5)
        finally:
            g.close()
            h.close()


# ------------------------------------------------------------------------------------------ conversion
def _segmentation_answer():
    from cloud_server.types import ClassScore, InferenceResponse
    from shared.tasks import OutputTensor

    return InferenceResponse(
        request_id="r", model="seg", bundle_id="b", rung=1, bytes_received=10, bpp=0.1, input_hw=(8, 8),
        topk=[ClassScore(index=2, name="road", score=0.75), ClassScore(index=0, name="sky", score=0.25)],
        outputs={"mask_png": OutputTensor("BYTES", (1,), (b"\x89PNG\r\n\x1a\n fake",)),
                 "class_pixels": OutputTensor("INT64", (1, 3), (16, 0, 48))})


def _call(outputs=(), binary_output=None, top_k=None, task="segmentation"):
    from cloud_server import oip
    from cloud_server.types import ModelMetadata

    meta = ModelMetadata(name="seg", bundle_id="b", backbone="x", split="y", task=task, input_hw=(8, 8),
                         rate_model="r", num_classes=3, backbone_loaded=True, rungs=[])
    params = oip.RequestParameters(binary_data_output=binary_output, top_k=top_k)
    inputs = [oip.InputTensor("bitstream", "BYTES", (1,), [b"bits"])]
    return oip.make_call("seg", meta, None, params, inputs, list(outputs), 5)


def test_segmentation_outputs_convert_for_both_transports():
    """Names, datatypes and shapes of the segmentation outputs, binary and JSON, read back by tritonclient."""
    from cloud_server import oip

    r = _segmentation_answer()
    for binary in (True, False):
        call = _call(binary_output=binary)
        body, header_len = oip.render_rest(r, oip.answer_tensors(r, call))
        assert (header_len is not None) == binary
        res = httpclient.InferResult.from_response_body(body, header_length=header_len)
        out = {o["name"]: (o["datatype"], o["shape"]) for o in res.get_response()["outputs"]}
        assert out == {"topk_index": ("INT64", [1, 2]), "topk_score": ("FP32", [1, 2]),
                       "topk_name": ("BYTES", [1, 2]), "mask_png": ("BYTES", [1]), "class_pixels": ("INT64", [1, 3])}
        assert res.as_numpy("class_pixels").tolist() == [[16, 0, 48]]
        if binary:
            assert res.as_numpy("mask_png")[0] == r.mask_png
        else:  # not text: base64, and the output says so
            mask = res.get_output("mask_png")
            assert mask["parameters"] == {"content_type": "base64"}
            assert base64.b64decode(mask["data"][0]) == r.mask_png
    from cloud_server.grpc.oip_service import from_answer

    call = _call(outputs=[oip.RequestedOutput("mask_png"), oip.RequestedOutput("class_pixels")])
    res = grpcclient.InferResult(from_answer(r, call))
    assert res.as_numpy("mask_png").tolist() == [r.mask_png] and res.as_numpy("class_pixels").tolist() == [[16, 0, 48]]
    assert res.as_numpy("topk_index") is None


def test_tensor_conversion_refusals():
    from cloud_server import oip
    from cloud_server.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="mask_png"):  # classification models have no mask
        _call(outputs=[oip.RequestedOutput("mask_png")], task="classification")
    with pytest.raises(InvalidArgument, match="unknown output"):
        _call(outputs=[oip.RequestedOutput("logits")])
    with pytest.raises(InvalidArgument, match="at most"):
        _call(outputs=[oip.RequestedOutput("topk_score", classification=1000)])
    assert oip.unpack_bytes(oip.pack_bytes([b"ab", b"", b"c"]), "x") == [b"ab", b"", b"c"]
    for raw in (b"\x05\x00\x00\x00abc", b"\x01\x00", b"\x00\x00\x00\x00\x01"):
        with pytest.raises(InvalidArgument, match="4-byte little-endian length|stray"):
            oip.unpack_bytes(raw, "x")
    call = _call(outputs=[oip.RequestedOutput("topk_score", classification=2)], top_k=1)
    assert call.request.top_k == 2 and call.top_k == 1  # enough classes for both, each output trimmed to its own
    assert oip.load_json(b'{"a": ["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]}') == {"a": ["[" * 38]}
    for deep in (b"[" * 33 + b"]" * 33, b"[" * 100_000, b'{"a":' * 40 + b"1" + b"}" * 40):
        with pytest.raises(InvalidArgument, match="nested"):
            oip.load_json(deep)
    assert oip.load_json(b"[" * 32 + b"]" * 32) is not None
