"""The splitinfer bitstream v1: round trip, a golden message, and every way a message can be bad."""

from __future__ import annotations

import contextlib
import random
import re
import struct
import zlib

import pytest

from shared import bitstream
from shared.bitstream import MAX_SIDE, BitstreamError, Header, pack, split_tag, unpack

BUNDLE_ID = bytes.fromhex("5a17c0de")


def header(**kw) -> Header:
    base = dict(
        bundle_id=BUNDLE_ID,
        split_tag=split_tag("efficientnet_lite0", "block1"),
        rung=3,
        input_hw=(224, 224),
        y_hw=(28, 28),
        side_hw=(7, 7),
        symbols_crc=0xDEADBEEF,
    )
    base.update(kw)
    return Header(**base)


PAYLOADS = [b"yyyy-payload", b"zz"]

# pack(header(), PAYLOADS), computed once from the version-1 layout in shared/bitstream.py's docstring:
#   53 49 | 01 | 5a17c0de | 281a (tag 10266) | 03 | e001 e001 (224, 224) | 1c 1c | 07 07 | 02 | 0c 02
#   | deadbeef | "yyyy-payload" "zz" | CRC32 of everything before it
GOLDEN_HEX = "5349015a17c0de281a03e001e0011c1c0707020c02deadbeef797979792d7061796c6f61647a7a84099d44"


def reseal(body: bytes) -> bytes:
    """A body with a valid outer CRC32 (to reach the checks behind it)."""
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.fixture
def message() -> bytes:
    return pack(header(), PAYLOADS)


def test_round_trip():
    for hdr, payloads in [
        (header(), PAYLOADS),
        (header(side_hw=(0, 0), rung=0, symbols_crc=0), [b""]),  # no side information, empty payload
        (header(input_hw=(MAX_SIDE, 1), y_hw=(1, MAX_SIDE)), [bytes(300), bytes(range(256)) * 3]),
    ]:
        data = pack(hdr, payloads)
        got, got_payloads = unpack(data)
        assert got_payloads == payloads
        assert got.payload_lengths == [len(p) for p in payloads]
        hdr.payload_lengths = [len(p) for p in payloads]
        assert got == hdr
    # every bytes-like type is accepted
    data = pack(header(), PAYLOADS)
    assert unpack(bytearray(data)) == unpack(memoryview(data)) == unpack(data)


def test_golden_message(message):
    """Any silent change to the format (field order, widths, varints, CRCs) fails here."""
    assert message.hex() == GOLDEN_HEX
    assert split_tag("efficientnet_lite0", "block1") == zlib.crc32(b"efficientnet_lite0/block1") & 0xFFFF == 10266
    assert bitstream.MAGIC == b"SI" and bitstream.VERSION == 1


def test_header_overhead_of_a_224_hyperprior_message():
    """Bytes that are not payload, for the embedded ladder's shapes (224 -> y 28x28 -> z 7x7)."""
    sizes = {}
    for ly, lz in [(100, 100), (3000, 100), (3000, 200)]:
        data = pack(header(rung=0), [bytes(ly), bytes(lz)])
        sizes[(ly, lz)] = len(data) - ly - lz
    # 19 fixed bytes + 2+2 (224, 224) + 1+1 (28, 28) + 1+1 (7, 7) + one 1-2 byte varint per payload length
    assert sizes == {(100, 100): 29, (3000, 100): 30, (3000, 200): 31}


def test_docstring_states_the_real_overhead():
    claim = r"(\d+)-(\d+) bytes in all for a 224x224 input with a hyperprior".replace(" ", r"\s+")
    found = re.search(claim, bitstream.__doc__)
    assert found, "the module docstring no longer states the overhead of a 224x224 hyperprior message"
    lo, hi = int(found.group(1)), int(found.group(2))
    for ylen, zlen in [(100, 100), (3000, 100), (3000, 200)]:
        data = pack(header(rung=0), [bytes(ylen), bytes(zlen)])
        assert lo <= len(data) - ylen - zlen <= hi


def test_bad_magic(message):
    for bad in (b"XY" + message[2:], b"si" + message[2:], b"", b"S", b"SI\x01"):
        with pytest.raises(BitstreamError, match="magic"):
            unpack(bad)


def test_wrong_version(message):
    for v in (0, 3, 255):
        with pytest.raises(BitstreamError, match=f"unsupported bitstream version {v}"):
            unpack(message[:2] + bytes([v]) + message[3:])
    # even with a valid checksum, another version is refused before anything else is parsed
    with pytest.raises(BitstreamError, match="version 3"):
        unpack(reseal(message[:2] + b"\x03" + message[3:-4]))


