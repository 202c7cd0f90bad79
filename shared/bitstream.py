"""The splitinfer bitstream, versions 1 and 2: one self-describing message per image. No pickle.

Layout (``uvarint`` = unsigned LEB128; all fixed-width integers big endian)::

    offset  size  field
    0       2     magic b"SI"
    2       1     version (1: a ladder rung; 2: a variable-rate network, with the quality level below)
    3       4     bundle id: first 4 bytes of the bundle's content hash (model, split, rungs, weights)
    7       2     split point tag: CRC16 (CRC32 & 0xffff) of "model/split"
    9       1     rung index within the bundle
    (10     1     version 2 only: the quality level q, a signed byte; shared/codec/variable_rate.py)
    ..      var   input height, input width          (uvarint, uvarint; the pixels bpp is counted over)
    ..      var   y height, y width                  (uvarint, uvarint)
    ..      var   side height, side width            (uvarint each; 0, 0 when the rate model sends none)
    ..      1     n payloads (1 or 2)
    ..      var   payload lengths                    (uvarint each)
    ..      4     CRC32 of the decoded integer symbols (detects a desynchronised entropy decoder)
    ..      *     payloads, concatenated (y first, then z)
    end-4   4     CRC32 of every byte before it (detects truncation and corruption before decoding)

Fixed overhead: 2+1+4+2+1+1+4+4 = 19 bytes (20 in version 2), plus 1-2 bytes per varint: 29-32 bytes in
all for a 224x224 input with a hyperprior (224 and payload lengths above 127 take two bytes each), i.e.
about 0.005 bpp. A ladder's messages stay version 1, byte for byte; a variable-rate bundle's are version 2.
Every parse error raises :class:`BitstreamError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

__all__ = ["MAGIC", "VERSION", "VERSION_LEVEL", "BitstreamError", "Header", "pack", "unpack", "split_tag", "MAX_SIDE", "symbols_crc", "level_symbols_crc",
           "bits_per_pixel"]

MAGIC = b"SI"
VERSION = 1  # a ladder rung
VERSION_LEVEL = 2  # a variable-rate network: the header carries the quality level
VERSIONS = (VERSION, VERSION_LEVEL)
MAX_SIDE = 16384  # largest input side accepted; bounds every allocation made from header fields
MAX_PAYLOADS = 2


class BitstreamError(ValueError):
    """A message that cannot be decoded: malformed, corrupted, truncated, or for another bundle/rung."""


@dataclass
class Header:
    bundle_id: bytes  # 4 bytes
    split_tag: int
    rung: int
    input_hw: Tuple[int, int]
    y_hw: Tuple[int, int]
    side_hw: Tuple[int, int] = (0, 0)
    symbols_crc: int = 0
    payload_lengths: List[int] = field(default_factory=list)
    level: Optional[int] = None  # the quality level of a variable-rate network (version 2); None: a ladder rung


def bits_per_pixel(n_bytes: int, input_hw: Tuple[int, int]) -> float:
    """Rate as sent: every byte of the message, headers included, over the network input's pixels."""
    return 8.0 * n_bytes / (input_hw[0] * input_hw[1])


def symbols_crc(*symbols, crc: int = 0) -> int:
    """CRC32 of integer symbols (array-likes, as int32 little endian); the decoder recomputes it to detect a desync."""
    import numpy as np

    for s in symbols:
        crc = zlib.crc32(np.asarray(s).astype("<i4").tobytes(), crc)
    return crc


def level_symbols_crc(level: int, *symbols) -> int:
    """The symbol checksum of a variable-rate (version 2) message: the quality level is folded in first, so a
    message whose level was altered fails the check even where its symbols happen to decode alike."""
    return symbols_crc(*symbols, crc=zlib.crc32(struct.pack(">b", level)))


def split_tag(model: str, split: str) -> int:
    return zlib.crc32(f"{model}/{split}".encode()) & 0xFFFF


def _uvarint(n: int) -> bytes:
    if n < 0:
        raise ValueError("uvarint must be >= 0")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError("truncated bitstream")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uvarint(self, limit: int) -> int:
        n, shift = 0, 0
        for _ in range(5):  # values here never need more than 5 bytes
            (b,) = self.take(1)
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n > limit:
                    raise BitstreamError(f"header field {n} exceeds the limit {limit}")
                return n
            shift += 7
        raise BitstreamError("malformed varint in header")


def pack(header: Header, payloads: List[bytes]) -> bytes:
    if len(header.bundle_id) != 4:
        raise ValueError("bundle_id must be 4 bytes")
    if not 1 <= len(payloads) <= MAX_PAYLOADS:
        raise ValueError("1 or 2 payloads")
    if header.level is not None and not -128 <= header.level <= 127:
        raise ValueError("the quality level must fit a signed byte")
    level = b"" if header.level is None else struct.pack(">b", header.level)
    parts = [
        MAGIC,
        bytes([VERSION if header.level is None else VERSION_LEVEL]),
        header.bundle_id,
        struct.pack(">H", header.split_tag),
        bytes([header.rung]),
        level,
        *(_uvarint(v) for v in (*header.input_hw, *header.y_hw, *header.side_hw)),
        bytes([len(payloads)]),
        *(_uvarint(len(p)) for p in payloads),
        struct.pack(">I", header.symbols_crc),
        *payloads,
    ]
    body = b"".join(parts)
    return body + struct.pack(">I", zlib.crc32(body))


def unpack(data: bytes) -> Tuple[Header, List[bytes]]:
    """Parse and integrity-check a message. Does not decode payloads (see ``shared.pipeline``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4 or data[:2] != MAGIC:
        raise BitstreamError("not a splitinfer bitstream (bad magic)")
    if data[2] not in VERSIONS:
        raise BitstreamError(f"unsupported bitstream version {data[2]} (this decoder reads versions 1 and 2)")
    if len(data) < 24:
        raise BitstreamError("truncated bitstream")
    body, (crc,) = data[:-4], struct.unpack(">I", data[-4:])
    if zlib.crc32(body) != crc:
        raise BitstreamError("checksum mismatch: the bitstream is corrupted or truncated")
    r = _Reader(body)
    r.take(3)
    bundle_id = r.take(4)
    (tag,) = struct.unpack(">H", r.take(2))
    (rung,) = r.take(1)
    level = struct.unpack(">b", r.take(1))[0] if data[2] == VERSION_LEVEL else None
    ih, iw, yh, yw, sh, sw = (r.uvarint(MAX_SIDE) for _ in range(6))
    if min(ih, iw, yh, yw) < 1:
        raise BitstreamError("zero-sized input or latent in header")
    (n,) = r.take(1)
    if not 1 <= n <= MAX_PAYLOADS:
        raise BitstreamError(f"bad payload count {n}")
    lengths = [r.uvarint(len(body)) for _ in range(n)]
    (sym_crc,) = struct.unpack(">I", r.take(4))
    payloads = [r.take(k) for k in lengths]
    if r.pos != len(body):
        raise BitstreamError("trailing bytes after payloads")
    hdr = Header(bundle_id, tag, rung, (ih, iw), (yh, yw), (sh, sw), sym_crc, lengths, level)
    return hdr, payloads
