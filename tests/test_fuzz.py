"""Property tests (Hypothesis) for the bitstream parser and the ladder decoder.

- ``shared.bitstream.unpack``: any input gives a Header or a BitstreamError, never another exception; pack/unpack
  round-trips every valid header and payloads; every single changed byte of a valid message (and every burst of
  up to 32 bits inside its body) is detected by the outer CRC32.
- ``LadderCodec.parse`` / ``LadderCodec.decode`` on the tiny bundle's real messages: mutated messages (bit flips,
  byte sets, truncation, extension, splices of two messages, header fields and varints rewritten with the CRC
  recomputed, payload edits with the CRC recomputed) decode to exactly the original feature or raise
  BitstreamError. Never another exception, never another result.

The scale run of the same idea (a million mutated messages, and the server's front ends) is
``benchmarks/fuzz_soak.py``.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st

from shared.bitstream import MAGIC, MAX_PAYLOADS, MAX_SIDE, VERSION, BitstreamError, Header, pack, unpack
from shared.bitstream_layout import reseal, uvarint
from shared.pipeline import LadderCodec

INPUT_HW = (32, 32)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODE = settings(max_examples=400, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------ helpers
def raw_message(hdr: Header, payloads: Sequence[bytes], *, n_payloads: Optional[int] = None,
                lengths: Optional[Sequence[int]] = None, varints: Optional[Sequence[bytes]] = None,
                magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    """The version-1 layout written by hand (``pack`` validates; this does not), resealed.

    ``varints`` replaces the six shape varints byte for byte (overlong, non-canonical, huge values);
    ``n_payloads`` and ``lengths`` replace the payload count and the length fields."""
    if varints is None:
        varints = [uvarint(v) for v in (*hdr.input_hw, *hdr.y_hw, *hdr.side_hw)]
    lengths = [len(p) for p in payloads] if lengths is None else lengths
    body = b"".join([
        magic, bytes([version]), hdr.bundle_id, struct.pack(">H", hdr.split_tag & 0xFFFF), bytes([hdr.rung & 0xFF]),
        *varints, bytes([(len(payloads) if n_payloads is None else n_payloads) & 0xFF]),
        *(uvarint(k) for k in lengths), struct.pack(">I", hdr.symbols_crc & 0xFFFFFFFF), *payloads,
    ])
    return reseal(body)


# ------------------------------------------------------------------------------------------ strategies
sides = st.integers(1, MAX_SIDE)
headers = st.builds(
    Header,
    bundle_id=st.binary(min_size=4, max_size=4),
    split_tag=st.integers(0, 0xFFFF),
    rung=st.integers(0, 255),
    input_hw=st.tuples(sides, sides),
    y_hw=st.tuples(sides, sides),
    side_hw=st.tuples(st.integers(0, MAX_SIDE), st.integers(0, MAX_SIDE)),
    symbols_crc=st.integers(0, 0xFFFFFFFF),
)
payload_lists = st.lists(st.binary(max_size=300), min_size=1, max_size=MAX_PAYLOADS)
# interesting varint values: both sides of the 1-/2-/3-byte boundaries, the limit, and far beyond it
varint_values = st.one_of(
    st.sampled_from([0, 1, 2, 7, 8, 16, 31, 32, 33, 127, 128, 255, 256, 16383, 16384, 16385, MAX_SIDE - 1,
                     MAX_SIDE, MAX_SIDE + 1, 1 << 21, (1 << 28) - 1, 1 << 28, (1 << 35) - 1]),
    st.integers(0, (1 << 35) - 1),
)


@st.composite
def any_bytes(draw) -> bytes:
    """Garbage, garbage that starts like a message, and either of them with a valid outer CRC."""
    data = draw(st.binary(max_size=120))
    if draw(st.booleans()):
        data = MAGIC + bytes([VERSION]) + data
    if draw(st.booleans()):
        data = reseal(data)
    return data


# ------------------------------------------------------------------------------------------ unpack
@FAST
@given(data=any_bytes())
def test_unpack_any_bytes_gives_a_header_or_a_bitstream_error(data):
    try:
        hdr, payloads = unpack(data)
    except BitstreamError as e:
        assert str(e)
        return
    assert isinstance(hdr, Header) and 1 <= len(payloads) <= MAX_PAYLOADS
    assert hdr.payload_lengths == [len(p) for p in payloads]
    assert len(data) == len(pack(hdr, payloads)), "an accepted message is exactly as long as its fields say"


@FAST
@given(value=st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(0, 255), max_size=8),
                       st.floats(allow_nan=True), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_unpack_refuses_what_is_not_bytes(value):
    with pytest.raises(BitstreamError):
        unpack(value)


@FAST
@given(hdr=headers, payloads=payload_lists)
def test_pack_unpack_round_trip(hdr, payloads):
    data = pack(hdr, payloads)
    got, got_payloads = unpack(data)
    assert got_payloads == payloads
    assert got.payload_lengths == [len(p) for p in payloads]
    hdr.payload_lengths = [len(p) for p in payloads]
    assert got == hdr
    assert pack(got, got_payloads) == data, "unpack then pack gives the same bytes"
    for kind in (bytearray, memoryview):
        assert unpack(kind(data)) == (got, got_payloads)


@FAST
@given(hdr=headers, payloads=payload_lists, pos=st.integers(0), mask=st.integers(1, 255))
def test_every_single_changed_byte_is_detected(hdr, payloads, pos, mask):
    data = bytearray(pack(hdr, payloads))
    data[pos % len(data)] ^= mask
    with pytest.raises(BitstreamError):
        unpack(bytes(data))


@FAST
@given(hdr=headers, payloads=payload_lists, pos=st.integers(0), burst=st.binary(min_size=1, max_size=4))
def test_every_burst_of_up_to_32_bits_in_the_body_is_detected(hdr, payloads, pos, burst):
    """CRC-32 detects every error burst of at most 32 bits: here up to 4 consecutive bytes of the body XORed
    with any non-zero pattern (the first byte of the pattern non-zero, so the burst starts where it says)."""
    assume(burst[0] != 0)
    data = bytearray(pack(hdr, payloads))
    body_len = len(data) - 4
    at = pos % body_len
    for i, b in enumerate(burst[: body_len - at]):
        data[at + i] ^= b
    with pytest.raises(BitstreamError):
        unpack(bytes(data))


@FAST
@given(hdr=headers, payloads=payload_lists, cut=st.integers(0), extra=st.binary(min_size=1, max_size=16))
def test_truncation_and_extension_are_detected(hdr, payloads, cut, extra):
    data = pack(hdr, payloads)
    for bad in (data[: cut % len(data)], data + extra, extra + data):
        with pytest.raises(BitstreamError):
            unpack(bad)


@FAST
@given(hdr=headers, payloads=payload_lists, which=st.integers(0, 5), value=varint_values,
       pad=st.integers(0, 5))
def test_rewritten_header_varints_with_a_valid_crc(hdr, payloads, which, value, pad):
    """A shape varint replaced (any value, canonical or padded to an overlong encoding) and the CRC recomputed:
    the parser accepts exactly the values within the limits that fit in five bytes, and reads them back."""
    varints = [uvarint(v) for v in (*hdr.input_hw, *hdr.y_hw, *hdr.side_hw)]
    varints[which] = uvarint(value, pad)
    data = raw_message(hdr, payloads, varints=varints)
    fits = len(varints[which]) <= 5 and value <= MAX_SIDE and (value >= 1 or which >= 4)
    if not fits:
        with pytest.raises(BitstreamError):
            unpack(data)
        return
    got, got_payloads = unpack(data)
    assert (*got.input_hw, *got.y_hw, *got.side_hw)[which] == value
    assert got_payloads == payloads


@FAST
@given(hdr=headers, payloads=payload_lists, n=st.integers(0, 255),
       lengths=st.lists(st.integers(0, 1 << 20), min_size=0, max_size=3))
def test_rewritten_payload_count_and_lengths_with_a_valid_crc(hdr, payloads, n, lengths):
    data = raw_message(hdr, payloads, n_payloads=n, lengths=lengths)
    try:
        got, got_payloads = unpack(data)
    except BitstreamError as e:
        assert str(e)
        return
    # accepted only when the count and the lengths describe the bytes exactly: what was read packs back to them
    assert len(got_payloads) == n and pack(got, got_payloads) == data
    if len(lengths) == n:
        assert got.payload_lengths == list(lengths) and b"".join(got_payloads) == b"".join(payloads)


# ------------------------------------------------------------------------------------------ the tiny bundle
@pytest.fixture(scope="module")
def codec(tiny_bundle) -> LadderCodec:
    c = LadderCodec(tiny_bundle)
    c.preload()
    return c


@pytest.fixture(scope="module")
def messages(codec, tiny_model, heldout_batch) -> List[bytes]:
    """Real messages: 3 held-out images at every rung of the tiny bundle, each image encoded alone."""
    with torch.no_grad():
        feats = tiny_model.head(heldout_batch[:3])
    return [codec.encode(feats[i:i + 1], INPUT_HW, r.index)[0]
            for r in codec.bundle.rungs for i in range(feats.shape[0])]


@pytest.fixture(scope="module")
def reference(codec, messages) -> dict:
    """{message: decoded feature}."""
    return {m: codec.decode(m)[0] for m in messages}


def check_decode(codec: LadderCodec, reference: dict, original: bytes, data: bytes) -> str:
    """Decode ``data`` (a mutation of ``original``): the original feature, or a BitstreamError with a message.
    A mutation that happens to spell another valid message must decode to that message's feature."""
    expected = reference.get(data, reference[original])
    try:
        feat, hdr = codec.decode(data)
    except BitstreamError as e:
        assert str(e), "a BitstreamError must say what is wrong"
        return "refused"
    assert feat.shape == expected.shape, f"accepted with another shape {tuple(feat.shape)}: silent corruption"
    assert torch.equal(feat, expected), "a mutated message decoded to another feature: silent corruption"
    return "same"


