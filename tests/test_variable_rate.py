"""One variable-rate bottleneck (shared/codec/variable_rate.py): levels in the bitstream, bit-exact decoding,
per-image rate control and stream rate control (shared/rate/), on the torch and the ONNX edge."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from shared.bitstream import VERSION, VERSION_LEVEL, BitstreamError, Header, pack, unpack
from shared.pipeline import LadderCodec
from shared.codec.levels import LevelCoder
from shared.rate import LinkRateTracker, StreamRateController, choose_level, encode_within

from conftest import VR_LEVELS as LEVELS
from linksim import SimulatedLink


@pytest.fixture(scope="module")
def features(tiny_model, heldout_batch):
    with torch.no_grad():
        return tiny_model.head(heldout_batch)


def test_one_network_for_every_level(vr_bundle):
    assert len(vr_bundle.rungs) == 1 and vr_bundle.config.levels == LEVELS
    assert vr_bundle.config.rate_model == "vr-hyperprior"
    vr = vr_bundle.manifest["variable_rate"]
    assert vr["levels"] == list(LEVELS) and vr["lambdas"] == [0.5, 16]
    # train measured the curve: one point per level measured, rates rising with the level, real bytes
    curve = vr["curve"]
    assert [p["level"] for p in curve] == sorted(p["level"] for p in curve) and curve[-1]["level"] == LEVELS[1]
    assert curve[-1]["bpp"] > curve[0]["bpp"] > 0
    assert vr_bundle.rungs[0].bpp == curve[-1]["bpp"]  # the rung carries the finest level's figures


def test_every_level_decodes_and_rate_grows_with_level(vr_bundle, features, heldout_batch):
    codec = LadderCodec(vr_bundle)
    hw = tuple(heldout_batch.shape[-2:])
    sizes = []
    for q in range(LEVELS[0], LEVELS[1] + 1):
        msgs = codec.encode(features, hw, level=q)
        for m in msgs:
            hdr, _ = unpack(m)
            assert m[2] == VERSION_LEVEL and hdr.level == q
            feat, hdr2 = codec.decode(m)  # raises on a symbol-checksum mismatch
            assert feat.shape[1:] == features.shape[1:]
        sizes.append(np.mean([len(m) for m in msgs]))
    assert sizes[-1] > 1.5 * sizes[0], sizes  # finer steps cost bits
    assert all(b >= a - 2 for a, b in zip(sizes, sizes[1:])), sizes  # and the rate rises with the level


def test_level_checks(vr_bundle, tiny_bundle, features, heldout_batch):
    vr, ladder = LadderCodec(vr_bundle), LadderCodec(tiny_bundle)
    hw = tuple(heldout_batch.shape[-2:])
    with pytest.raises(ValueError, match="variable-rate"):
        vr.encode(features[:1], hw)
    with pytest.raises(ValueError, match="outside"):
        vr.encode(features[:1], hw, level=LEVELS[1] + 1)
    with pytest.raises(ValueError, match="ladder"):
        ladder.encode(features[:1], hw, 0, level=3)
    (m,) = ladder.encode(features[:1], hw, 0)
    assert m[2] == VERSION  # ladders keep writing version 1, byte for byte
    hdr, payloads = unpack(m)
    forged = pack(Header(hdr.bundle_id, hdr.split_tag, 0, hdr.input_hw, hdr.y_hw, hdr.side_hw, hdr.symbols_crc,
                         level=3), payloads)
    with pytest.raises(BitstreamError, match="ladder"):
        ladder.decode(forged)
    (v,) = vr.encode(features[:1], hw, level=4)
    hdr, payloads = unpack(v)
    for bad, match in ((None, "no quality level"), (LEVELS[1] + 1, "outside")):
        msg = pack(Header(hdr.bundle_id, hdr.split_tag, 0, hdr.input_hw, hdr.y_hw, hdr.side_hw, hdr.symbols_crc,
                          level=bad), payloads)
        with pytest.raises(BitstreamError, match=match):
            vr.decode(msg)


def test_level_shifts_integer_indexes_exactly(vr_bundle, features):
    """The level enters only as an integer shift of the integer hyper-decoder's table index."""
    net = LadderCodec(vr_bundle).rung(0)
    rate = net.rate
    y = net._analysis(features[:1])
    z_sym = rate.side_symbols(y)
    idx, _ = rate.coding_params(z_sym, y.shape[-2:])
    table = rate.scale_table.double()
    for q in (LEVELS[0], 5, LEVELS[1]):
        shifted = rate.shifted(idx, q)
        assert shifted.dtype in (torch.int32, torch.int64)
        assert torch.equal(shifted, (idx + q).clamp(0, len(table) - 1))
        # dividing a table scale by the step r**-q lands on the table scale q entries up, to float rounding
        inner = (idx + q >= 0) & (idx + q < len(table))
        scaled = table[idx[inner].long()] / rate.step(q)
        assert torch.allclose(scaled, table[shifted[inner].long()], rtol=1e-5)  # the table is float32


