"""The byte spans of a version-1 message's fields, and writers for hand-made messages (non-canonical varints, a
recomputed CRC): what the fuzzers (``tests/test_fuzz.py``, ``benchmarks/fuzz_soak.py``) edit messages with.

Not used by the codec (``shared.bitstream`` packs and validates); kept beside the format it mirrors, and installed,
so that the soak command and the tests share one definition without reaching into each other's folders.
"""

from __future__ import annotations

import struct
import zlib
from typing import Tuple

__all__ = ["Layout", "read_varint", "reseal", "uvarint"]


def reseal(body: bytes) -> bytes:
    """``body`` with its CRC32 appended: a message the parser reads past the checksum."""
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


def uvarint(n: int, pad: int = 0) -> bytes:
    """LEB128 of ``n``, then ``pad`` redundant continuation bytes (a non-canonical encoding of the same value)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if (n or pad) else 0))
        if not n:
            break
    for i in range(pad):
        out.append(0x80 if i < pad - 1 else 0x00)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    n, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


class Layout:
    """Byte spans of every field of a valid (canonical) message."""

    def __init__(self, data: bytes):
        self.data = data
        self.fixed = {"magic": (0, 2), "version": (2, 3), "bundle_id": (3, 7), "split_tag": (7, 9), "rung": (9, 10)}
        pos, self.varints, self.values = 10, [], []
        for _ in range(6):
            v, end = read_varint(data, pos)
            self.varints.append((pos, end))
            self.values.append(v)
            pos = end
        self.fixed["n_payloads"] = (pos, pos + 1)
        n = data[pos]
        pos += 1
        self.lengths = []
        for _ in range(n):
            v, end = read_varint(data, pos)
            self.varints.append((pos, end))
            self.lengths.append(v)
            pos = end
        self.fixed["symbols_crc"] = (pos, pos + 4)
        pos += 4
        self.payloads = []
        for k in self.lengths:
            self.payloads.append((pos, pos + k))
            pos += k
        self.header_end = self.fixed["symbols_crc"][1]
        self.body_end = len(data) - 4
