"""The REST front end end to end on loopback: KServe v2 health, metadata and inference (base64 and the binary
data extension), the image-upload endpoint, every refusal as JSON with a 4xx status (never a 500, the server
still answering), bearer API keys, body limits, Prometheus metrics, graceful shutdown."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time

import httpx
import pytest

from _service import encoder, frames, reference, MODEL, running_server, slow_tail, wait_for  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_weights):
    with running_server(tiny_bundle, tiny_weights, max_bitstream_bytes=4096, max_upload_bytes=64 * 1024) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10) as c:
        yield c


def kserve_body(data: bytes, **parameters) -> dict:
    body = {"inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(data).decode()]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def binary_request(data: bytes, **parameters):
    """The binary tensor extension: a BYTES element is a 4-byte little-endian length followed by its bytes."""
    element = struct.pack("<I", len(data)) + data
    header = json.dumps({"parameters": parameters, "inputs": [
        {"name": "bitstream", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(element)}}]})
    header = header.encode()
    return header + element, {"inference-header-content-length": str(len(header)),
                              "content-type": "application/octet-stream"}


def outputs(resp: dict) -> dict:
    return {o["name"]: o["data"] for o in resp["outputs"]}


def refused(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"] and body["kind"], body
    return body


def still_answers(http, frame):
    r = http.post(f"/v2/models/{MODEL}/infer", json=kserve_body(frame.data))
    assert r.status_code == 200 and r.json()["parameters"]["rung"] == frame.rung


# ------------------------------------------------------------------------------------------ answers
def test_health_and_server_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    r = http.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "splitinfer" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata(http, tiny_bundle):
    m = http.get(f"/v2/models/{MODEL}").json()
    assert (m["name"], m["bundle_id"], m["backbone"], m["split"]) == (MODEL, tiny_bundle.bundle_id, "cifar_resnet20",
                                                                       "layer1")
    assert m["versions"] == [tiny_bundle.bundle_id] and m["inputs"][0]["datatype"] == "BYTES"
    assert [r["lam"] for r in m["rungs"]] == [r.lam for r in tiny_bundle.rungs]
    assert [r["bpp"] for r in m["rungs"]] == pytest.approx([r.bpp for r in tiny_bundle.rungs])
    assert all("resident" in r for r in m["rungs"])
    assert [x["name"] for x in http.get("/v2/models").json()["models"]] == [MODEL]
    assert http.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True
    refused(http.get("/v2/models/nope"), 404)


def test_infer_base64_and_binary_extension(http, frames, reference):
    for frame, ref in zip(frames, reference):
        r = http.post(f"/v2/models/{MODEL}/infer", json={**kserve_body(frame.data), "id": "req-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == MODEL and body["id"] == "req-1"
        p = body["parameters"]
        assert p["rung"] == frame.rung and p["bytes_received"] == frame.n_bytes
        assert p["bpp"] == pytest.approx(frame.bpp) and {"decode_ms", "tail_ms", "total_ms"} <= set(p)
        out = outputs(body)
        assert out["topk_index"] == [i for i, _, _ in ref.topk]
        assert out["topk_name"] == [n for _, n, _ in ref.topk]
        assert out["topk_score"] == pytest.approx([s for _, _, s in ref.topk], abs=1e-5)
        content, headers = binary_request(frame.data, top_k=2)
        r = http.post(f"/v2/models/{MODEL}/infer", content=content, headers=headers)
        assert r.status_code == 200, r.text
        assert outputs(r.json())["topk_index"] == [i for i, _, _ in ref.topk][:2]


def test_unknown_parameters_are_ignored(http, frames):
    """The protocol lets a request carry parameters a server does not know (tritonclient adds some itself)."""
    r = http.post(f"/v2/models/{MODEL}/infer", json=kserve_body(frames[0].data, bitrate=3, priority=1))
    assert r.status_code == 200 and r.json()["parameters"]["rung"] == frames[0].rung


def test_binary_element_without_its_length_is_refused(http, frames):
    """The bitstream sent raw, without the 4-byte length the spec frames a BYTES element with: a clear 400."""
    data = frames[0].data
    header = json.dumps({"inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    r = http.post(f"/v2/models/{MODEL}/infer", content=header + data,
                  headers={"inference-header-content-length": str(len(header))})
    assert "4-byte little-endian length" in refused(r, 400)["error"]


def test_bitrate_hint_as_parameter(http, encoder, heldout_items, tiny_bundle):
    image = heldout_items[0][0]
    for rung in tiny_bundle.rungs:
        frame = encoder.encode(image, bitrate=rung.bpp)
        r = http.post(f"/v2/models/{MODEL}/infer",
                      json=kserve_body(frame.data, target_bpp=rung.bpp, expected_rung=frame.rung))
        p = r.json()["parameters"]
        assert p["rung"] == p["hinted_rung"] == rung.index
    h, w = tiny_bundle.manifest["preprocess"]["input_size"]
    frame = encoder.encode(image, rung=2)
    kbps = tiny_bundle.rungs[2].bpp * h * w * 5 / 1000.0
    r = http.post(f"/v2/models/{MODEL}/infer", json=kserve_body(frame.data, kbit_per_s=kbps, fps=5, expected_rung=2))
    assert r.status_code == 200 and r.json()["parameters"]["hinted_rung"] == 2


def _png(size=(40, 30), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buf, format=fmt)
    return buf.getvalue()


def test_infer_image_upload(http, heldout_items, tiny_weights, tiny_bundle):
    """The whole pipeline in the cloud, for clients without an edge runtime: same answer as edge + cloud."""
    from cloud_server import CloudDecoder
    from edge_client import EdgeEncoder

    path = heldout_items[0][0]
    enc = EdgeEncoder(tiny_bundle, weights=str(tiny_weights))
    frame = enc.encode(path, rung=1)
    ref = CloudDecoder(tiny_bundle, weights=str(tiny_weights)).decode(frame.data)
    data = path.read_bytes()
    r = http.post(f"/v2/models/{MODEL}/infer-image", params={"rung": 1}, files={"image": ("x.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rung"] == 1 and body["bytes_received"] == frame.n_bytes
    assert [c["index"] for c in body["topk"]] == [i for i, _, _ in ref.topk]
    assert "encode" in body["timings_ms"]
    # raw body, a JPEG, and a hint instead of a rung
    r = http.post(f"/v2/models/{MODEL}/infer-image", params={"target_bpp": tiny_bundle.rungs[2].bpp, "top_k": 3},
                  content=_png(fmt="JPEG"), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["rung"] == 2 and len(r.json()["topk"]) == 3


# ------------------------------------------------------------------------------------------ refusals
def _bad_infer(frames):
    f = frames[1]
    good = base64.b64encode(f.data).decode()
    one = lambda **kw: {"inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1], **kw}]}  # noqa: E731
    return {
        "garbage": (kserve_body(b"\x00garbage" * 8), 400),
        "truncated": (kserve_body(f.data[:-7]), 400),
        "mutated": (kserve_body(f.data[:20] + bytes([f.data[20] ^ 4]) + f.data[21:]), 400),
        "unknown_rung": (kserve_body(f.data, expected_rung=7), 400),
        "rung_disagrees": (kserve_body(f.data, expected_rung=0), 400),
        "negative_hint": (kserve_body(f.data, target_bpp=-3), 400),
        "half_link_hint": (kserve_body(f.data, kbit_per_s=30), 400),
        "mistyped_parameter": (kserve_body(f.data, top_k="many"), 400),
        "top_k_out_of_range": (kserve_body(f.data, top_k=0), 400),
        "missing_inputs": ({"parameters": {}}, 400),
        "missing_data": (one(), 400),
        "empty_data": (one(data=[""]), 400),
        "not_base64": (one(data=["***not base64***"]), 400),
        "wrong_datatype": (one(datatype="FP32", data=[good]), 400),
        "two_inputs": ({"inputs": [one(data=[good])["inputs"][0]] * 2}, 400),
        "inputs_not_a_list": ({"inputs": "x"}, 400),
        "body_not_object": ([1, 2, 3], 400),
        "oversized_bitstream": (kserve_body(b"S" * 5000), 413),
    }


BAD_INFER_CASES = ["garbage", "truncated", "mutated", "unknown_rung", "rung_disagrees", "negative_hint",
                   "half_link_hint", "mistyped_parameter", "top_k_out_of_range", "missing_inputs", "missing_data", "empty_data", "not_base64",
                   "wrong_datatype", "two_inputs", "inputs_not_a_list", "body_not_object", "oversized_bitstream"]


@pytest.mark.parametrize("case", BAD_INFER_CASES)
def test_infer_refusals(http, frames, case):
    body, status = _bad_infer(frames)[case]
    refused(http.post(f"/v2/models/{MODEL}/infer", json=body), status)
    still_answers(http, frames[0])


def test_more_refusals(http, frames):
    url = f"/v2/models/{MODEL}/infer"
    refused(http.post("/v2/models/nope/infer", json=kserve_body(frames[0].data)), 404)
    refused(http.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    refused(http.post(url, content=b"\xff\xfe\x00", headers={"content-type": "application/json"}), 400)
    content, headers = binary_request(frames[0].data)
    for bad in ("abc", "0", str(len(content) + 1), "10"):
        refused(http.post(url, content=content, headers={**headers, "inference-header-content-length": bad}), 400)
    refused(http.post(url, content=content[:-3], headers=headers), 400)  # binary_data_size disagrees
    refused(http.post(url, content=b"x" * 200_000), 413)  # over the body limit (by Content-Length)

    def chunks():  # no Content-Length: counted while reading
        for _ in range(40):
            yield b"y" * 4096

    refused(http.post(url, content=chunks()), 413)
    r = http.get("/v2/no/such/route")
    assert r.status_code == 404 and r.json()["error"]
    still_answers(http, frames[0])


def test_infer_image_refusals(http, frames):
    url = f"/v2/models/{MODEL}/infer-image"
    refused(http.post(url, content=b"this is not an image", headers={"content-type": "image/png"}), 400)
    refused(http.post(url, files={"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png")}), 400)
    refused(http.post(url, files={"image": ("x.png", _png()[:60], "image/png")}), 400)  # truncated PNG
    refused(http.post(url, files={"image": ("x.gif", _png(fmt="GIF"), "image/gif")}), 400)  # unsupported format
    refused(http.post(url, files={"other": ("x.png", _png(), "image/png")}), 400)  # no "image" field
    refused(http.post(url, content=b"", headers={"content-type": "image/png"}), 400)
    refused(http.post(url, params={"rung": 9}, content=_png()), 400)
    refused(http.post(url, params={"rung": 1, "target_bpp": 2.0}, content=_png()), 400)
    refused(http.post(url, params={"target_bpp": "fast"}, content=_png()), 400)
    refused(http.post(url, params={"target_bpp": 0.1, "kbit_per_s": 3, "fps": 1}, content=_png()), 400)
    refused(http.post(url, params={"top_k": 0}, content=_png()), 400)
    refused(http.post(url, content=b"\x89PNG" + bytes(68_000)), 413)  # over max_upload_bytes
    refused(http.post("/v2/models/nope/infer-image", content=_png()), 404)
    still_answers(http, frames[0])


def test_decompression_bomb_is_refused(tiny_bundle, tiny_weights):
    with running_server(tiny_bundle, tiny_weights, enable_grpc=False, max_image_pixels=10_000) as s:
        with httpx.Client(base_url=f"http://127.0.0.1:{s.http_port}", timeout=10) as c:
            body = refused(c.post(f"/v2/models/{MODEL}/infer-image", content=_png(size=(200, 200))), 413)
            assert "pixels" in body["error"]
            assert c.post(f"/v2/models/{MODEL}/infer-image", content=_png(size=(50, 50))).status_code == 200


# ------------------------------------------------------------------------------------------ operations
def test_api_keys(tiny_bundle, tiny_weights, frames):
    with running_server(tiny_bundle, tiny_weights, enable_grpc=False, api_keys=["s3cret"]) as s:
        with httpx.Client(base_url=f"http://127.0.0.1:{s.http_port}", timeout=10) as c:
            url = f"/v2/models/{MODEL}/infer"
            for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "s3cret"},
                            {"authorization": "Basic s3cret"}):
                r = c.post(url, json=kserve_body(frames[0].data), headers=headers)
                refused(r, 401)
                assert r.headers["www-authenticate"] == "Bearer"
            refused(c.get(f"/v2/models/{MODEL}"), 401)
            refused(c.post(f"/v2/models/{MODEL}/infer-image", content=_png()), 401)
            ok = {"authorization": "Bearer s3cret"}
            assert c.post(url, json=kserve_body(frames[0].data), headers=ok).status_code == 200
            assert c.get(f"/v2/models/{MODEL}", headers=ok).status_code == 200
            # probes and metrics stay open
            assert c.get("/v2/health/ready").status_code == 200 and c.get("/metrics").status_code == 200


def test_metrics(http, frames):
    still_answers(http, frames[2])
    refused(http.post(f"/v2/models/{MODEL}/infer", json=kserve_body(b"garbage" * 9)), 400)
    refused(http.post("/v2/models/nope/infer", json=kserve_body(frames[0].data)), 404)
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)

    def value(name, **labels):
        return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("splitinfer_requests_total", protocol="rest", model=MODEL, outcome="ok") >= 1
    assert value("splitinfer_requests_total", protocol="rest", model="unknown", outcome="not_found") >= 1
    assert value("splitinfer_errors_total", protocol="rest", kind="invalid_argument") >= 1
    assert value("splitinfer_errors_total", protocol="rest", kind="not_found") >= 1
    assert value("splitinfer_request_duration_seconds_count", protocol="rest", model=MODEL) >= 1
    rung = str(frames[2].rung)
    assert value("splitinfer_bitstream_bytes_count", model=MODEL, rung=rung) >= 1
    assert value("splitinfer_bitstream_bytes_sum", model=MODEL, rung=rung) >= frames[2].n_bytes
    assert value("splitinfer_bitstream_bpp_count", model=MODEL, rung=rung) >= 1
    assert value("splitinfer_tail_batch_size_count") >= 1
    assert value("splitinfer_resident_rungs", model=MODEL) >= 1


@pytest.mark.timing
def test_graceful_shutdown(tiny_bundle, tiny_weights, frames):
    with running_server(tiny_bundle, tiny_weights, enable_grpc=False) as s:
        url = f"http://127.0.0.1:{s.http_port}/v2/models/{MODEL}/infer"
        result = {}
        with slow_tail(s, 0.6):
            def call():
                result["r"] = httpx.post(url, json=kserve_body(frames[0].data), timeout=10)

            t = threading.Thread(target=call)
            t.start()
            gauge = "splitinfer_inflight_requests"
            assert wait_for(lambda: s.dataplane.metrics.registry.get_sample_value(gauge) == 1)
            t0 = time.monotonic()
            s.stop(grace=5.0)
            t.join(10)
            assert result["r"].status_code == 200 and result["r"].json()["parameters"]["rung"] == frames[0].rung
            assert time.monotonic() - t0 < 5.0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{s.http_port}/v2/health/live", timeout=2)
