"""One variable-rate image's latent, ready to code at any quality level, and the sizes of its messages.

The latent ``y``, its means and its integer table indexes do not depend on the quality level ``q`` (the
variable-rate network of :mod:`.variable_rate`), so one pass of the network serves every level.
:class:`LevelCoder` codes ``y`` at a level and *predicts* its payload's size (numpy: the code length of each
symbol under its table, escapes included; within a few bytes of the real one); :class:`MessageSizes` turns that
into whole-message sizes and searches the levels for a budget; :func:`level_message` builds the message.
Torch-free: both edges use it; rate control (:mod:`shared.rate`) sits above it.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np

from ..bitstream import Header, level_symbols_crc, pack
from .rans import PRECISION, RansTables, encode_with_indexes

__all__ = ["LevelCoder", "MessageSizes", "level_message", "MessageBuilder"]

# the message rate control asks for: (level, y payload, y symbols) -> the whole message
MessageBuilder = Callable[[int, bytes, np.ndarray], bytes]


class LevelCoder:
    """One image's latent, ready to code at any quality level ``q`` of ``levels = (lo, hi)``.

    ``y`` and ``means``: float32 (C, h, w); ``idx``: the integer hyper-decoder's table indexes; ``tables``: the
    y entropy model's CDF tables; ``log_ratio``: log of the ratio between neighbouring table scales."""

    def __init__(self, y: np.ndarray, means: np.ndarray, idx: np.ndarray, tables: RansTables, log_ratio: float,
                 levels: Tuple[int, int]):
        self.y, self.means = np.asarray(y, np.float32), np.asarray(means, np.float32)
        self.idx = np.asarray(idx, np.int64)
        self.tables, self.log_ratio, self.levels = tables, float(log_ratio), (int(levels[0]), int(levels[1]))
        self._centred = self.y - self.means

    def step(self, q: int) -> float:
        return math.exp(-int(q) * self.log_ratio)

    def symbols(self, q: int) -> np.ndarray:
        # float32 division by the step rounded to float32, half to even: what torch does in variable_rate.py
        return np.rint(self._centred / np.float32(self.step(q))).astype(np.int64)

    def indexes(self, q: int) -> np.ndarray:
        return np.clip(self.idx + int(q), 0, len(self.tables.cdf) - 1)

    def encode(self, q: int) -> Tuple[bytes, np.ndarray]:
        """(y payload, y symbols) at level ``q``."""
        sym = self.symbols(q)
        return encode_with_indexes(sym, self.indexes(q), self.tables), sym

    def predict_bytes(self, qs: Optional[np.ndarray] = None) -> np.ndarray:
        """Predicted y payload size at each level of ``qs`` (default: every level), from the code lengths."""
        qs = np.arange(self.levels[0], self.levels[1] + 1) if qs is None else np.asarray(qs)
        t = self.tables
        out = np.empty(len(qs))
        for k, q in enumerate(qs.tolist()):
            idx = self.indexes(q).reshape(-1)
            v = self.symbols(q).reshape(-1) - t.offsets[idx]
            max_value = t.lengths[idx] - 2
            escape = (v < 0) | (v >= max_value)
            value = np.where(escape, max_value, v)
            freq = t.cdf[idx, value + 1] - t.cdf[idx, value]
            bits = PRECISION * v.size - np.log2(np.maximum(freq, 1)).sum()
            if escape.any():  # raw value in 4-bit chunks, plus the chunk count
                raw = np.where(v < 0, -2 * v - 1, 2 * (v - max_value))[escape]
                chunks = np.ceil(np.log2(raw + 1) / 4)
                bits += 4 * (chunks + 1 + chunks // 15).sum()
            out[k] = 4 * math.ceil(bits / 32) + 8  # 32-bit words and the 64-bit final state
        return out


def level_message(bundle_id: bytes, tag: int, input_hw, y_hw, side_hw, z_payload: bytes,
                  z_symbols) -> MessageBuilder:
    """The message builder rate control calls, for one image: a version-2 message at level ``q`` around a y
    payload, with the side payload and the level folded into the symbol checksum (both edges use it)."""
    def message(q: int, y_payload: bytes, y_symbols: np.ndarray) -> bytes:
        crc = level_symbols_crc(q, y_symbols, z_symbols)
        return pack(Header(bundle_id, tag, 0, tuple(input_hw), tuple(y_hw), tuple(side_hw), crc, level=q),
                    [y_payload, z_payload])
    return message


class MessageSizes:
    """Predicted whole-message sizes per level, computed on demand and kept: the y payload's predicted size
    (:meth:`LevelCoder.predict_bytes`) plus the header and the side payload, exactly (a dry message)."""

    def __init__(self, coder: LevelCoder, message: MessageBuilder):
        self.coder, self.message, self._cache = coder, message, {}
        self._dummy = np.zeros(coder.y.shape, np.int64)

    def __call__(self, q: int) -> int:
        n = self._cache.get(q)
        if n is None:
            y = int(self.coder.predict_bytes([q])[0])
            n = self._cache[q] = len(self.message(int(q), bytes(y), self._dummy))
        return n

    def finest_within(self, lo: int, hi: int, budget: float) -> Optional[int]:
        """The finest level in ``lo..hi`` predicted to fit ``budget`` (sizes grow with the level: bisection, a
        handful of predictions instead of one per level); None if even ``lo`` does not."""
        if self(lo) > budget:
            return None
        if self(hi) <= budget:
            return hi
        while hi - lo > 1:  # self(lo) <= budget < self(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self(mid) <= budget else (lo, mid)
        return lo

    def coarsest_above(self, lo: int, hi: int, least: float) -> Optional[int]:
        """The coarsest level in ``lo..hi`` predicted to take at least ``least`` bytes; None if even ``hi`` does not."""
        if self(hi) < least:
            return None
        if self(lo) >= least:
            return lo
        while hi - lo > 1:  # self(lo) < least <= self(hi)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self(mid) >= least else (mid, hi)
        return hi
