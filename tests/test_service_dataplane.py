"""The data plane and what it stands on, without a network: settings, bitrate hints, the model repository
(one backbone per (model, split, weights), lazy rungs), tail batching, errors and their mappings."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from _service import MODEL, make_settings


@pytest.fixture(scope="module")
def dataplane(tiny_bundle, tiny_weights):
    from cloud_server.dataplane import DataPlane
    from cloud_server.repository import ModelRepository

    s = make_settings(tiny_bundle, tiny_weights, batch_max_size=8, batch_max_wait_ms=200.0)
    dp = DataPlane(s, ModelRepository(s).load())
    yield dp
    dp.close()


@pytest.fixture(scope="module")
def frames(tiny_bundle, tiny_weights, heldout_items):
    from edge_client import EdgeEncoder

    enc = EdgeEncoder(tiny_bundle, weights=str(tiny_weights))
    return [enc.encode(p, rung=i % len(tiny_bundle.rungs)) for i, (p, _) in enumerate(heldout_items)]


# ------------------------------------------------------------------------------------------ hints
def test_bitrate_hint(tiny_bundle):
    from shared.bundle import select_rung
    from shared.hint import BitrateHint

    h, w = tiny_bundle.manifest["preprocess"]["input_size"]
    for r in tiny_bundle.rungs:
        assert BitrateHint(target_bpp=r.bpp).rung(tiny_bundle) == r.index == select_rung(tiny_bundle.rungs, r.bpp)
        link = BitrateHint(kbit_per_s=r.bpp * h * w * 30 / 1000.0, fps=30)
        assert link.bpp((h, w)) == pytest.approx(r.bpp)
        assert link.rung(tiny_bundle) == r.index
    assert BitrateHint().rung(tiny_bundle) == 0 and not BitrateHint().is_set
    assert BitrateHint(target_bpp=1e-6).rung(tiny_bundle) == len(tiny_bundle.rungs) - 1
    for bad in (dict(target_bpp=0), dict(target_bpp=float("nan")), dict(kbit_per_s=10), dict(fps=3),
                dict(kbit_per_s=10, fps=0), dict(target_bpp=1, kbit_per_s=1, fps=1), dict(kbit_per_s=-1, fps=1)):
        with pytest.raises(ValueError):
            BitrateHint(**bad)


# ------------------------------------------------------------------------------------------ settings
def test_settings_sources(tmp_path, monkeypatch):
    from cloud_server.settings import Settings, load_settings

    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({"http_port": 9100, "grpc_port": 9101, "batch_max_size": 4,
                               "bundles": [{"path": "/b1", "name": "one"}]}))
    keys = tmp_path / "keys"
    keys.write_text("# operators\nkey-a\n\nkey-b\n")
    monkeypatch.setenv("SPLITINFER_GRPC_PORT", "9201")
    monkeypatch.setenv("SPLITINFER_API_KEYS", '["key-env"]')
    monkeypatch.setenv("SPLITINFER_API_KEY_FILE", str(keys))
    s = load_settings(cfg, batch_max_size=2, preload=None)  # flag > env > file > default; None = unset flag
    assert (s.http_port, s.grpc_port, s.batch_max_size, s.preload) == (9100, 9201, 2, False)
    assert s.bundles[0].name == "one" and str(s.bundles[0].path) == "/b1"
    assert s.all_api_keys() == ["key-env", "key-a", "key-b"]
    monkeypatch.setenv("SPLITINFER_CONFIG_FILE", str(cfg))
    assert load_settings().http_port == 9100
    assert "key-env" not in repr(s)  # secrets are not printed
    with pytest.raises(ValueError):
        Settings(tls_cert_file=tmp_path / "cert.pem")  # a certificate without its key
    with pytest.raises(ValueError):
        Settings(batch_max_size=0)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------ errors
def test_error_mappings():
    import grpc

    from cloud_server import errors

    classes = [getattr(errors, n) for n in errors.__all__]
    for cls in classes:
        assert 400 <= cls.status_code < 600 and grpc.StatusCode[cls.grpc_code]
    assert (errors.InvalidArgument.status_code, errors.InvalidArgument.grpc_code) == (400, "INVALID_ARGUMENT")
    assert (errors.NotFound.status_code, errors.NotFound.grpc_code) == (404, "NOT_FOUND")
    assert (errors.PayloadTooLarge.status_code, errors.PayloadTooLarge.grpc_code) == (413, "RESOURCE_EXHAUSTED")
    assert (errors.Unauthenticated.status_code, errors.Unauthenticated.grpc_code) == (401, "UNAUTHENTICATED")
    assert str(errors.NotFound("no such model")) == "no such model"


# ------------------------------------------------------------------------------------------ data plane
def test_infer_and_refusals(dataplane, frames, tiny_bundle, tiny_weights):
    from cloud_server import CloudDecoder
    from cloud_server.errors import InvalidArgument, NotFound, PayloadTooLarge
    from cloud_server.types import parse_request

    ref = CloudDecoder(tiny_bundle, weights=str(tiny_weights)).decode(frames[0].data)
    r = dataplane.infer(parse_request({"model": MODEL, "bitstream": frames[0].data}))
    assert [c.index for c in r.topk] == [i for i, _, _ in ref.topk] and r.rung == frames[0].rung
    with pytest.raises(NotFound):
        dataplane.infer(parse_request({"model": "x", "bitstream": frames[0].data}))
    with pytest.raises(InvalidArgument, match="missing field"):
        parse_request({"model": MODEL})
    with pytest.raises(InvalidArgument, match="extra|not permitted"):
        parse_request({"model": MODEL, "bitstream": b"x", "rung": 1})
    with pytest.raises(PayloadTooLarge):
        too_big = b"x" * (dataplane.settings.max_bitstream_bytes + 1)
        dataplane.infer(parse_request({"model": MODEL, "bitstream": too_big}))
    with pytest.raises(InvalidArgument, match="bad bitstream"):
        dataplane.infer(parse_request({"model": MODEL, "bitstream": frames[0].data[::-1]}))


def test_concurrent_requests_share_tail_calls(dataplane, frames, tiny_bundle, tiny_weights):
    """Requests in flight together are batched for the tail, and each still gets its own answer."""
    from cloud_server import CloudDecoder
    from cloud_server.types import parse_request

    dec = CloudDecoder(tiny_bundle, weights=str(tiny_weights))
    refs = [dec.decode(f.data) for f in frames]
    results = [None] * len(frames)
    barrier = threading.Barrier(len(frames))

    def call(i):
        barrier.wait()
        results[i] = dataplane.infer(parse_request({"model": MODEL, "bitstream": frames[i].data}))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert max(r.batch_size for r in results) > 1
    for r, ref, f in zip(results, refs, frames):
        assert r.rung == f.rung and [c.index for c in r.topk] == [i for i, _, _ in ref.topk]
        assert [c.score for c in r.topk] == pytest.approx([p for _, _, p in ref.topk], abs=1e-4)


def test_repository_loads_each_backbone_once(tiny_bundle, tiny_weights, tmp_path):
    from cloud_server.repository import ModelRepository
    from cloud_server.settings import BundleSpec
    from shared.bundle import merge_bundles

    other = merge_bundles(tmp_path / "two-rungs", [(tiny_bundle, 0), (tiny_bundle, 2)])
    assert other.bundle_id != tiny_bundle.bundle_id
    s = make_settings(tiny_bundle, tiny_weights, bundles=[BundleSpec(path=tiny_bundle.root),
                                                          BundleSpec(path=other.root, name="two")])
    repo = ModelRepository(s).load()
    try:
        assert sorted(m.name for m in repo.models()) == sorted([MODEL, "two"])
        assert repo.n_backbones == 1
        a, b = repo.get(MODEL), repo.get("two")
        assert a.decoder.model is b.decoder.model and a.batcher is b.batcher
        assert a.codec.resident == [] and b.codec.resident == []  # rungs load on first use
    finally:
        repo.close()
    with pytest.raises(ValueError, match="named"):
        twice = [BundleSpec(path=tiny_bundle.root)] * 2
        ModelRepository(make_settings(tiny_bundle, tiny_weights, bundles=twice)).load()


# ------------------------------------------------------------------------------------------ batching
@pytest.mark.timing
def test_batcher_groups_and_isolates():
    from cloud_server.batching import TailBatcher
    from cloud_server.errors import DeadlineExceeded, Unavailable

    sizes = []

    def fn(x, hw):
        sizes.append(x.shape[0])
        if (x < 0).any():
            raise RuntimeError("tail failed")
        return x * 2

    b = TailBatcher(fn, max_batch=4, max_wait_s=0.5, on_batch=lambda n: None)
    out = [None] * 6
    barrier = threading.Barrier(6)

    def call(i):
        with b.track():
            barrier.wait()
            out[i] = b.run(torch.full((1, 2), float(i)), (8, 8))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time.monotonic() - t0 < 2.0
    for i, r in enumerate(out):
        assert torch.equal(r.output, torch.full((1, 2), 2.0 * i)) and 1 <= r.batch_size <= 4
    assert max(sizes) > 1 and sum(sizes) == 6 and max(sizes) <= 4
    # a lone request does not wait for company
    with b.track():
        t0 = time.monotonic()
        b.run(torch.ones(1, 2), (8, 8))
        assert time.monotonic() - t0 < 0.25
    # a failing tail fails its own batch, not the batcher
    with b.track(), pytest.raises(RuntimeError):
        b.run(-torch.ones(1, 2), (8, 8))
    with b.track():
        assert b.run(torch.ones(1, 2), (8, 8)).output.sum() == 4
    # the deadline ends the wait
    slow = TailBatcher(lambda x, hw: (time.sleep(0.5), x)[1], max_batch=2, max_wait_s=0.0)
    with slow.track(), pytest.raises(DeadlineExceeded):
        slow.run(torch.ones(1, 1), (1, 1), deadline=time.monotonic() + 0.1)
    slow.close()
    b.close()
    with pytest.raises(Unavailable):
        b.run(torch.ones(1, 2), (8, 8))
    # max_batch == 1: the caller runs the tail itself
    direct = TailBatcher(lambda x, hw: x + 1, max_batch=1)
    assert direct._thread is None and direct.run(torch.zeros(1, 1), (1, 1)).output.item() == 1


# ------------------------------------------------------------------------------------------ segmentation
def test_segmentation_answer_is_a_png_mask(dataplane):
    import io

    import numpy as np
    from PIL import Image

    from shared.tasks import get_task, segmentation

    names = dataplane.repository.get(MODEL).decoder.names

    def answer(task, out, topk):  # the answer of each task to the same output
        a = get_task(task).answer(out, names, topk)
        return a.topk, segmentation.mask_png(a.outputs), segmentation.class_pixels(a.outputs)

    logits = torch.zeros(1, 10, 6, 8)
    logits[0, 3, :, :4] = 5.0
    logits[0, 7, :, 4:] = 5.0
    logits[0, 7, 0, :] = 9.0
    top, png, pixels = answer("segmentation", logits, topk=3)
    mask = np.asarray(Image.open(io.BytesIO(png)))
    assert mask.shape == (6, 8) and set(np.unique(mask)) == {3, 7}
    assert [i for i, _, _ in top] == [7, 3] and sum(s for _, _, s in top) == pytest.approx(1.0)
    assert len(pixels) == 10 and pixels[3] == 20 and pixels[7] == 28 and sum(pixels) == 48
    assert answer("classification", logits[:, :, 0, 0], topk=3)[1:] == (None, None)  # classification: no mask, no counts


def test_no_bundle_named_serves_the_embedded_ladders(tiny_bundle, tiny_weights, monkeypatch):
    import cloud_server.repository as repository
    from shared.bundle import EMBEDDED_BUNDLES, embedded_bundle_paths

    assert [p.name for p in embedded_bundle_paths()] == list(EMBEDDED_BUNDLES), "both ladders ship"
    monkeypatch.setattr(repository, "embedded_bundle_paths", lambda: [tiny_bundle.root])
    repo = repository.ModelRepository(make_settings(tiny_bundle, tiny_weights, bundles=[])).load()
    try:
        assert [m.name for m in repo.models()] == [MODEL] and repo.get(MODEL).bundle.bundle_id == tiny_bundle.bundle_id
    finally:
        repo.close()


def test_variable_rate_network_is_its_splits_default_model(tiny_bundle, vr_bundle, tiny_weights):
    """A ladder and a variable-rate network of one split served together: the variable-rate network takes the
    split's name, the ladder moves to ``-ladder``, the name earlier versions gave the variable-rate network still
    answers, and explicit names win over the rule."""
    from cloud_server.errors import NotFound
    from cloud_server.repository import ModelRepository
    from cloud_server.settings import BundleSpec

    assert tiny_bundle.served_name == vr_bundle.served_name == MODEL
    specs = [BundleSpec(path=tiny_bundle.root), BundleSpec(path=vr_bundle.root)]
    repo = ModelRepository(make_settings(tiny_bundle, tiny_weights, bundles=specs)).load()
    try:
        assert sorted(m.name for m in repo.models()) == sorted([MODEL, MODEL + "-ladder"])
        assert repo.get(MODEL).bundle.bundle_id == vr_bundle.bundle_id
        assert repo.get(MODEL + "-ladder").bundle.bundle_id == tiny_bundle.bundle_id
        assert repo.get(MODEL + "-vr") is repo.get(MODEL)
        with pytest.raises(NotFound, match="not served"):
            repo.get(MODEL + "-ladder-vr")
    finally:
        repo.close()
    named = [BundleSpec(path=tiny_bundle.root, name="mine"), BundleSpec(path=vr_bundle.root)]
    repo = ModelRepository(make_settings(tiny_bundle, tiny_weights, bundles=named)).load()
    try:
        assert sorted(m.name for m in repo.models()) == sorted(["mine", MODEL])
    finally:
        repo.close()
    alone = ModelRepository(make_settings(tiny_bundle, tiny_weights, bundles=[BundleSpec(path=tiny_bundle.root)]))
    try:  # a ladder served alone keeps the split's name
        assert [m.name for m in alone.load().models()] == [MODEL]
    finally:
        alone.close()