# mutation operators on a real message: each returns new bytes
@st.composite
def mutated(draw, messages: Sequence[bytes]) -> Tuple[bytes, bytes, str]:
    i = draw(st.integers(0, len(messages) - 1))
    orig = messages[i]
    hdr, payloads = unpack(orig)
    op = draw(st.sampled_from(["bitflip", "byteset", "truncate", "extend", "duplicate", "splice",
                               "header_field", "header_varint", "payload_edit", "payload_swap",
                               "raw_resealed"]))
    data = bytearray(orig)
    if op == "bitflip":
        for bit in draw(st.lists(st.integers(0, 8 * len(data) - 1), min_size=1, max_size=4, unique=True)):
            data[bit // 8] ^= 1 << (bit % 8)
    elif op == "byteset":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif op == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif op == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif op == "duplicate":  # a chunk of the message inserted again somewhere
        a = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(a + 1, min(len(data), a + 256)))
        at = draw(st.integers(0, len(data)))
        data[at:at] = data[a:b]
    elif op == "splice":  # the start of one message, the end of another (often resealed)
        other = messages[draw(st.integers(0, len(messages) - 1))]
        cut_a = draw(st.integers(0, len(orig)))
        cut_b = draw(st.integers(0, len(other)))
        data = bytearray(orig[:cut_a] + other[cut_b:])
        if draw(st.booleans()) and len(data) > 4:
            data = bytearray(reseal(bytes(data[:-4])))
    elif op == "header_field":  # one fixed-width or varint field set to a plausible or a wild value, CRC fixed
        field = draw(st.sampled_from(["bundle_id", "split_tag", "rung", "input_hw", "y_hw", "side_hw",
                                      "symbols_crc", "n_payloads", "lengths", "magic", "version"]))
        kw = {}
        h = Header(hdr.bundle_id, hdr.split_tag, hdr.rung, hdr.input_hw, hdr.y_hw, hdr.side_hw, hdr.symbols_crc)
        if field == "bundle_id":
            h.bundle_id = draw(st.binary(min_size=4, max_size=4))
        elif field == "split_tag":
            h.split_tag = draw(st.integers(0, 0xFFFF))
        elif field == "rung":
            h.rung = draw(st.one_of(st.integers(0, 3), st.integers(0, 255)))
        elif field in ("input_hw", "y_hw", "side_hw"):
            near = getattr(hdr, field)
            value = draw(st.one_of(
                st.tuples(st.integers(0, 80), st.integers(0, 80)),
                st.tuples(*(st.integers(max(0, v - 2), v + 2) for v in near)),
                st.tuples(st.sampled_from([0, 1, MAX_SIDE, MAX_SIDE + 1]), st.integers(0, MAX_SIDE))))
            setattr(h, field, value)
            kw["varints"] = [uvarint(v) for v in (*h.input_hw, *h.y_hw, *h.side_hw)]
        elif field == "symbols_crc":
            h.symbols_crc = draw(st.integers(0, 0xFFFFFFFF))
        elif field == "n_payloads":
            kw["n_payloads"] = draw(st.integers(0, 255))
        elif field == "lengths":
            kw["lengths"] = [max(0, k + draw(st.integers(-8, 8))) for k in hdr.payload_lengths]
        elif field == "magic":
            kw["magic"] = draw(st.binary(min_size=2, max_size=2))
        else:
            kw["version"] = draw(st.integers(0, 255))
        data = bytearray(raw_message(h, payloads, **kw))
    elif op == "header_varint":  # one shape varint rewritten raw (overlong, padded, huge), CRC fixed
        varints = [uvarint(v) for v in (*hdr.input_hw, *hdr.y_hw, *hdr.side_hw)]
        k = draw(st.integers(0, 5))
        varints[k] = uvarint(draw(varint_values), draw(st.integers(0, 5)))
        data = bytearray(raw_message(hdr, payloads, varints=varints))
    elif op == "payload_edit":  # bytes of one payload changed, cut or grown; lengths and CRC kept consistent
        new = [bytearray(p) for p in payloads]
        j = draw(st.integers(0, len(new) - 1))
        p = new[j]
        how = draw(st.sampled_from(["flip", "set", "cut", "grow", "zero", "random"]))
        if how == "flip" and p:
            for bit in draw(st.lists(st.integers(0, 8 * len(p) - 1), min_size=1, max_size=4, unique=True)):
                p[bit // 8] ^= 1 << (bit % 8)
        elif how == "set" and p:
            p[draw(st.integers(0, len(p) - 1))] = draw(st.integers(0, 255))
        elif how == "cut":
            del p[draw(st.integers(0, len(p))):]
        elif how == "grow":
            p += draw(st.binary(min_size=1, max_size=32))
        elif how == "zero":
            p[:] = bytes(len(p))
        else:
            p[:] = draw(st.binary(min_size=0, max_size=2 * len(p) + 8))
        data = bytearray(pack(hdr, [bytes(x) for x in new]))
    elif op == "payload_swap":  # payloads of another message (another image or rung), or y and z swapped
        other = messages[draw(st.integers(0, len(messages) - 1))]
        _, other_payloads = unpack(other)
        new = list(reversed(payloads)) if draw(st.booleans()) else other_payloads
        data = bytearray(pack(hdr, new))
    else:  # raw_resealed: any few byte changes in the body, then a valid CRC
        body = data[:-4]
        for _ in range(draw(st.integers(1, 3))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
        data = bytearray(reseal(bytes(body)))
    return orig, bytes(data), op


def _mutations(messages):
    return mutated(messages)


@DECODE
@given(data=st.data())
def test_parse_of_mutated_messages(codec, messages, data):
    """``parse``: a Header that the bundle could have produced, or a BitstreamError."""
    orig, bad, _ = data.draw(_mutations(messages))
    try:
        hdr, payloads = codec.parse(bad)
    except BitstreamError as e:
        assert str(e)
        return
    b = codec.bundle
    assert hdr.bundle_id == b.id_bytes and 0 <= hdr.rung < len(b.rungs)
    assert hdr.input_hw == codec.input_size
    assert len(payloads) == codec.rung(hdr.rung).rate.n_payloads


@DECODE
@given(data=st.data())
def test_decode_of_mutated_messages(codec, messages, reference, data):
    """``decode``: exactly the original feature, or a BitstreamError; nothing else, ever."""
    orig, bad, op = data.draw(_mutations(messages))
    event(f"{op}: {check_decode(codec, reference, orig, bad)}")


@FAST
@given(data=any_bytes())
def test_parse_and_decode_of_arbitrary_bytes(codec, reference, data):
    for call in (codec.parse, codec.decode):
        try:
            call(data)
        except BitstreamError as e:  # the only refusal allowed, and it says what is wrong
            assert str(e)


def test_mutations_reach_every_stage(codec, messages, reference):
    """The operators above are not all stopped by the outer CRC: over a fixed (derandomized) run, some messages
    fail in the header checks, some in entropy decoding or the symbol checksum, and some decode (to the original
    feature: a change the decoder never reads, such as an overlong varint spelling the same value)."""
    stages = {"crc": 0, "header": 0, "symbols": 0, "same": 0}

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(m=_mutations(messages))
    def run(m):
        orig, bad, _ = m
        try:
            unpack(bad)
        except BitstreamError:
            stages["crc"] += 1
            return
        try:
            codec.parse(bad)
        except BitstreamError:
            stages["header"] += 1
            return
        stages["symbols" if check_decode(codec, reference, orig, bad) == "refused" else "same"] += 1

    run()
    print(stages)
    assert all(v > 0 for v in stages.values()), stages


# ------------------------------------------------------------------------------------------ the soak command
@pytest.mark.slow
def test_fuzz_soak_smoke(tiny_bundle, tiny_weights, tiny_images, tmp_path):
    """``benchmarks/fuzz_soak.py`` end to end on the tiny bundle, a few hundred messages per phase (the scale run is
    ``python benchmarks/fuzz_soak.py``): every outcome counted, none of them a crash, a 5xx or silent corruption."""
    import importlib
    import json
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    soak = importlib.import_module("fuzz_soak")  # importable by name: its worker processes are spawned
    out = tmp_path / "soak.json"
    sizes = {"inprocess": 300, "grpc": 120, "rest": 120}
    rc = soak.main(["--bundle", str(tiny_bundle.root), "--weights", str(tiny_weights), "--images", str(tiny_images),
                    "--max-images", "3", "--n-inprocess", str(sizes["inprocess"]), "--n-grpc", str(sizes["grpc"]),
                    "--n-rest", str(sizes["rest"]), "--workers", "1", "--clients", "2", "--no-progress",
                    "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0, res.get("goal")
    for phase, n in sizes.items():
        r = res[phase]
        assert not r.get("error"), r["error"]
        o = r["outcomes"]
        assert sum(o.values()) == n, o
        assert o.get("refused", 0) >= n // 2 and o.get("correct", 0) >= 1, o
        assert not any(o.get(k) for k in ("crash", "corrupt", "5xx", "timeout", "transport", "other")), o
        assert len(r["by_op"]) >= 10  # most operators drawn
    assert res["rest"]["framing"] in ("kserve", "legacy", "json")


# ------------------------------------------------------------------------- a variable-rate bundle (version 2)
@pytest.fixture(scope="module")
def vr_codec(vr_bundle) -> LadderCodec:
    return LadderCodec(vr_bundle)


@pytest.fixture(scope="module")
def vr_messages(vr_codec, tiny_model, heldout_batch) -> List[bytes]:
    """Version-2 messages: 3 held-out images at 4 quality levels, the level byte in each header."""
    lo, hi = vr_codec.levels
    with torch.no_grad():
        feats = tiny_model.head(heldout_batch[:3])
    return [vr_codec.encode(feats[i:i + 1], INPUT_HW, level=q)[0]
            for q in (lo, (lo + hi) // 2, hi - 1, hi) for i in range(feats.shape[0])]


@pytest.fixture(scope="module")
def vr_reference(vr_codec, vr_messages) -> dict:
    return {m: vr_codec.decode(m)[0] for m in vr_messages}


@DECODE
@given(data=st.data())
def test_decode_of_mutated_variable_rate_messages(vr_codec, vr_messages, vr_reference, data):
    """The quality level is one more header byte a forger can change: decode gives exactly the original feature,
    the feature of another valid message, or a BitstreamError (the level is folded into the symbol checksum)."""
    reference = vr_reference
    orig, bad, op = data.draw(_mutations(vr_messages))
    event(f"{op}: {check_decode(vr_codec, reference, orig, bad)}")


@DECODE
@given(level=st.integers(-128, 127), i=st.integers(0, 11))
def test_every_forged_level_is_refused_or_exact(vr_codec, vr_messages, level, i):
    """A resealed message with its level byte rewritten: refused (out of range, or the checksum), never decoded
    at another step."""
    orig = vr_messages[i % len(vr_messages)]
    hdr, payloads = unpack(orig)
    if level == hdr.level:
        return
    hdr.level = level
    with pytest.raises(BitstreamError):
        vr_codec.decode(pack(hdr, payloads))
