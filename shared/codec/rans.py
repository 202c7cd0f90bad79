"""CompressAI's rANS bitstream without torch or compressai: the edge's entropy coder, compiled or in Python.

The edge encodes; the cloud decodes with CompressAI's own ``RansDecoder``. So instead of moving both sides to
another coder (and another bitstream format), this module writes **byte for byte** what
``compressai.ans.RansEncoder.encode_with_indexes`` writes, and reads it back (``tests/test_edge_runtime.py``
checks both against CompressAI on random symbols, tables and escapes, and forged payloads). Why not a library:
neither CompressAI's coder nor ``constriction`` publishes Linux arm64 wheels, and the edge must install on an ARM
board.

The format (docs/bitstream.md): a 64-bit state, 32-bit words, 16-bit probability precision. Per symbol,
``value = symbol - offset[table]``; values outside ``[0, len - 2)`` code the table's last entry (the escape) and
then the raw value in 4-bit "bypass" chunks: first the chunk count (in runs of at most 15), then the chunks, least
significant first.

Two implementations, one API (:func:`encode_with_indexes`, :func:`decode_with_indexes`), chosen here once:

- ``"c"``: ``ranscoder.c`` through ctypes (``rans_compiled.py``), built by ``pip install`` as the package's
  extension; 10-30 ns a symbol;
- ``"python"``: the state recursion as one Python loop (table lookups and escapes in numpy), 0.2-0.3 us a
  symbol; the fallback wherever the library is not built or does not load (it says why: :data:`COMPILED_ERROR`).

``$SPLITINFER_RANS`` = ``c`` or ``python`` forces one (``c`` raises at import if the library cannot load).

Decoding is strict where CompressAI's decoder reads on blindly: a payload that ends early, keeps words after its
last symbol, does not end in the encoder's initial state, or holds an escape longer than an int32 gives
``BitstreamError``; every read is bounded.
"""

from __future__ import annotations

import contextlib
import os
from bisect import bisect_right
from typing import Dict, Iterator, List, Optional

import numpy as np

from ..bitstream import BitstreamError

__all__ = ["RansTables", "encode_with_indexes", "decode_with_indexes", "IMPLEMENTATIONS", "implementation", "using",
           "CODER_ENV", "COMPILED_ERROR", "PRECISION"]

PRECISION = 16
BYPASS_PRECISION = 4
MAX_BYPASS = (1 << BYPASS_PRECISION) - 1
MAX_CHUNKS = 16  # bypass chunks of one escape: 64 bits
_L = 1 << 31  # the state's lower bound (ryg's RANS64_L)
_M32 = 0xFFFFFFFF
_LOW = (1 << PRECISION) - 1
CODER_ENV = "SPLITINFER_RANS"

# one message per failure, raised alike by both implementations (ranscoder.h's return codes)
ERRORS = {
    -1: (ValueError, "bad arguments to the rANS coder"),
    -2: (ValueError, "table index out of range"),
    -3: (ValueError, "inconsistent CDF tables (a length outside [2, width] or an entry of zero frequency)"),
    -4: (ValueError, "a symbol outside int32 (the range CompressAI's coder codes)"),
    -5: (BitstreamError, "rANS payload truncated: it ends before its symbols do"),
    -6: (BitstreamError, "rANS payload has an escape longer than any int32 symbol"),
    -7: (BitstreamError, "rANS payload has words left after its last symbol"),
    -8: (BitstreamError, "rANS payload does not decode to the coder's initial state"),
}


def _fail(code: int):
    exc, msg = ERRORS[code]
    raise exc(msg)