def test_rate_control_meets_each_budget(vr_bundle, features, heldout_batch):
    codec = LadderCodec(vr_bundle)
    hw = tuple(heldout_batch.shape[-2:])
    sizes = [len(m) for m in codec.encode(features, hw, level=LEVELS[1])]
    smallest = max(len(m) for m in codec.encode(features, hw, level=LEVELS[0]))
    for budget in np.linspace(smallest, max(sizes), 5):
        choices = codec.encode_variable(features, hw, max_bytes=float(budget))
        for i, c in enumerate(choices):
            assert len(c.message) <= budget and c.fits
            assert 1 <= c.trials <= 2
            assert abs(c.predicted - len(c.message)) <= 12  # the prediction is a code length, within bytes
            if c.level < LEVELS[1] and c.trials == 1:  # the finest level predicted to fit: one finer is
                (finer,) = codec.encode(features[i : i + 1], hw, level=c.level + 1)  # over, or within the error
                assert len(finer) > budget - 12
            codec.decode(c.message)
    # a budget below the coarsest level's size sends the coarsest level and says it does not fit
    (c,) = codec.encode_variable(features[:1], hw, max_bytes=8)
    assert c.level == LEVELS[0] and not c.fits


def test_numpy_coder_writes_the_torch_coders_bytes(vr_bundle, features, heldout_batch):
    codec = LadderCodec(vr_bundle)
    hw = tuple(heldout_batch.shape[-2:])
    for q in (LEVELS[0], 7, LEVELS[1]):
        direct = codec.encode(features, hw, level=q)
        via = [c.message for c in codec.encode_variable(features, hw, level=q)]
        assert direct == via


