"""The integer hyper-decoder three ways: compiled (``hyperdec.c``), numpy (the edge's fallback) and torch (the
cloud's ``IntHyperSynthesis.exact``) must give identical table indexes and means.

On every rung of every embedded bundle (the tiny one trained in the tests: ``test_edge_runtime.py``), messages at every rung and quality level
byte-identical with either edge implementation, and on random layers (Hypothesis) up to the edges: sums at the
int32 and int16 limits of the compiled fast path, multipliers and biases at the 2**53 limit of exactness (and just
past it, refused alike by both edge implementations). The compiled one is required here (``make venv`` builds
it): a checkout where it does not build fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from shared.codec import integer_numpy as hs
from shared.codec.integer_numpy import EXACT_LIMIT, IN_MAX, SHIFT, IntLayer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "shared" / "assets" / "samples"
ROUND = 1 << (SHIFT - 1)


def compiled():
    assert "c" in hs.IMPLEMENTATIONS, f"the compiled integer h_s did not load: {hs.COMPILED_ERROR}"
    return hs.IMPLEMENTATIONS["c"]


def _outcome(fn):
    try:
        idx, means = fn()
        return "ok", idx, means
    except ValueError as e:
        return "ValueError", str(e), None


def _same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] != "ok":
        return a[1] == b[1]
    same_means = (a[2] is None and b[2] is None) or (a[2].dtype == b[2].dtype and np.array_equal(a[2], b[2]))
    return a[1].dtype == np.int64 and np.array_equal(a[1], b[1]) and same_means  # (the cloud's are int32)


def _torch_reference(layers, z, levels, means, y_hw):
    """``IntHyperSynthesis.exact`` itself, its convolutions replaced by these layers."""
    from torch import nn

    from shared.codec.integer import IntConv2d, IntHyperSynthesis

    net = IntHyperSynthesis(4, 2, 2, means=means, levels=levels)
    convs = []
    for layer in layers:
        o, c, k, _ = layer.w.shape
        conv = IntConv2d(c, o, k, 0, 0, layer.lo, layer.hi)
        conv.w_int.copy_(torch.from_numpy(layer.w))
        conv.mult.copy_(torch.from_numpy(layer.mult))
        conv.bias_int.copy_(torch.from_numpy(layer.bias))
        convs.append(conv)
    net.convs, net.ups = nn.ModuleList(convs), [layer.up for layer in layers]
    idx, m = net.exact(torch.from_numpy(z))
    return idx[..., : y_hw[0], : y_hw[1]].numpy(), (m[..., : y_hw[0], : y_hw[1]].numpy() if m is not None else None)


# ------------------------------------------------------------------------------ the shipped networks
def test_every_rung_of_every_bundle_gives_the_same_indexes_and_means_three_ways():
    """z symbols over the clipped range, beyond it, at its ends, and all zeros; crops as odd inputs give."""
    rng = np.random.default_rng(1)
    checked = set()
    from shared.bundle import embedded_bundle_paths, load_bundle

    for bundle in [load_bundle(p) for p in embedded_bundle_paths()]:
        for r in bundle.rungs:
            rate = bundle.load_rung(r.index).rate
            h = rate.h_s
            layers = [IntLayer(c.w_int.numpy(), c.mult.numpy(), c.bias_int.numpy(), c.lo, c.hi, u)
                      for c, u in zip(h.convs, h.ups)]
            for z_hw, scale in (((3, 4), 3), ((7, 7), 40), ((2, 2), 300), ((5, 3), 0), ((4, 4), None)):
                shape = (1, rate.hyper, *z_hw)
                z = (rng.choice([-IN_MAX - 1, -IN_MAX, IN_MAX, IN_MAX + 1], shape) if scale is None
                     else np.rint(rng.normal(0, 1, shape) * scale)).astype(np.int64)
                for y_hw in ((z_hw[0] * rate.hyper_stride - 1, z_hw[1] * rate.hyper_stride),
                             (z_hw[0] * rate.hyper_stride, z_hw[1] * rate.hyper_stride)):
                    idx_t, means_t = rate.coding_params(torch.from_numpy(z).int(), y_hw)
                    ref = ("ok", idx_t.numpy(), None if means_t is None else means_t.numpy())
                    for name, fn in hs.IMPLEMENTATIONS.items():
                        got = _outcome(lambda: fn(layers, z, h.levels, h.means, y_hw))
                        assert _same(got, ref), (bundle.bundle_id, r.index, name, z_hw, scale)
            checked.add((bundle.bundle_id, r.index))
    assert "c" in hs.IMPLEMENTATIONS and len(checked) == 7 + 4 + 1


def test_messages_at_every_rung_and_level_are_byte_identical_with_either_edge_h_s():
    """The whole torch-free edge on the sample images: every ladder rung and every quality level of the
    variable-rate bundle, the compiled h_s against the numpy one."""
    from edge_client import OnnxEdgeEncoder, find_package
    from shared.bundle import embedded_bundle_paths, load_bundle
    from shared.data import scan_images

    compiled()
    images = [p for p, _ in scan_images(SAMPLES, labels=False)][:3]
    pairs = 0
    for path in embedded_bundle_paths():
        enc = OnnxEdgeEncoder(find_package(load_bundle(path)), threads=1)
        for img in images:
            x = enc.preprocess(img)
            if enc.levels is not None:
                points = range(enc.levels[0], enc.levels[1] + 1)
                encode = lambda q: enc.encode_variable(x, level=q).message  # noqa: E731
            else:
                points = range(len(enc.bundle.rungs))
                encode = lambda r: enc.encode_array(x, r)  # noqa: E731
            for q in points:
                with hs.using("c"):
                    a = encode(q)
                with hs.using("numpy"):
                    b = encode(q)
                assert a == b, (path.name, img.name, q)
                pairs += 1
    assert pairs >= 3 * (7 + 4 + 45)


# ------------------------------------------------------------------------------------- random layers
def _layer(data, c_in, in_max, edge):
    k = data.draw(st.sampled_from([1, 3, 5]))
    up = data.draw(st.sampled_from([1, 1, 2]))
    o = up * up * data.draw(st.integers(1, 3))
    wmax = data.draw(st.sampled_from([1, 127]))
    w = np.array(data.draw(st.lists(st.integers(-wmax - (wmax == 127), wmax), min_size=o * c_in * k * k,
                                    max_size=o * c_in * k * k)), dtype=np.int8).reshape(o, c_in, k, k)
    l1 = np.abs(w.astype(np.int64)).sum(axis=(1, 2, 3))
    bias = np.array(data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=o, max_size=o)), dtype=np.int64)
    if edge:  # multipliers at the exact range's limit: the largest one that fits, or one more (refused)
        room = [(EXACT_LIMIT - 1 - ROUND - abs(int(b))) // max(1, int(a) * in_max) for a, b in zip(l1, bias)]
        mult = np.array([r + data.draw(st.sampled_from([0, 0, 0, 1])) for r in room], dtype=np.int64)
        mult *= np.array(data.draw(st.lists(st.sampled_from([-1, 1]), min_size=o, max_size=o)), dtype=np.int64)
    else:
        mult = np.array(data.draw(st.lists(st.integers(-(2**24), 2**24), min_size=o, max_size=o)), dtype=np.int64)
    clip = data.draw(st.sampled_from(["act", "wide", "int16", "none"]))
    lo, hi = {"act": (0, 255), "wide": (-(2**20), 2**20), "int16": (-32768, 32767), "none": (None, None)}[clip]
    return IntLayer(w, mult, bias, lo, hi, up)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_layers_give_the_same_result_three_ways(data):
    """Random small networks: any weights, multipliers, biases and clips; z beyond the clip. Inside the exact range
    all three agree; past it both edge implementations refuse alike (torch is not exact there)."""
    c = data.draw(st.integers(1, 4))
    n_layers = data.draw(st.integers(1, 3))
    edge = data.draw(st.booleans())
    layers, c_in, bound = [], c, IN_MAX
    for _ in range(n_layers):
        layer = _layer(data, c_in, bound, edge)
        layers.append(layer)
        c_in, bound = layer.w.shape[0] // layer.up**2, layer.bound
    if layers[-1].w.shape[0] // layers[-1].up ** 2 % 2:  # an odd last layer: no means
        means = False
    else:
        means = data.draw(st.booleans())
    zh, zw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    z = np.array(data.draw(st.lists(st.integers(-300, 300), min_size=c * zh * zw, max_size=c * zh * zw)),
                 dtype=np.int64).reshape(1, c, zh, zw)
    scale = int(np.prod([layer.up for layer in layers]))
    y_hw = (zh * scale - data.draw(st.integers(0, 1)), zw * scale)
    levels = data.draw(st.sampled_from([1, 64, 2**40]))
    a = _outcome(lambda: hs.numpy_hyper_synthesis(layers, z, levels, means, y_hw))
    b = _outcome(lambda: compiled()(layers, z, levels, means, y_hw))
    assert _same(a, b), (a[0], b[0], a[1] if a[0] != "ok" else "", b[1] if b[0] != "ok" else "")
    if a[0] == "ok":
        assert _same(("ok", *_torch_reference(layers, z, levels, means, y_hw)), a)
    else:
        assert "exact" in a[1]


@pytest.mark.parametrize("l1_extra", [0, 1])
@pytest.mark.parametrize("clip", [32767, 32768])
def test_the_compiled_fast_path_limits(l1_extra, clip):
    """Inputs at 32767 (the int16 limit) or 32768, and a channel whose sums reach 2**31 - 2 (the int32 limit) or
    just past it: the compiled h_s switches between its int16/int32 and its int64 sums exactly there, with the same
    results as numpy and torch (a wrong switch would overflow)."""
    c = 64
    # layer 1: each z channel scaled to clip (z = 127 -> clip exactly), clipped at +-clip
    first = IntLayer(np.eye(c, dtype=np.int8).reshape(c, c, 1, 1), np.full(c, 258 << SHIFT),
                     np.full(c, (clip - 127 * 258) << SHIFT), -clip, clip)
    # layer 2: channel 0's weights sum to 65,538 (+ l1_extra); 65,538 * 32,767 = 2**31 - 2
    w = np.zeros((2, c, 3, 3), np.int8)
    w[0].flat[:516] = 127
    w[0].flat[516] = 6 + l1_extra
    w[1] = np.random.default_rng(0).integers(-128, 128, (c, 3, 3))
    second = IntLayer(w, np.array([1 << 20, -5]), np.array([-7, 11]), None, None)
    z = np.full((1, c, 4, 4), 127, np.int64)
    z[0, :, :, 3] = np.random.default_rng(1).integers(-200, 200, (c, 4))  # outside pixel (1, 1)'s neighbourhood
    layers = [first, second]
    ref = _torch_reference(layers, z, 2**40, True, (4, 4))
    for name, fn in hs.IMPLEMENTATIONS.items():
        assert _same(_outcome(lambda: fn(layers, z, 2**40, True, (4, 4))), ("ok", *ref)), name
    t = (((65538 + l1_extra) * clip << 20) - 7 + ROUND) >> SHIFT  # pixel (1, 1) sums every input at the clip
    assert ref[0][0, 0, 1, 1] == (t + 128) >> 8


def test_bad_layers_are_refused_alike():
    w = np.ones((4, 2, 3, 3), np.int8)
    ok = IntLayer(w, np.ones(4), np.zeros(4), 0, 255)
    z = np.zeros((1, 2, 2, 2), np.int64)
    with pytest.raises(ValueError, match="odd square"):
        IntLayer(np.ones((4, 2, 2, 2), np.int8), np.ones(4), np.zeros(4), 0, 255)
    with pytest.raises(ValueError, match="pixel shuffle"):
        IntLayer(w, np.ones(4), np.zeros(4), 0, 255, up=3)
    with pytest.raises(ValueError, match="clip"):
        IntLayer(w, np.ones(4), np.zeros(4), 0, 2**53)
    for fn in hs.IMPLEMENTATIONS.values():
        with pytest.raises(ValueError, match="layer 1 takes 2 channels, gets 4"):
            fn([ok, ok], z, 64, True, (2, 2))
        with pytest.raises(ValueError, match="do not split"):
            fn([IntLayer(np.ones((3, 2, 1, 1), np.int8), np.ones(3), np.zeros(3), 0, 255)], z, 64, True, (2, 2))
        with pytest.raises(ValueError, match="exact"):
            fn([IntLayer(w, np.full(4, 2**45), np.zeros(4), 0, 255)], z, 64, True, (2, 2))
        with pytest.raises(ValueError, match="levels"):
            fn([ok], z, 0, True, (2, 2))


def test_the_compiled_h_s_is_safe_from_several_threads():
    """Each thread has its own work buffer; different shapes make them grow."""
    layers = [IntLayer(np.ones((8, 2, 3, 3), np.int8), np.full(8, 3 << 20), np.zeros(8, np.int64), 0, 255, 2),
              IntLayer(np.ones((4, 2, 1, 1), np.int8), np.ones(4), np.zeros(4, np.int64), None, None)]
    rng = np.random.default_rng(0)
    zs = [rng.integers(-9, 10, (1, 2, s, s)) for s in (1, 3, 6, 9)]
    want = [hs.numpy_hyper_synthesis(layers, z, 64, True, (2 * z.shape[2], 2 * z.shape[3])) for z in zs]
    bad = []

    def run(offset):
        for i in range(40):
            j = (i + offset) % len(zs)
            got = compiled()(layers, zs[j], 64, True, (2 * zs[j].shape[2], 2 * zs[j].shape[3]))
            if not (np.array_equal(got[0], want[j][0]) and np.array_equal(got[1], want[j][1])):
                bad.append(j)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


# ------------------------------------------------------------------------------------------ the choice
def _choice(env):
    code = "import json; from shared.codec import integer_numpy as h; print(json.dumps([h.implementation(), h.COMPILED_ERROR]))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


def test_the_compiled_h_s_is_chosen_and_numpy_takes_over_where_it_cannot_load(tmp_path):
    assert hs.implementation() == "c" or os.environ.get(hs.HS_ENV) == "numpy"
    assert json.loads(_choice({hs.HS_ENV: "numpy"}).stdout)[0] == "numpy"
    from shared.codec.rans_compiled import LIB_ENV

    bad = tmp_path / "_ranscoder.so"
    bad.write_bytes(b"\x7fELF not a library")
    name, why = json.loads(_choice({LIB_ENV: str(bad), hs.HS_ENV: ""}).stdout)
    assert name == "numpy" and "_ranscoder.so" in why
    out = _choice({LIB_ENV: str(bad), hs.HS_ENV: "c"})
    assert out.returncode != 0 and "cannot load" in out.stderr
    assert _choice({hs.HS_ENV: "fortran"}).returncode != 0


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler")
def test_a_library_of_the_coder_alone_serves_the_coder_and_numpy_the_h_s(tmp_path):
    """A library built from ranscoder.c alone (an older build, a bare `cc` in an image): the compiled rANS coder
    still loads, the h_s says why it is numpy."""
    lib = tmp_path / "_ranscoder.so"
    subprocess.run(["cc", "-O2", "-std=c99", "-shared", "-fPIC", "-o", str(lib),
                    str(ROOT / "shared" / "codec" / "ranscoder.c")], check=True, timeout=120)
    from shared.codec.rans_compiled import LIB_ENV

    code = ("import json; from shared.codec import integer_numpy as h, rans; "
            "print(json.dumps([rans.implementation(), h.implementation(), h.COMPILED_ERROR]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, LIB_ENV: str(lib)},
                         capture_output=True, text=True, timeout=60)
    coder, h_s, why = json.loads(out.stdout)
    assert (coder, h_s) == ("c", "numpy") and "si_int_hyper" in why