class RansTables:
    """One entropy model's quantised CDF tables, as CompressAI stores them (``compressai_adapter.cdf_tables``:
    the CDFs padded to the longest table, their lengths, their offsets). Checked once here: every table starts at
    0, rises strictly and ends at 2**16 (what CompressAI's quantisation guarantees), so no symbol has frequency 0."""

    def __init__(self, cdf: np.ndarray, lengths: np.ndarray, offsets: np.ndarray):
        self.cdf = np.ascontiguousarray(cdf, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if self.cdf.ndim != 2 or len(self.lengths) != len(self.cdf) or len(self.offsets) != len(self.cdf):
            raise ValueError(f"inconsistent CDF tables: cdf {self.cdf.shape}, {len(self.lengths)} lengths, "
                             f"{len(self.offsets)} offsets")
        n, width = self.cdf.shape
        if n == 0 or (self.lengths < 2).any() or (self.lengths > width).any():
            raise ValueError(f"inconsistent CDF tables: lengths must lie in [2, {width}] ({n} tables)")
        inside = np.arange(width) < self.lengths[:, None]
        rises = (np.diff(self.cdf, axis=1) > 0) | ~inside[:, 1:]
        if (self.cdf[:, 0] != 0).any() or not rises.all() or \
                (self.cdf[np.arange(n), self.lengths - 1] != 1 << PRECISION).any():
            raise ValueError("inconsistent CDF tables: each must rise strictly from 0 to 2**16")
        i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
        self._c = (i32(self.cdf), i32(self.lengths), i32(self.offsets))
        self._rows: Optional[List[List[int]]] = None

    def c_arrays(self):
        """(cdf, lengths, offsets) as contiguous int32: what ``ranscoder.c`` reads."""
        return self._c

    def rows(self) -> List[List[int]]:
        """Each table's CDF as a list, cut to its length (the Python decoder's binary search)."""
        if self._rows is None:
            self._rows = [r[:n] for r, n in zip(self.cdf.tolist(), self.lengths.tolist())]
        return self._rows


def _flat_indexes(indexes, tables: RansTables) -> np.ndarray:
    idx = np.asarray(indexes, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(tables.cdf)):
        _fail(-2)
    return idx


# ------------------------------------------------------------------------------------------------ Python
def _bypass(raw: int) -> List[int]:
    """An escape's raw value as 4-bit bypass chunks: the chunk count (runs of at most 15), then the chunks."""
    n = 0
    while raw >> (n * BYPASS_PRECISION):
        n += 1
    out = [MAX_BYPASS] * (n // MAX_BYPASS) + [n % MAX_BYPASS]
    return out + [(raw >> (j * BYPASS_PRECISION)) & MAX_BYPASS for j in range(n)]


class PythonCoder:
    """The coder in Python and numpy: the fallback, and the readable statement of the format."""

    name = "python"
    where = __file__

    def encode_with_indexes(self, symbols: np.ndarray, indexes: np.ndarray, tables: RansTables) -> bytes:
        sym = np.asarray(symbols, dtype=np.int64).reshape(-1)
        if sym.size != np.size(indexes):
            raise ValueError(f"{sym.size} symbols but {np.size(indexes)} indexes")
        idx = _flat_indexes(indexes, tables)
        if sym.size and (sym.min() < -(2**31) or sym.max() >= 2**31):
            _fail(-4)
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

    def decode_with_indexes(self, data: bytes, indexes: np.ndarray, tables: RansTables) -> np.ndarray:
        shape = np.shape(indexes)
        idx = _flat_indexes(indexes, tables).tolist()
        data = bytes(data)
        if len(data) < 8 or len(data) % 4:
            _fail(-5)
        words = np.frombuffer(data, dtype="<u4").tolist()
        n_words, pos = len(words), 2
        x = words[0] | words[1] << 32
        rows, offsets = tables.rows(), tables.offsets.tolist()
        out = []
        for t in idx:
            row = rows[t]
            s = bisect_right(row, x & _LOW) - 1  # the last entry <= the state's low bits (the row ends at 2**16)
            start = row[s]
            x = (row[s + 1] - start) * (x >> PRECISION) + (x & _LOW) - start
            if x < _L:
                if pos == n_words:
                    _fail(-5)
                x, pos = x << 32 | words[pos], pos + 1
            max_value = len(row) - 2
            if s == max_value:  # an escape: the chunk count (runs of 15), then the chunks, least significant first
                chunks, bits = 0, MAX_BYPASS
                while bits == MAX_BYPASS:
                    bits, x, pos = _get_bits(x, words, pos)
                    chunks += bits
                    if chunks > MAX_CHUNKS:
                        _fail(-6)
                raw = 0
                for j in range(chunks):
                    bits, x, pos = _get_bits(x, words, pos)
                    raw |= bits << (BYPASS_PRECISION * j)
                if raw >> 34:  # no int32 symbol codes a raw value this large
                    _fail(-6)
                s = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + max_value
            sym = s + offsets[t]
            if not -(2**31) <= sym < 2**31:
                _fail(-6)
            out.append(sym)
        if pos != n_words:
            _fail(-7)
        if x != _L:
            _fail(-8)
        return np.asarray(out, dtype=np.int32).reshape(shape)


def _get_bits(x: int, words: List[int], pos: int):
    bits, x = x & MAX_BYPASS, x >> BYPASS_PRECISION
    if x < _L:
        if pos == len(words):
            _fail(-5)
        x, pos = x << 32 | words[pos], pos + 1
    return bits, x, pos


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


# ------------------------------------------------------------------------------------------------ the choice
def _implementations():
    from .rans_compiled import CompiledCoder, load

    found: Dict[str, object] = {"python": PythonCoder()}
    lib, where = load()
    if lib is not None:
        found["c"] = CompiledCoder(lib, where, ERRORS)
    return found, (None if lib is not None else where)


IMPLEMENTATIONS, COMPILED_ERROR = _implementations()
_want = os.environ.get(CODER_ENV, "").strip().lower() or ("c" if "c" in IMPLEMENTATIONS else "python")
if _want not in ("c", "python"):
    raise ValueError(f"${CODER_ENV} must be c or python, not {_want!r}")
if _want not in IMPLEMENTATIONS:
    raise ImportError(f"${CODER_ENV}=c but the compiled rANS coder cannot load: {COMPILED_ERROR}")
_active = IMPLEMENTATIONS[_want]


def implementation() -> str:
    """The coder in use: ``"c"`` or ``"python"``."""
    return _active.name


@contextlib.contextmanager
def using(name: str) -> Iterator[None]:
    """Run a block with the named implementation (tests, benchmarks; process-wide, not for concurrent use)."""
    global _active
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"no {name!r} rANS coder here ({', '.join(IMPLEMENTATIONS)}; compiled: {COMPILED_ERROR})")
    old, _active = _active, IMPLEMENTATIONS[name]
    try:
        yield
    finally:
        _active = old


def encode_with_indexes(symbols: np.ndarray, indexes: np.ndarray, tables: RansTables) -> bytes:
    """``RansEncoder().encode_with_indexes(symbols, indexes, cdf, lengths, offsets)`` without compressai."""
    return _active.encode_with_indexes(symbols, indexes, tables)


def decode_with_indexes(data: bytes, indexes: np.ndarray, tables: RansTables) -> np.ndarray:
    """``RansDecoder().decode_with_indexes`` without compressai: int32 symbols shaped like ``indexes``; a payload
    that is not one this coder wrote for these indexes and tables gives ``BitstreamError`` (see the module doc)."""
    return _active.decode_with_indexes(data, indexes, tables)
