"""LadderCodec (features <-> messages for one bundle): round trip, every bad input, fuzzing, rung selection."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from shared.bitstream import BitstreamError, pack, split_tag, unpack
from shared.bundle import Rung, select_rung
from shared.pipeline import LadderCodec, bits_per_pixel

INPUT_HW = (32, 32)


@pytest.fixture(scope="module")
def codec(tiny_bundle) -> LadderCodec:
    return LadderCodec(tiny_bundle)


@pytest.fixture(scope="module")
def feats(tiny_model, heldout_batch) -> torch.Tensor:
    with torch.no_grad():
        return tiny_model.head(heldout_batch[:4])


@pytest.fixture(scope="module")
def messages(codec, feats):
    """{rung: [one message per image]}, each image encoded alone."""
    n = feats.shape[0]
    return {r.index: [codec.encode(feats[i:i + 1], INPUT_HW, r.index)[0] for i in range(n)]
            for r in codec.bundle.rungs}


@pytest.fixture(scope="module")
def reference(codec, messages):
    """{rung: [decoded feature per image]} of the valid messages."""
    return {r: [codec.decode(m)[0] for m in msgs] for r, msgs in messages.items()}


def repack(data: bytes, payloads=None, **changes) -> bytes:
    """Re-pack a valid message with some header fields (or payloads) changed and a correct outer CRC."""
    hdr, old = unpack(data)
    return pack(dataclasses.replace(hdr, **changes), old if payloads is None else payloads)


def test_rungs_load_lazily(tiny_bundle):
    codec = LadderCodec(tiny_bundle)
    assert codec.resident == []
    assert codec.rung(1) is codec.rung(1)
    assert codec.resident == [1]
    codec.preload()
    assert codec.resident == [r.index for r in tiny_bundle.rungs]
    assert codec.feature_stride == 1 and codec.feature_hw(INPUT_HW) == INPUT_HW


@torch.no_grad()
def test_encode_decode_equals_the_bottleneck(codec, feats, messages, tiny_bundle):
    for rung, msgs in messages.items():
        net = tiny_bundle.load_rung(rung)  # a separate copy of the rung: the codec holds its own
        direct = net(feats)["feat_hat"]
        assert len(msgs) == feats.shape[0]
        for i, data in enumerate(msgs):
            feat, hdr = codec.decode(data)
            assert feat.shape == (1, *feats.shape[1:])
            torch.testing.assert_close(feat[0], direct[i], atol=1e-5, rtol=0)
            assert hdr.rung == rung
            assert hdr.input_hw == INPUT_HW
            assert hdr.bundle_id == tiny_bundle.id_bytes
            assert hdr.split_tag == split_tag("cifar_resnet20", "layer1")
            assert (hdr.y_hw, hdr.side_hw) == ((16, 16), (4, 4))
            assert codec.rate_bpp(data) == bits_per_pixel(len(data), INPUT_HW) == 8 * len(data) / 1024
    # lower rungs cost fewer bytes
    sizes = [sum(map(len, messages[r])) for r in sorted(messages)]
    assert sizes == sorted(sizes, reverse=True)


@torch.no_grad()
def test_every_message_of_a_batch_decodes(codec, tiny_model):
    """A message must not depend on the other images of the batch it was encoded in.

    Regression: HyperpriorRate.compress used to run h_s on the whole batch while the decoder runs it on one
    image. Batched CPU convolutions round differently; a scale on a table boundary got another CDF index, and
    about 1 message in 100 at rung 0 of the tiny bundle failed its symbol CRC (evaluate_ladder encodes batches).
    """
    g = torch.Generator().manual_seed(0)
    failures, n = [], 0
    for b in range(40):
        feat = tiny_model.head(torch.randn(16, 3, *INPUT_HW, generator=g))
        for i, data in enumerate(codec.encode(feat, INPUT_HW, 0)):
            n += 1
            try:
                codec.decode(data)
            except BitstreamError:
                failures.append((b, i))
    assert not failures, f"{len(failures)} of {n} messages encoded in batches of 16 do not decode: {failures}"


def _expect_error(codec, data: bytes, match: str):
    with pytest.raises(BitstreamError, match=match) as e:
        codec.decode(data)
    assert str(e.value), "a BitstreamError must say what is wrong"


def test_wrong_bundle(codec, messages):
    data = messages[0][0]
    other = bytes(b ^ 0xFF for b in codec.bundle.id_bytes)
    _expect_error(codec, repack(data, bundle_id=other), r"made for bundle .*same bundle")


def test_unknown_rung(codec, messages):
    data = messages[0][0]
    for rung in (len(codec.bundle.rungs), 17, 255):
        _expect_error(codec, repack(data, rung=rung), f"rung {rung} is not in this bundle")


def test_split_tag_mismatch(codec, messages):
    data = messages[0][0]
    _expect_error(codec, repack(data, split_tag=split_tag("cifar_resnet20", "layer2")), "another split point")


def test_shapes_the_bundle_cannot_produce(codec, messages):
    data = messages[0][0]
    hdr, payloads = unpack(data)
    for changes in [
        dict(input_hw=(64, 64)),  # y would be 32x32
        dict(input_hw=(32, 48)),
        dict(y_hw=(16, 15)),
        dict(y_hw=(8, 8), side_hw=(2, 2)),
        dict(side_hw=(0, 0)),
        dict(side_hw=(4, 3)),
        dict(payloads=payloads[:1]),  # the hyperprior needs the z payload too
    ]:
        _expect_error(codec, repack(data, **changes), "cannot come from|is not one this bundle encodes")


def test_a_huge_claimed_input_is_refused_before_decoding(codec, messages, monkeypatch):
    from shared.bitstream import MAX_SIDE
    from shared.codec import Bottleneck

    def refuse(self, payloads, feat_hw):  # stands in for the real work, which would take minutes and >100 GB
        raise AssertionError(f"the decoder started entropy decoding for a {feat_hw[0]}x{feat_hw[1]} feature")

    monkeypatch.setattr(Bottleneck, "decompress", refuse)
    y = MAX_SIDE // 2
    forged = repack(messages[0][0], input_hw=(MAX_SIDE, MAX_SIDE), y_hw=(y, y), side_hw=(y // 4, y // 4))
    assert len(forged) < 1000
    with pytest.raises(BitstreamError):
        codec.decode(forged)


def test_symbol_checksum_mismatch(codec, messages):
    data = messages[1][0]
    hdr, _ = unpack(data)
    _expect_error(codec, repack(data, symbols_crc=hdr.symbols_crc ^ 1), "checksum")
    # another image's payloads under this image's checksum: decodes fine, but the symbols are not these
    _, other = unpack(messages[1][1])
    _expect_error(codec, repack(data, payloads=other), "checksum")
    # and one rung's payloads sent as another rung's (the shapes agree, the tables do not)
    _expect_error(codec, repack(messages[0][0], rung=2), "checksum|entropy decoding failed")


def test_random_payloads_are_detected(codec, messages, reference):
    rng = random.Random(0)
    outcomes = {"error": 0, "decoded": 0}
    for k in range(60):
        rung = k % len(messages)
        data = messages[rung][k % 4]
        _, payloads = unpack(data)
        which = rng.randrange(3)  # y, z, or both
        new = list(payloads)
        for j in range(2):
            if which in (j, 2):
                n = rng.choice([0, 1, 4, len(payloads[j]), 2 * len(payloads[j]) + 3])
                new[j] = bytes(rng.randrange(256) for _ in range(n))
        try:
            feat, hdr = codec.decode(repack(data, payloads=new))
        except BitstreamError as e:
            assert str(e)
            outcomes["error"] += 1
        else:  # only acceptable if the symbols really are the original ones
            assert torch.equal(feat, reference[rung][k % 4])
            outcomes["decoded"] += 1
    assert outcomes["error"] >= 55, outcomes


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """A random change (never a no-op) of ``data``: bit flips, truncation, insertion, deletion, overwrite."""
    body = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # flip 1-3 distinct bits
        for bit in rng.sample(range(8 * len(body)), rng.randint(1, 3)):
            body[bit // 8] ^= 1 << (bit % 8)
    elif kind == 1:  # truncate
        del body[rng.randrange(len(body)):]
    elif kind == 2:  # insert random bytes
        at = rng.randrange(len(body) + 1)
        body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif kind == 3:  # delete a run of bytes
        at = rng.randrange(len(body))
        del body[at:at + rng.randint(1, 8)]
    else:  # overwrite one byte with another value
        body[rng.randrange(len(body))] ^= rng.randrange(1, 256)
    assert bytes(body) != data
    return bytes(body)


def _reseal(data: bytes) -> bytes:
    import struct
    import zlib

    body = data[:-4] if len(data) >= 4 else data
    return body + struct.pack(">I", zlib.crc32(body))


def test_fuzz_decode(codec, messages, reference):
    """~300 random mutations of valid messages: each one decodes correctly or raises BitstreamError.

    Half of them get a fresh outer CRC, so that they get past the integrity check and exercise the header
    checks, the entropy decoder on altered payloads, and the symbol checksum."""
    rng = random.Random(1234)
    counts = {"raw": 0, "resealed": 0, "accepted": 0}
    for k in range(300):
        rung = rng.randrange(len(messages))
        i = rng.randrange(4)
        data = _mutate(rng, messages[rung][i])
        resealed = k % 2 == 1
        if resealed:
            data = _reseal(data)
        try:
            feat, hdr = codec.decode(data)
        except BitstreamError as e:
            assert str(e)
            counts["resealed" if resealed else "raw"] += 1
            continue
        # accepted: the header must describe the original symbols (e.g. a 31-wide input whose latent is
        # still 16x16 is a consistent message that decodes to a cropped feature), and the result must match
        counts["accepted"] += 1
        h, w = codec.feature_hw(hdr.input_hw)
        assert hdr.rung == rung and feat.shape == (1, 16, h, w)
        assert torch.equal(feat, reference[rung][i][..., :h, :w]), "a mutated message decoded to a wrong feature"
    assert counts["raw"] == 150  # without a valid CRC nothing is accepted
    assert counts["resealed"] >= 120, counts


def test_a_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    import json
    import shutil

    from shared.bundle import BundleError, load_bundle

    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, root, ignore=shutil.ignore_patterns("cache", "checkpoint.pt"))
    rung_file = root / tiny_bundle.rungs[1].file
    data = bytearray(rung_file.read_bytes())
    data[-1] ^= 1  # one bit of a weight
    rung_file.write_bytes(bytes(data))
    codec = LadderCodec(load_bundle(root))
    codec.rung(0)  # untouched rungs still load
    with pytest.raises(BundleError, match="does not match the hash"):
        codec.rung(1)
    # a manifest whose content no longer matches its id (here: another latent size)
    m = json.loads((root / "manifest.json").read_text())
    m["config"]["latent"] += 1
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bundle_id does not match"):
        load_bundle(root)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)


# --------------------------------------------------------------------------------------- select_rung
def test_select_rung_on_the_tiny_bundle(tiny_bundle):
    bpps = [r.bpp for r in tiny_bundle.rungs]
    assert all(b is not None and b > 0 for b in bpps)
    assert bpps == sorted(bpps, reverse=True), "rungs are ordered from highest to lowest rate"
    cheapest = len(bpps) - 1
    assert tiny_bundle.select(None) == 0
    assert tiny_bundle.select(bpps[0] * 10) == 0
    assert tiny_bundle.select(bpps[0]) == 0  # a hint equal to a rung's bpp fits it
    assert tiny_bundle.select(bpps[1]) == 1
    assert tiny_bundle.select((bpps[1] + bpps[2]) / 2) == 2
    assert tiny_bundle.select(bpps[-1] / 10) == cheapest
    assert tiny_bundle.select(1e-9) == cheapest
    assert tiny_bundle.select(math.inf) == 0
    for bad in (0, 0.0, -1.0, math.nan, -math.inf):
        with pytest.raises(ValueError, match="positive"):
            tiny_bundle.select(bad)


def test_select_rung_rule():
    rungs = [Rung(i, lam, f"rung-{i:02d}.safetensors", "", {"bpp": bpp})
             for i, (lam, bpp) in enumerate([(64, 1.0), (16, 0.5), (4, 0.25)])]
    assert select_rung(rungs, None) == 0
    assert select_rung(rungs, 2.0) == 0
    assert select_rung(rungs, 0.99) == 1
    assert select_rung(rungs, 0.5) == 1
    assert select_rung(rungs, 0.3) == 2
    assert select_rung(rungs, 0.01) == 2
    with pytest.raises(ValueError):
        select_rung(rungs, 0)
    with pytest.raises(ValueError):
        select_rung(rungs, -0.5)