def test_version_2_carries_the_quality_level(message):
    hdr, payloads = unpack(message)
    assert hdr.level is None  # version 1: a ladder rung
    for q in (-128, -1, 0, 17, 127):
        hdr.level = q
        m2 = pack(hdr, payloads)
        assert m2[2] == 2 and len(m2) == len(message) + 1  # one signed byte after the rung
        h2, p2 = unpack(m2)
        assert h2.level == q and p2 == payloads and h2.input_hw == hdr.input_hw and h2.rung == hdr.rung
    hdr.level = 128
    with pytest.raises(ValueError, match="signed byte"):
        pack(hdr, payloads)


def test_not_bytes():
    for bad in (None, "SI\x01", 42, [0x53, 0x49]):
        with pytest.raises(BitstreamError, match="expected bytes"):
            unpack(bad)


def test_every_truncation_is_a_bitstream_error(message):
    for n in range(len(message)):
        with pytest.raises(BitstreamError):
            unpack(message[:n])


def test_every_flipped_byte_is_a_bitstream_error(message):
    rng = random.Random(0)
    for pos in range(len(message)):
        for mask in (0x01, 0x80, 0xFF, rng.randrange(1, 256)):
            bad = bytearray(message)
            bad[pos] ^= mask
            with pytest.raises(BitstreamError):
                unpack(bytes(bad))


def test_side_limit():
    """A header claiming a 100000-pixel side is refused: header fields bound every later allocation."""
    for hw in [dict(input_hw=(100_000, 224)), dict(y_hw=(28, 100_000)), dict(side_hw=(MAX_SIDE + 1, 7))]:
        with pytest.raises(BitstreamError, match="exceeds the limit"):
            unpack(pack(header(**hw), PAYLOADS))
    unpack(pack(header(input_hw=(MAX_SIDE, MAX_SIDE)), PAYLOADS))  # the limit itself is fine


def test_malformed_varint():
    # input height as a varint that never ends (continuation bit on all 5 bytes)
    body = pack(header(), PAYLOADS)[:-4]
    bad = body[:10] + b"\xff" * 6 + body[12:]
    with pytest.raises(BitstreamError, match="malformed varint"):
        unpack(reseal(bad))


def test_zero_sizes_and_payload_counts():
    with pytest.raises(BitstreamError, match="zero-sized"):
        unpack(pack(header(y_hw=(0, 28)), PAYLOADS))
    body = bytearray(pack(header(), PAYLOADS)[:-4])
    n_at = body.index(bytes([2, len(PAYLOADS[0]), len(PAYLOADS[1])]))  # n payloads, then the lengths
    for n in (0, 3, 255):
        bad = bytearray(body)
        bad[n_at] = n
        with pytest.raises(BitstreamError, match="bad payload count"):
            unpack(reseal(bytes(bad)))
    with pytest.raises(ValueError):
        pack(header(), [])
    with pytest.raises(ValueError):
        pack(header(), [b"a", b"b", b"c"])
    with pytest.raises(ValueError):
        pack(header(bundle_id=b"abc"), PAYLOADS)


def test_payload_lengths_must_match_the_data():
    body = pack(header(), PAYLOADS)[:-4]
    with pytest.raises(BitstreamError, match="trailing bytes"):
        unpack(reseal(body + b"\x00"))
    with pytest.raises(BitstreamError, match="trailing bytes"):
        unpack(reseal(body + bytes(100)))
    with pytest.raises(BitstreamError, match="truncated"):
        unpack(reseal(body[:-1]))  # the last payload is one byte short
    # a payload length larger than the whole message is refused as a header field
    long_len = pack(header(), [b"x" * 200, b"z"])[:-4]
    at = long_len.index(bytes([0xC8, 0x01, 0x01]))  # varint(200), varint(1)
    bad = long_len[:at] + b"\xff\x7f" + long_len[at + 2:]
    with pytest.raises(BitstreamError, match="exceeds the limit"):
        unpack(reseal(bad))


def test_random_garbage_never_escapes_as_another_exception():
    rng = random.Random(1)
    for _ in range(2000):
        n = rng.randrange(0, 64)
        data = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.5:  # plausible start, so the parser gets further
            data = b"SI\x01" + data
        if rng.random() < 0.5 and len(data) >= 4:
            data = reseal(data[:-4])
        with contextlib.suppress(BitstreamError):  # refusing is fine; any other exception fails the test
            unpack(data)
