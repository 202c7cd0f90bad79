"""CompressAI's rANS encoder without torch or compressai: the edge's entropy coder.

The edge only encodes; the cloud decodes with CompressAI's own ``RansDecoder``. So instead of moving both
sides to another coder (and another bitstream format), this module writes **byte for byte** what
``compressai.ans.RansEncoder.encode_with_indexes`` writes (``tests/test_rans.py`` checks it on random
symbols, tables and escapes). Why not a library: neither CompressAI's coder nor ``constriction`` publishes
Linux arm64 wheels, and the edge must install on an ARM board from wheels alone.

The format (CompressAI's ``rans_interface.cpp`` on ryg's ``rans64.h``): a 64-bit state, 32-bit words,
16-bit probability precision. Per symbol, ``value = symbol - offset[table]``; values outside
``[0, len - 2)`` code the table's last entry (the escape) and then the raw value in 4-bit "bypass" chunks:
first the chunk count (in runs of at most 15), then the chunks, least significant first.

Everything that does not depend on the coder state (table lookups, escapes) is vectorised with numpy; the
state recursion is one tight Python loop over the symbols (0.2-0.3 us each; a compiled coder would be ~10x faster).
"""

from __future__ import annotations

from typing import List

import numpy as np

__all__ = ["RansTables", "encode_with_indexes"]

PRECISION = 16
BYPASS_PRECISION = 4
MAX_BYPASS = (1 << BYPASS_PRECISION) - 1
_L = 1 << 31  # RANS64_L: the state's lower bound
_M32 = 0xFFFFFFFF


class RansTables:
    """One entropy model's quantised CDF tables, as CompressAI stores them (``compressai_adapter.cdf_tables``:
    the CDFs padded to the longest table, their lengths, their offsets)."""

    def __init__(self, cdf: np.ndarray, lengths: np.ndarray, offsets: np.ndarray):
        self.cdf = np.ascontiguousarray(cdf, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if self.cdf.ndim != 2 or len(self.lengths) != len(self.cdf) or len(self.offsets) != len(self.cdf):
            raise ValueError(f"inconsistent CDF tables: cdf {self.cdf.shape}, {len(self.lengths)} lengths, "
                             f"{len(self.offsets)} offsets")


def _bypass(raw: int) -> List[int]:
    """An escape's raw value as 4-bit bypass chunks: the chunk count (runs of at most 15), then the chunks."""
    n = 0
    while raw >> (n * BYPASS_PRECISION):
        n += 1
    out = [MAX_BYPASS] * (n // MAX_BYPASS) + [n % MAX_BYPASS]
    return out + [(raw >> (j * BYPASS_PRECISION)) & MAX_BYPASS for j in range(n)]


def encode_with_indexes(symbols: np.ndarray, indexes: np.ndarray, tables: RansTables) -> bytes:
    """``RansEncoder().encode_with_indexes(symbols, indexes, cdf, lengths, offsets)`` without compressai."""
    sym = np.asarray(symbols, dtype=np.int64).reshape(-1)
    idx = np.asarray(indexes, dtype=np.int64).reshape(-1)
    if sym.shape != idx.shape:
        raise ValueError(f"{sym.size} symbols but {idx.size} indexes")
    if idx.size and (idx.min() < 0 or idx.max() >= len(tables.cdf)):
        raise ValueError(f"table index out of range [0, {len(tables.cdf)})")
    max_value = tables.lengths[idx] - 2
    v = sym - tables.offsets[idx]
    escape = (v < 0) | (v >= max_value)
    value = np.where(escape, max_value, v)
    start = tables.cdf[idx, value]
    freq = tables.cdf[idx, value + 1] - start
    if escape.any():  # rare: interleave the bypass chunks (freq 0 marks one; start holds its 4 bits)
        raw = np.where(v < 0, -2 * v - 1, 2 * (v - max_value)).tolist()
        starts, freqs = [], []
        for s, f, e, r in zip(start.tolist(), freq.tolist(), escape.tolist(), raw):
            starts.append(s)
            freqs.append(f)
            if e:
                for chunk in _bypass(r):
                    starts.append(chunk)
                    freqs.append(0)
        start, freq = np.asarray(starts, dtype=np.int64), np.asarray(freqs, dtype=np.int64)
    return _encode(start, freq)


def _encode(start: np.ndarray, freq: np.ndarray) -> bytes:
    words: List[int] = []
    push = words.append
    x = _L
    bypass_max = ((_L >> PRECISION) << 32) << (PRECISION - BYPASS_PRECISION)
    # rANS codes in reverse so that the decoder reads forward
    for s, f in zip(start[::-1].tolist(), freq[::-1].tolist()):
        if f:
            if x >> 47 >= f:  # x >= ((RANS64_L >> 16) << 32) * freq, on small ints
                push(x & _M32)
                x >>= 32
            q, r = divmod(x, f)
            x = (q << PRECISION) + r + s
        else:  # a bypass chunk
            if x >= bypass_max:
                push(x & _M32)
                x >>= 32
            x = (x << BYPASS_PRECISION) | s
    # flush: the state's two words (low first), then the renormalisation words in reverse order of writing
    out = np.empty(len(words) + 2, dtype="<u4")
    out[0], out[1] = x & _M32, x >> 32
    out[2:] = words[::-1]
    return out.tobytes()
