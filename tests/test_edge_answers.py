"""The edge trusts nothing from the server's stream (issue 24, E8).

A fake server (grpc's in-process server with a hand-written servicer) answers ``splitinfer edge --stream`` (with
and without ``--track-link``) in every wrong way: two answers per frame, an answer before the first frame, an
unknown request id, a stream that ends OK with frames unanswered (each: one clean error line naming the lost frames,
exit 2), and answers with nonsense in them (each such frame failed, exit 1). An honest fake gets exit 0.
"""

from __future__ import annotations

import json
import math
from concurrent import futures
from pathlib import Path

import pytest

from shared._proto import splitinfer_pb2_grpc as pb_grpc

SAMPLES = Path(__file__).resolve().parents[1] / "shared" / "assets" / "samples"
IMAGES = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


class _Fake(pb_grpc.SplitInferenceServicer):
    """A SplitInference servicer that serves one bundle's metadata and answers streams as ``mode`` says."""

    def __init__(self, bundle, mode: str):
        self.bundle, self.mode = bundle, mode

    def ModelMetadata(self, request, context):
        from shared._proto import splitinfer_pb2 as pb

        b = self.bundle
        return pb.ModelMetadataResponse(models=[pb.ModelInfo(name="fake", bundle_id=b.bundle_id, backbone=b.model,
                                                             split=b.split, num_classes=10)])

    def _answer(self, req, **change):
        from shared._proto import splitinfer_pb2 as pb

        res = pb.InferResponse(request_id=req.request_id, model="fake", bundle_id=self.bundle.bundle_id, rung=0,
                               bytes_received=len(req.bitstream), bpp=0.5, batch_size=1,
                               topk=[pb.ClassScore(index=3, name="three", score=0.75)])
        for k, v in change.items():
            if k == "topk":
                del res.topk[:]
                res.topk.extend(v)
            else:
                setattr(res, k, v)
        return pb.InferStreamResponse(request_id=change.get("request_id", req.request_id), result=res)

    def InferStream(self, requests, context):
        from shared._proto import splitinfer_pb2 as pb

        mode = self.mode
        if mode == "early":
            yield pb.InferStreamResponse(request_id="before-any-frame", result=pb.InferResponse(rung=0))
        for req in requests:
            if mode == "silent":
                continue
            if mode == "double":
                yield self._answer(req)
                yield self._answer(req)
            elif mode == "unknown_id":
                yield self._answer(req, request_id="0" * 32)
            elif mode == "rung":
                yield self._answer(req, rung=255)
            elif mode == "class":
                yield self._answer(req, topk=[pb.ClassScore(index=10_000, name="x", score=0.5)])
            elif mode == "nan":
                yield self._answer(req, topk=[pb.ClassScore(index=3, name="three", score=math.nan)])
            elif mode == "many":
                yield self._answer(req, topk=[pb.ClassScore(index=i, name=str(i), score=0.1) for i in range(10)])
            elif mode == "bytes":
                yield self._answer(req, bytes_received=len(req.bitstream) + 1)
            elif mode == "empty":
                yield pb.InferStreamResponse(request_id=req.request_id)
            else:  # honest
                yield self._answer(req)


