"""Bottleneck codecs: real bytes decode to exactly what training's eval path predicts, tables travel in the
weights, and the rate estimated from likelihoods matches the real bytes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from safetensors.torch import load_file, save_file

from shared.bitstream import unpack
from shared.codec import Bottleneck, BottleneckConfig
from shared.codec.rate_models import RATE_MODELS

KINDS = ["hyperprior", "factorized", "static"]


def small_config(kind: str) -> BottleneckConfig:
    return BottleneckConfig(in_channels=16, latent=8, hidden=16, dec_hidden=16, stride=2, rate_model=kind)


def fixed_feature(h: int = 16, w: int = 16, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, h, w, generator=g) * 2 + 0.5


def train_small(kind: str, steps: int = 30) -> Bottleneck:
    """~30 Adam steps of rate + distortion (and the aux loss) so that the tables are not the initial ones."""
    torch.manual_seed(0)
    net = Bottleneck(small_config(kind))
    feat = fixed_feature()
    opt = torch.optim.Adam(net.net_parameters(), lr=1e-3)
    aux_opt = torch.optim.Adam(net.aux_parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        out = net(feat)
        bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
        loss = bits / feat.numel() + 4.0 * ((out["feat_hat"] - feat) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        aux = net.aux_loss()
        aux_opt.zero_grad()
        aux.backward()
        aux_opt.step()
    net.eval()
    net.update(force=True)
    return net


@pytest.fixture(scope="module", params=KINDS)
def trained(request):
    return request.param, train_small(request.param)


def roundtrip(net: Bottleneck, feat: torch.Tensor):
    """compress -> decompress of every image; returns (decoded features, per-image (payloads, crc)).

    Images are compressed one at a time here (batches: test_pipeline.py::test_every_message_of_a_batch_decodes)."""
    results = [net.compress(feat[i:i + 1])[0] for i in range(feat.shape[0])]
    assert len(net.compress(feat)) == feat.shape[0]
    decoded = []
    for payloads, crc in results:
        assert len(payloads) == net.rate.n_payloads
        assert all(isinstance(p, bytes) and p for p in payloads)
        f, dcrc = net.decompress(payloads, tuple(feat.shape[-2:]))
        assert dcrc == crc, "symbol checksum of the decoder differs from the encoder's"
        decoded.append(f)
    return torch.cat(decoded), results


def test_rate_model_registry():
    # the fixed-rate models tested here, and the variable-rate hyperprior (tests/test_variable_rate.py)
    assert sorted(RATE_MODELS) == sorted(KINDS + ["vr-hyperprior"])
    assert {k: RATE_MODELS[k].n_payloads for k in KINDS} == {"hyperprior": 2, "factorized": 1, "static": 1}
    with pytest.raises(ValueError, match="unknown rate model"):
        Bottleneck(small_config("laplace"))
    with pytest.raises(ValueError, match="unknown bottleneck config keys"):
        BottleneckConfig.from_dict({**small_config("static").to_dict(), "warp": 1})
    assert BottleneckConfig.from_dict(small_config("static").to_dict()) == small_config("static")


@torch.no_grad()
def test_roundtrip_equals_eval_forward(trained):
    kind, net = trained
    feat = fixed_feature(seed=1)  # not the training feature
    decoded, results = roundtrip(net, feat)
    expected = net(feat)["feat_hat"]
    assert decoded.shape == feat.shape
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)
    # decoding is deterministic, and encoding is too
    again, results2 = roundtrip(net, feat)
    assert torch.equal(again, decoded)
    assert results2 == results
    # the frozen tables describe the trained latents: the real payload is close to the estimated rate
    est_bits = float(sum(-torch.log2(lik).sum() for lik in net(feat)["likelihoods"].values()))
    real_bits = 8 * sum(sum(map(len, p)) for p, _ in results)
    assert real_bits < 1.2 * est_bits + 8 * 16 * len(results), (kind, real_bits, est_bits)


@torch.no_grad()
def test_odd_feature_sizes_roundtrip_with_cropping(trained):
    kind, net = trained
    for h, w in [(15, 17), (1, 1), (7, 32), (33, 9)]:
        feat = fixed_feature(h, w, n=1, seed=h * 100 + w)
        decoded, _ = roundtrip(net, feat)
        assert decoded.shape == (1, 16, h, w)
        torch.testing.assert_close(decoded, net(feat)["feat_hat"], atol=1e-5, rtol=0)
        y_hw = net.latent_shape((h, w))
        assert y_hw == (math.ceil(h / 2), math.ceil(w / 2))
        assert tuple(net.g_a(feat).shape[-2:]) == y_hw


def _forbid_recomputing_tables(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("CDF tables must be loaded with the weights, never recomputed")

    monkeypatch.setattr(EntropyBottleneck, "update", refuse)
    monkeypatch.setattr(GaussianConditional, "update", refuse)
    monkeypatch.setattr(GaussianConditional, "update_scale_table", refuse)


@torch.no_grad()
def test_tables_travel_in_the_safetensors_weights(trained, tmp_path, monkeypatch):
    kind, net = trained
    feat = fixed_feature(15, 17, n=2, seed=5)
    decoded, results = roundtrip(net, feat)

    path = tmp_path / f"{kind}.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}, str(path))
    _forbid_recomputing_tables(monkeypatch)
    fresh = Bottleneck(small_config(kind))  # empty tables of the wrong size until loaded
    fresh.load_state_dict(load_file(str(path)))
    fresh.eval()
    for k, v in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # the reloaded codec decodes the original bytes identically and encodes the same bytes
    for (payloads, crc), ref in zip(results, decoded):
        f, dcrc = fresh.decompress(payloads, (15, 17))
        assert dcrc == crc
        assert torch.equal(f[0], ref)
    assert [fresh.compress(feat[i:i + 1])[0] for i in range(2)] == results


@torch.no_grad()
def test_bundle_rungs_load_their_tables(tiny_bundle, monkeypatch):
    _forbid_recomputing_tables(monkeypatch)
    for r in tiny_bundle.rungs:
        net = tiny_bundle.load_rung(r.index)
        assert not net.training
        feat = fixed_feature(32, 32, n=1, seed=r.index)
        decoded, _ = roundtrip(net, feat)
        torch.testing.assert_close(decoded, net(feat)["feat_hat"], atol=1e-5, rtol=0)


def test_an_unfrozen_codec_refuses_to_code():
    net = Bottleneck(small_config("factorized")).eval()
    with pytest.raises(ValueError, match="update"):
        net.compress(fixed_feature(n=1))


# --------------------------------------------------------------------------------------- rate estimate
# Spec: "Rates are estimated during training and measured after it from the real bytes; the two must agree
# within 5% on held-out images." The real rate counted here is the payloads' (headers are counted in the
# reported bpp but are no part of what the entropy model estimates). A rANS stream also ends with a flush
# of its coder state, padded to 32-bit words: a fixed cost of at most 8 bytes per payload, allowed on top.
RANS_FLUSH_BYTES = 8
MIN_PAYLOAD_BYTES = 200


def _check_rate_estimates(model, bundle, items):
    from shared.data import ImageDataset, eval_transform
    from shared.evaluation import evaluate_ladder
    from shared.pipeline import LadderCodec

    # batch_size=1 so that the messages below (encoded one image at a time) are byte for byte the same
    res = evaluate_ladder(model, bundle, items, batch_size=1, progress=False)
    pre = model.spec.preprocess
    n_pix = pre.input_size[0] * pre.input_size[1]
    x = torch.stack([ImageDataset(items, eval_transform(pre))[i][0] for i in range(len(items))])
    codec = LadderCodec(bundle)
    with torch.no_grad():
        feat = model.head(x)
    checked = []
    for row in res["rungs"]:
        r, n = row["rung"], row["n_images"]
        assert n == len(items)
        msgs = [codec.encode(feat[i:i + 1], tuple(x.shape[-2:]), r)[0] for i in range(n)]
        total = sum(map(len, msgs))
        assert total == pytest.approx(row["bytes_per_image"] * n)  # the same messages evaluate_ladder sent
        assert row["bpp"] == pytest.approx(8 * total / n_pix / n)  # headers included in the reported bpp
        parsed = [unpack(m) for m in msgs]
        payload = sum(sum(h.payload_lengths) for h, _ in parsed)
        side = sum(sum(h.payload_lengths[1:]) for h, _ in parsed)  # z follows y
        assert row["side_share"] == pytest.approx(side / total)
        n_streams = sum(len(p) for _, p in parsed)
        est_bytes = row["bpp_estimated"] * n_pix * n / 8
        if payload / n < MIN_PAYLOAD_BYTES:
            continue
        tol = 0.05 * est_bytes + RANS_FLUSH_BYTES * n_streams
        assert abs(payload - est_bytes) <= tol, (
            f"rung {r}: {payload / n:.1f} payload bytes per image, {est_bytes / n:.1f} estimated "
            f"({100 * (payload / est_bytes - 1):+.1f}%)"
        )
        checked.append(r)
    return checked


def test_rate_estimate_matches_real_bytes_tiny_bundle(tiny_bundle, tiny_model, heldout_items):
    checked = _check_rate_estimates(tiny_model, tiny_bundle, heldout_items)
    assert checked, "no rung of the tiny bundle reached 200 payload bytes per image"


@pytest.mark.slow
def test_rate_estimate_matches_real_bytes_embedded_bundle():
    from shared.bundle import default_bundle_path, load_bundle
    from shared.data import scan_images
    from shared.models import load_split_model

    path = default_bundle_path()
    samples = Path(str(path)).parents[1] / "samples"
    if not (path / "manifest.json").is_file():
        pytest.skip(f"the embedded bundle {path} does not exist yet")
    if not samples.is_dir():
        pytest.skip(f"the sample images folder {samples} does not exist yet")
    bundle = load_bundle(path)
    model = load_split_model(bundle.model, bundle.split)  # the pretrained backbone (ships in a pip package)
    items = scan_images(samples)[:4]  # ~1 s per 224x224 image and rung on a CPU core
    assert _check_rate_estimates(model, bundle, items)


@pytest.mark.data
@pytest.mark.slow
def test_rate_estimate_matches_real_bytes_on_real_cifar(shared_data, tmp_path):
    """A small ladder on the real CIFAR-10 ResNet-20 checkpoint and real (JPEG) CIFAR-10 test images."""
    import csv

    from shared.bundle import load_bundle
    from shared.data import scan_images, split_items
    from shared.models import load_split_model
    from splitinfer.cli import main

    root = shared_data / "cifar10" / "test_jpeg"
    listing = tmp_path / "cifar_subset.csv"  # 16 images of every class, by absolute path
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "class_index"])
        for ci, d in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
            for p in sorted(d.glob("*.jpg"))[:16]:
                w.writerow([str(p), ci])
    out = tmp_path / "bundle"
    argv = ["train", "--model", "cifar_resnet20", "--split", "layer1", "--data", str(listing),
            "--eval-data", str(listing), "--views", "2", "--steps", "150", "--steps-per-rung", "60",
            "--batch-size", "8", "--lambdas", "8,2", "--device", "cpu", "--out", str(out),
            "--allow-weak"]  # 210 steps on 80 images: far below the unsplit model, enough to check rates
    assert main(argv) == 0
    bundle = load_bundle(out)
    ref = bundle.manifest["evaluation"]["reference"]
    assert ref["n_images"] >= 60 and ref["top1"] >= 0.6  # the real checkpoint (81% on these JPEGs)
    model = load_split_model("cifar_resnet20", "layer1")
    items = split_items(scan_images(listing), "heldout")
    assert _check_rate_estimates(model, bundle, items)


def test_latent_gain_scales_y_and_is_undone_before_g_s():
    """``gain=True``: y = g_a(.) * exp(latent_gain) on the edge, divided back before g_s in the cloud; the gain
    learns in its own optimizer group at 10x the rate. Bundles without it load as before (gain defaults off)."""
    import math

    cfg = small_config("hyperprior")
    plain, gained = Bottleneck(cfg), Bottleneck(BottleneckConfig(**{**cfg.to_dict(), "gain": True}))
    gained.load_state_dict({**plain.state_dict(), "latent_gain": torch.full((1, cfg.latent, 1, 1), math.log(4.0))})
    f = torch.randn(2, cfg.in_channels, 8, 8)
    with torch.no_grad():
        assert torch.allclose(gained._analysis(f), 4 * plain._analysis(f), atol=1e-5)
        y = torch.randn(2, cfg.latent, 4, 4)
        assert torch.allclose(gained._synthesis(4 * y, (8, 8)), plain._synthesis(y, (8, 8)), atol=1e-5)
    groups = gained.param_groups(1e-3)
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0] and groups[1]["params"][0] is gained.latent_gain
    assert sum(len(g["params"]) for g in groups) == len(gained.net_parameters())
    assert [g["lr_scale"] for g in plain.param_groups(1e-3)] == [1.0]
    assert BottleneckConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "gain"}).gain is False