def test_onnx_edge_encodes_variable_rate(vr_bundle, features, heldout_batch, tiny_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    from edge_client.runtime import OnnxEdgeEncoder
    from shared.edge_export import export_edge

    pkg = export_edge(vr_bundle, tmp_path / "pkg", weights=str(tiny_weights))
    enc = OnnxEdgeEncoder(pkg)
    codec = LadderCodec(vr_bundle)
    hw = tuple(heldout_batch.shape[-2:])
    x = heldout_batch.numpy()
    same = 0
    for i in range(len(x)):
        for q in (LEVELS[0], 9, LEVELS[1]):
            c = enc.encode_variable(x[i : i + 1], level=q)
            (ref,) = codec.encode(features[i : i + 1], hw, level=q)
            codec.decode(c.message)  # the cloud decodes the ONNX edge's message: checksums agree
            same += c.message == ref
        budget = 0.8 * len(ref)
        c = enc.encode_variable(x[i : i + 1], max_bytes=budget)
        assert len(c.message) <= budget or c.level == LEVELS[0]
    assert same >= 0.9 * 3 * len(x)


class _FakeCoder(LevelCoder):
    """A frame whose y payload at level q is ``complexity * 1.09**q`` bytes (predicted exactly)."""

    def __init__(self, complexity: float, levels=(0, 40)):
        self.levels, self.c, self.y = levels, complexity, np.zeros(1)

    def predict_bytes(self, qs=None):
        qs = np.arange(self.levels[0], self.levels[1] + 1) if qs is None else np.asarray(qs)
        return self.c * 1.09 ** qs

    def encode(self, q):
        return bytes(int(self.c * 1.09**q)), np.zeros(1)


def test_stream_controller_holds_every_window():
    rng = np.random.default_rng(0)
    # a camera sequence: complexity drifting slowly, scene cuts every 30 frames, frame-to-frame changes
    c = np.exp(np.cumsum(rng.normal(0, 0.02, 300)) + np.repeat(rng.normal(0, 0.3, 10), 30) + rng.normal(0, 0.3, 300))
    ctl = StreamRateController(kbit_per_s=200, fps=15, levels=(0, 40))
    sent = []
    for k in c:
        ch = ctl.choose(_FakeCoder(300 * k), lambda q, y, s: b"h" * 40 + y)
        sent.append(len(ch.message))
    target = 200_000 / 15 / 8
    windows = np.convolve(sent, np.ones(30), "valid") / 30
    assert np.all(np.abs(windows / target - 1) <= 0.05), (windows.min() / target, windows.max() / target)
    # inside the windows, harder frames get more bytes than their neighbours (not a constant size)
    detrend = lambda v: v - np.convolve(v, np.ones(9) / 9, "same")  # noqa: E731
    assert np.corrcoef(detrend(np.log(c))[5:-5], detrend(np.log(sent))[5:-5])[0, 1] > 0.5
    assert np.std(sent) / np.mean(sent) > 0.1


def _camera(n: int, seed: int = 0) -> np.ndarray:
    """Frame complexities of a camera sequence: slow drift, a scene cut every 30 frames, frame-to-frame noise."""
    rng = np.random.default_rng(seed)
    return np.exp(np.cumsum(rng.normal(0, 0.02, n)) + np.repeat(rng.normal(0, 0.3, n // 30 + 1), 30)[:n]
                  + rng.normal(0, 0.3, n))


def _over_link(capacity, ceiling: float, track: bool, n: int = 600, fps: float = 15, seed: int = 0):
    c = _camera(n, seed)
    ctl = StreamRateController(ceiling, fps, (0, 40))
    encode = lambda k: len(ctl.choose(_FakeCoder(300 * c[k]), lambda q, y, s: b"h" * 40 + y).message)  # noqa: E731
    run = SimulatedLink(capacity, rtt_s=0.03).stream(n, fps, encode, ctl, LinkRateTracker(ceiling) if track else None)
    kbps = np.convolve(run[:, 0], np.ones(30), "valid") / 30 * 8e-3 * fps  # each 30-frame window
    return run, kbps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_link_tracker_follows_a_link_that_changes(seed):
    """A link of 400, then 150, then 300 kbit/s under a 500 kbit/s hint: the sent rate follows the link and
    its queue drains; with the hint alone the queue grows without bound."""
    fps, cap = 15, lambda t: 400 if t < 10 else (150 if t < 25 else 300)  # noqa: E731
    run, kbps = _over_link(cap, 500, track=True, seed=seed)
    t = np.arange(len(kbps)) / fps  # the start of each window
    steady = [(4, 10), (16, 25), (31, 40)]  # from 6 s after a change (a drop's queue drains first), to the next one
    for a, b in steady:
        w = kbps[(t >= a) & (t + 2 <= b)] / cap(a)
        assert 0.6 <= w.min() and w.max() <= 1.1, (a, w.min(), w.max())  # a window over the link: a queue
        queue = run[int(a * fps):int(b * fps), 1] - 0.03
        assert np.nanmedian(queue) < 0.25 and np.nanmax(queue) < 0.6, (a, np.nanmedian(queue), np.nanmax(queue))
    assert np.nanmax(run[:, 1]) < 3.0
    assert 0.7 * 300 < run[-1, 2] < 300 and run[int(14 * fps), 2] < 150  # the rate aimed at followed the link
    fixed, _ = _over_link(cap, 500, track=False)
    assert fixed[int(25 * fps) - 1, 1] > 5.0  # the hint alone: seconds of queue by the end of the slow part


def test_stream_controller_skips_frames_below_its_coarsest_level():
    """A link that carries half of the coarsest level at this fps: every other frame or so is skipped, and
    the bytes sent stay within the link's, where sending every frame at the coarsest level would double them."""
    ctl = StreamRateController(kbit_per_s=8, fps=10, levels=(0, 40))  # 100 bytes per frame
    sizes = [0 if ctl.skip() else len(ctl.choose(_FakeCoder(160.0), lambda q, y, s: b"h" * 40 + y).message)
             for _ in range(300)]  # the coarsest message: 200 bytes
    sent = [n for n in sizes if n]
    assert min(sent) == 200 and 0.4 < len(sent) / 300 < 0.6
    assert sum(sizes) <= 300 * 100 + 0.7 * 100 + 200
    assert not StreamRateController(kbit_per_s=200, fps=10, levels=(0, 40)).skip()


def test_link_tracker_holds_the_hint_on_a_fast_link():
    run, kbps = _over_link(lambda t: 5000, 200, track=True)
    assert np.all(run[:, 2] == 200) and np.all(np.abs(kbps / 200 - 1) <= 0.05)
    with pytest.raises(ValueError):
        LinkRateTracker(math.inf)


def test_choose_level_arguments():
    coder = _FakeCoder(10.0)
    with pytest.raises(ValueError, match="at most one"):
        choose_level(coder, lambda q, y, s: y, level=3, max_bytes=100)
    with pytest.raises(ValueError, match="outside"):
        choose_level(coder, lambda q, y, s: y, level=99)
    assert choose_level(coder, lambda q, y, s: y).level == 40
    c = encode_within(coder, 100.0, lambda q, y, s: b"h" * 10 + y)
    assert len(c.message) <= 100 and len(b"h" * 10 + coder.encode(c.level + 1)[0]) > 100
    with pytest.raises(ValueError):
        StreamRateController(kbit_per_s=math.nan, fps=15, levels=(0, 4))


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_served_variable_rate_bundle(vr_bundle, tiny_weights, heldout_items, rest):
    """Both transports: metadata reports the level range and the measured curve; each message of the edge client
    fits its hint; a link-rate stream is rate-controlled; the answers decode at every level."""
    from _service import running_server

    from edge_client import EdgeClient
    from shared.hint import BitrateHint

    images = [p for p, _ in heldout_items[:6]]
    curve = vr_bundle.manifest["variable_rate"]["curve"]
    with running_server(vr_bundle, tiny_weights) as server:
        port = server.http_port if rest else server.grpc_port
        with EdgeClient(f"127.0.0.1:{port}", bundle=vr_bundle.root, weights=str(tiny_weights), rest=rest) as c:
            (meta,) = c.transport.models(5.0)
            vr = meta["variable_rate"]
            assert tuple(vr["levels"]) == LEVELS
            assert [p["level"] for p in vr["curve"]] == [p["level"] for p in curve]
            assert [p["bpp"] for p in vr["curve"]] == pytest.approx([p["bpp"] for p in curve])
            mid = curve[len(curve) // 2]["bpp"]
            for hint in (curve[0]["bpp"] * 1.2, mid, curve[-1]["bpp"] * 2):
                for img in images[:3]:
                    r = c.infer(img, bitrate=hint)
                    assert r.ok and r.rung == 0 and r.level is not None
                    assert r.bpp <= hint
            # a link rate: one controller for the sequence, the rate held on average
            kbps = mid * 32 * 32 * 10 / 1000
            out = list(c.stream(images * 3, hint=BitrateHint(kbit_per_s=kbps, fps=10)))
            assert all(r.ok for r in out)
            sent = np.mean([r.n_bytes for r in out]) * 8 * 10 / 1000
            assert sent == pytest.approx(kbps, rel=0.1)
            assert all(r.level is not None for r in out)


@pytest.mark.parametrize("q", [LEVELS[0], 9, LEVELS[1]])
def test_levels_decode_identically_under_perturbations(vr_bundle, features, q):
    """What another device's arithmetic would change (TF32, threads, float32 sums, memory layout) moves no table
    index at any level: the level is an integer added to the integer hyper-decoder's index, so the decoder's
    symbols equal the encoder's under every perturbation (tests/perturb.py)."""
    from perturb import PERTURBATIONS

    from shared.codec.compressai_adapter import rans_decode, rans_encode

    rate = LadderCodec(vr_bundle).rung(0).rate
    net = LadderCodec(vr_bundle).rung(0)
    gc = rate.gaussian_conditional
    for i in range(features.shape[0]):
        y = net._analysis(features[i : i + 1])
        z_sym = rate.side_symbols(y)
        idx0, means = rate.h_s.exact(z_sym)
        idx0 = idx0[..., : y.shape[-2], : y.shape[-1]]
        means = means[..., : y.shape[-2], : y.shape[-1]]
        sym = rate.symbols(y, means, q)
        payload = rans_encode(gc, rate._gc_tables, sym, rate.shifted(idx0, q))
        for name, conv in PERTURBATIONS.items():
            idx, _ = rate.h_s.exact(z_sym, conv)
            idx = rate.shifted(idx[..., : y.shape[-2], : y.shape[-1]], q)
            assert torch.equal(idx, rate.shifted(idx0, q)), name
            assert torch.equal(rans_decode(gc, rate._gc_tables, payload, idx), sym), name


def test_edge_command_streams_a_variable_rate_bundle_at_a_link_rate(vr_bundle, tiny_weights, heldout_items, capsys):
    """``splitinfer edge --stream --kbps K --fps F`` with a variable-rate bundle: each row shows the level chosen,
    and the command says what the link carried against K."""
    from _service import running_server

    from splitinfer.cli import main

    images = [str(p) for p, _ in heldout_items[:6]] * 2
    curve = vr_bundle.manifest["variable_rate"]["curve"]
    kbps = curve[len(curve) // 2]["bpp"] * 32 * 32 * 10 / 1000
    with running_server(vr_bundle, tiny_weights) as server:
        assert main(["edge", "--server", f"127.0.0.1:{server.grpc_port}", "--bundle", str(vr_bundle.root),
                     "--weights", str(tiny_weights), "--stream", "--kbps", f"{kbps:.4f}", "--fps", "10", *images]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("img_")]
    assert len(rows) == len(images) and all(" q" in r for r in rows)  # the level, e.g. "q8", in place of the rung
    sent = float(out.split("sent ")[1].split(" kbit/s")[0])
    assert sent == pytest.approx(kbps, rel=0.15) and f"over {len(images)} frames" in out


def test_edge_command_follows_the_link(vr_bundle, tiny_weights, heldout_items, capsys):
    """``--track-link``: frames leave at --fps and each answer says the rate aimed at, never above --kbps (on
    loopback the link is fast: the hint holds); without --stream it is a one-line usage error."""
    import json

    from _service import running_server

    from splitinfer.cli import main

    images = [str(p) for p, _ in heldout_items[:4]] * 2
    curve = vr_bundle.manifest["variable_rate"]["curve"]
    kbps = round(curve[len(curve) // 2]["bpp"] * 32 * 32 * 20 / 1000, 3)
    with running_server(vr_bundle, tiny_weights) as server:
        argv = ["edge", "--server", f"127.0.0.1:{server.grpc_port}", "--bundle", str(vr_bundle.root), "--weights",
                str(tiny_weights), "--kbps", str(kbps), "--fps", "20", "--track-link", *images]
        t0 = time.perf_counter()
        assert main(argv[:1] + ["--stream", "--json"] + argv[1:]) == 0
        assert time.perf_counter() - t0 >= (len(images) - 1) / 20  # paced at the camera's rate
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert len(rows) == len(images) and all(r["ok"] and 0 < r["target_kbps"] <= kbps for r in rows)
        assert main(argv[:1] + ["--stream"] + argv[1:]) == 0
        assert "following the link, last aimed at" in capsys.readouterr().out
        assert main(argv) == 2 and "--track-link needs --stream" in capsys.readouterr().err


def test_info_shows_the_measured_curve(vr_bundle, capsys):
    from splitinfer.cli import main

    assert main(["info", str(vr_bundle.root)]) == 0
    out = capsys.readouterr().out
    levels = [p["level"] for p in vr_bundle.manifest["variable_rate"]["curve"]]
    assert all(f" q{q} " in out for q in levels) and f"quality levels {LEVELS[0]}..{LEVELS[1]}" in out


def test_training_starts_from_a_network_of_the_same_shape(vr_bundle):
    """A variable-rate network continues on a wider level range, or from a ladder rung; other shapes are refused."""
    from dataclasses import replace

    from shared.training.recipe import _can_start_from

    vr = vr_bundle.config
    assert _can_start_from(vr, vr)
    assert _can_start_from(vr, replace(vr, levels=(vr.levels[0] - 4, vr.levels[1])))
    assert _can_start_from(replace(vr, rate_model="hyperprior", levels=None), vr)
    assert not _can_start_from(vr, replace(vr, latent=vr.latent * 2))
    assert not _can_start_from(vr, replace(vr, rate_model="hyperprior", levels=None))  # a level range dropped