def _serve(bundle, mode: str):
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SplitInferenceServicer_to_server(_Fake(bundle, mode), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def package(tiny_bundle, tiny_weights, tmp_path_factory):
    from edge_client import EdgePackage
    from shared.edge_export import export_edge

    return EdgePackage(export_edge(tiny_bundle, tmp_path_factory.mktemp("edge") / "tiny", weights=str(tiny_weights)))


@pytest.fixture(scope="module")
def vr_package(vr_bundle, tiny_weights, tmp_path_factory):
    from edge_client import EdgePackage
    from shared.edge_export import export_edge

    return EdgePackage(export_edge(vr_bundle, tmp_path_factory.mktemp("edge") / "vr", weights=str(tiny_weights)))


def _run(pkg, mode: str, capsys, track_link: bool = False):
    from splitinfer.cli import main

    server, port = _serve(pkg.bundle, mode)
    try:
        argv = ["edge", "--server", f"127.0.0.1:{port}", "--bundle", str(pkg.root), "--stream", "--json",
                "--timeout", "20", *IMAGES]
        if track_link:
            argv[-len(IMAGES):-len(IMAGES)] = ["--kbps", "100", "--fps", "30", "--track-link"]
        rc = main(argv)
    finally:
        server.stop(0)
    out, err = capsys.readouterr()
    return rc, [json.loads(x) for x in out.strip().splitlines() if x.strip()], err.strip()


BROKEN_ORDER = ["double", "early", "unknown_id", "silent"]


@pytest.mark.parametrize("mode", BROKEN_ORDER)
def test_a_stream_out_of_order_ends_with_one_line_naming_the_lost_frames(package, mode, capsys):
    rc, rows, err = _run(package, mode, capsys)
    assert rc == 2, err
    assert err.startswith("error: BAD_ANSWER") and "\n" not in err, err
    answered = {Path(r["image"]).name for r in rows if r["ok"]}
    lost = [Path(p).name for p in IMAGES if Path(p).name not in answered]
    assert lost and "lost" in err or mode in ("double", "early"), err
    if mode == "silent":  # every frame was read, none answered: all of them named
        assert rows == [] and f"{len(IMAGES)} frames lost" in err and all(n in err for n in lost), err
    if mode == "unknown_id":  # the frames sent by then (at least the first) are named; later ones were never sent
        assert rows == [] and "0" * 32 in err and lost[0] in err and " lost: " in err, err


@pytest.mark.parametrize("mode", ["double", "silent"])
def test_a_stream_following_its_link_ends_cleanly_too(vr_package, mode, capsys):
    rc, rows, err = _run(vr_package, mode, capsys, track_link=True)
    assert rc == 2 and err.startswith("error: BAD_ANSWER") and "\n" not in err, err
    if mode == "silent":
        assert f"{len(IMAGES)} frames lost" in err


NONSENSE = {"rung": "rung 255 is outside", "class": "class 10000 is outside", "nan": "is not a probability",
            "many": "10 classes answered, 1 asked for", "bytes": "were sent", "empty": "neither a result"}


@pytest.mark.parametrize("mode", list(NONSENSE))
def test_a_nonsense_answer_fails_its_frame(package, mode, capsys):
    rc, rows, err = _run(package, mode, capsys)
    assert rc == 1, err
    assert len(rows) == len(IMAGES) and not any(r["ok"] for r in rows)
    assert all(NONSENSE[mode] in r["error"] for r in rows), rows[0]


@pytest.mark.parametrize("track_link", [False, True])
def test_an_honest_fake_is_believed(package, vr_package, track_link, capsys):
    rc, rows, err = _run(vr_package if track_link else package, "honest", capsys, track_link)
    assert rc == 0, err
    assert [Path(r["image"]).name for r in rows] == [Path(p).name for p in IMAGES] and all(r["ok"] for r in rows)


def test_the_answer_checks_one_by_one():
    from edge_client.answers import answer_problem
    from edge_client.results import InferResult
    from shared.tasks import OutputTensor, get_task

    def pixels(*counts):
        return {"class_pixels": OutputTensor("INT64", (1, len(counts)), counts)}

    def r(**kw):
        base = dict(source="a.jpg", request_id="1", rung=1, n_bytes=100, bpp=0.5, topk=[(3, "three", 0.5)],
                    latency_ms=1.0)
        return InferResult(**{**base, **kw})

    limits = dict(rungs=3, num_classes=10, top_k=5, n_bytes=100, task=get_task("segmentation"))
    assert answer_problem(r(), **limits) is None
    assert answer_problem(r(outputs=pixels(*[1] * 10)), **limits) is None
    for bad, why in ((r(rung=3), "rung 3"), (r(rung=-1), "rung -1"), (r(hinted_rung=7), "hinted rung 7"),
                     (r(n_bytes=99), "99 bytes"), (r(bpp=math.inf), "bpp"), (r(topk=[(10, "x", 0.1)]), "class 10"),
                     (r(topk=[(1, "x", -0.5)]), "not a probability"), (r(topk=[(1, "x", 0.1)] * 6), "6 classes"),
                     (r(outputs=pixels(*[1] * 11)), "shape [1, 11], not [1, 10]"),
                     (r(outputs=pixels(*[1] * 9, -1)), "negative"),
                     (r(outputs={"class_pixels": OutputTensor("FP32", (1, 10), (1.0,) * 10)}), "not INT64"),
                     (r(outputs={"class_pixels": OutputTensor("INT64", (1, 10), (1,) * 9)}), "9 elements"),
                     (r(outputs={"depth": OutputTensor("FP32", (1,), (1.0,))}), "'depth' is not one of"),
                     (r(server_timings_ms={"total": math.nan}), "timing")):
        assert why in (answer_problem(bad, **limits) or ""), (bad, why)
    # a classification answer has no outputs of its own; one whose task the edge does not know, none it can check
    assert "not one of the classification task's" in answer_problem(r(outputs=pixels(1)), **{
        **limits, "task": get_task("classification")})
    assert "task is unknown" in answer_problem(r(outputs=pixels(1)), **{**limits, "task": None})
