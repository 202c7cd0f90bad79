"""Bit-exact decoding (issue 5): the integer hyper-decoder's table indexes do not depend on arithmetic.

The float path of the same network (its float weights in plain floating point) stands for any
float hyper-decoder: the tests show it drifting under the perturbations another device would bring,
and the integer path not moving at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared.bundle import BundleError, _bundle_id, default_bundle_path, load_bundle
from shared.codec import Bottleneck, BottleneckConfig
from perturb import PERTURBATIONS, index_drift, round_mantissa
from shared.codec.integer import IntConv2d, IntHyperSynthesis

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _int_reference(conv: IntConv2d, x: torch.Tensor) -> torch.Tensor:
    """The integer layer in int64 only (unfold + integer matmul): the definition the fast path must match."""
    k = conv.w_int.shape[-1]
    cols = F.unfold(x.double(), k, padding=conv.pad).round().long()  # (1, C*k*k, L): exact small integers
    acc = conv.w_int.long().reshape(conv.w_int.shape[0], -1) @ cols[0]
    v = acc * conv.mult[:, None] + conv.bias_int[:, None] + (1 << 23)
    out = torch.div(v, 1 << 24, rounding_mode="floor").reshape(1, -1, *x.shape[-2:])
    return out.clamp(conv.lo, conv.hi) if conv.lo is not None else out


def _trained_like_hs(seed: int = 0) -> IntHyperSynthesis:
    torch.manual_seed(seed)
    hs = IntHyperSynthesis(32, 32, 4)
    with torch.no_grad():
        for c in hs.convs:
            c.conv.weight.mul_(4)  # livelier activations than the default init
    hs.export()
    return hs


def test_integer_layers_match_pure_integer_arithmetic():
    hs = _trained_like_hs()
    x = torch.randint(-6, 7, (1, 32, 5, 6)).long()
    for conv, up in zip(hs.convs, hs.ups):
        got = conv.exact(x)
        assert torch.equal(got, _int_reference(conv, x))
        x = F.pixel_shuffle(got, up) if up > 1 else got
    assert x.abs().max() > 0


def test_integer_path_is_invariant_to_arithmetic_and_batching():
    hs = _trained_like_hs(1)
    z = torch.randint(-8, 9, (4, 32, 7, 7))
    idx0, means0 = hs.exact(z)
    assert idx0.unique().numel() > 5  # a non-trivial spread of tables
    for name, conv in PERTURBATIONS.items():
        for dtype in (torch.float64, torch.float32):
            idx, means = hs.exact(z, conv, conv_dtype=dtype)
            assert torch.equal(idx, idx0) and torch.equal(means, means0), (name, dtype)
    single = torch.cat([hs.exact(z[i : i + 1])[0] for i in range(4)])
    assert torch.equal(single, idx0)


def test_training_path_simulates_the_integer_path():
    hs = _trained_like_hs(2)
    z = torch.randint(-8, 9, (2, 32, 7, 7))
    t, means = hs(z.float())
    idx, means_i = hs.exact(z)
    agree = (hs.indexes_from_logits(t).long() == idx).float().mean()
    assert agree > 0.99
    assert (means - means_i).abs().max() < 0.02


def test_export_refuses_ranges_where_float64_is_not_exact():
    conv = IntConv2d(8, 4, 3, f_in=0, f_out=8)
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.fill_(2.0**40)  # a bias far beyond 2**52 once scaled
    with pytest.raises(ValueError, match="exceeds"):
        conv.export(127)


def test_round_mantissa_is_tf32_rounding():
    x = torch.tensor([1.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 2047.0, 2049.0, -3.14159])
    r = round_mantissa(x)
    assert r[0] == 1.0 and r[1] == 1.0 and r[2] == 1.0 + 2**-9  # ties to even
    assert r[3] == 2047.0 and r[4] == 2048.0  # integers stay exact up to 2**11
    assert abs(float(r[5]) + 3.14159) < 2e-3


def test_float_bundles_are_refused_with_migration_advice(tiny_bundle, tmp_path):
    import json
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_bundle.root, legacy)
    m = json.loads((legacy / "manifest.json").read_text())
    m["format"] = "splitinfer-bundle/1"
    del m["config"]["hyper_decoder"]
    m["bundle_id"] = _bundle_id(m["model"], m["split"], m["config"], [r["sha256"] for r in m["rungs"]])
    (legacy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="splitinfer migrate"):
        load_bundle(legacy)
    b = load_bundle(legacy, allow_float_hyper=True)
    assert b.config.hyper_decoder == "float"


def _drift_on_images(bundle, paths, rungs=None):
    """Sum of index_drift over images (image i coded with rung i mod n)."""
    from PIL import Image

    from shared.data import eval_transform
    from shared.models import load_split_model

    model = load_split_model(bundle.model, bundle.split)
    tf = eval_transform(model.spec.preprocess)
    nets = [bundle.load_rung(r) for r in range(len(bundle.rungs))]
    total = {}
    with torch.no_grad():
        for i, p in enumerate(paths):
            net = nets[i % len(nets)]
            x = tf(Image.open(p).convert("RGB"))[None]
            y = net._analysis(model.head(x))
            for path, per in index_drift(net.rate, y).items():
                for name, d in per.items():
                    t = total.setdefault(path, {}).setdefault(name, {"indexes": 0, "broken": 0, "images": 0})
                    t["indexes"] += d["indexes"]
                    t["broken"] += d["broken"]
                    t["images"] += int(d["indexes"] > 0)
    return total


def _check(total, n):
    print(f"\nover {n} images:", {p: {k: (v["images"], v["broken"]) for k, v in per.items()} for p, per in total.items()})
    for name, t in total["integer"].items():
        assert t == {"indexes": 0, "broken": 0, "images": 0}, name
    # the danger is real: TF32-style rounding moves the float path's tables and breaks decoding
    assert total["float"]["tf32"]["broken"] > 0
    assert total["float"]["reference"]["indexes"] == 0


def test_shipped_ladder_decodes_identically_under_perturbations():
    bundle = load_bundle(default_bundle_path())
    samples = sorted((default_bundle_path().parents[1] / "samples").glob("*.JPEG"))
    assert samples
    _check(_drift_on_images(bundle, samples * 2), len(samples) * 2)


@pytest.mark.skipif(not (DATA / "imagenet_val").is_dir(), reason="needs ../shared/data/imagenet_val (team data kit)")
def test_thousand_images_decode_identically_under_perturbations():
    from shared.data import scan_images

    paths = [p for p, _ in scan_images(DATA / "imagenet_val", labels=False)][:1000]
    assert len(paths) >= 1000
    _check(_drift_on_images(load_bundle(default_bundle_path()), paths), len(paths))


def test_migrate_turns_a_float_ladder_into_an_integer_one(tiny_train_argv, tiny_weights, tiny_images, tmp_path, capsys):
    from shared.pipeline import LadderCodec
    from splitinfer.cli import main

    old, new = tmp_path / "float", tmp_path / "int"
    assert main(["train", *tiny_train_argv(old, "--hyper-decoder", "float"), "--steps", "40", "--steps-per-rung", "20"]) == 0
    assert main(["info", str(old)]) == 2  # refused, with the way out
    assert "splitinfer migrate --bundle" in capsys.readouterr().err
    assert main(["migrate", "--bundle", str(old), "--data", str(tiny_images), "--weights", str(tiny_weights),
                 "--out", str(new), "--steps", "30", "--views", "1", "--batch-size", "4",
                 "--eval-data", str(tiny_images)]) == 0
    b = load_bundle(new)
    src = load_bundle(old, allow_float_hyper=True)
    assert b.config.hyper_decoder == "integer" and b.manifest["migration"]["from"] == src.bundle_id
    assert [r.lam for r in b.rungs] == [r.lam for r in src.rungs]
    assert all("bpp" in r.metrics and r.metrics["migrated_from"]["bundle_id"] == src.bundle_id for r in b.rungs)
    # g_a / g_s are the source's, only h_s changed
    a, c = src.load_rung(0).state_dict(), b.load_rung(0).state_dict()
    assert torch.equal(a["g_a.0.weight"], c["g_a.0.weight"]) and torch.equal(a["g_s.0.weight"], c["g_s.0.weight"])
    codec = LadderCodec(b)
    feat = torch.randn(1, b.config.in_channels, 32, 32)
    (msg,) = codec.encode(feat, (32, 32), 0)
    codec.decode(msg)  # symbol CRC checked inside
    assert main(["migrate", "--bundle", str(new), "--data", str(tiny_images), "--weights", str(tiny_weights),
                 "--out", str(tmp_path / "again")]) == 2  # nothing to migrate
