"""The integer hyper-synthesis's exact path in numpy: what the edge runs without torch.

Same arithmetic as ``IntHyperSynthesis.exact`` (``integer.py``, which documents the scheme): float64 sums
of integers (exact below 2**53, so BLAS's summation order does not matter), int64 requantisation with a
multiplier and a 24-bit shift, clipped activations, pixel shuffles. ``tests/test_edge_runtime.py`` checks
that both give identical table indexes and means on every rung of the embedded ladders.

The grid constants live here (torch-free) and ``integer.py`` imports them: one definition for both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["W_MAX", "ACT_MAX", "ACT_FRAC", "OUT_FRAC", "SHIFT", "IN_MAX", "IntLayer", "int_hyper_synthesis"]

W_MAX = 127  # weights: 8-bit signed
ACT_MAX = 255  # activations: 8-bit unsigned
ACT_FRAC = 4  # activations live on a grid of 2**-4: [0, 15.94]
OUT_FRAC = 8  # outputs (index logits, means) on a grid of 2**-8
SHIFT = 24  # requantisation: multipliers carry 24 fractional bits
IN_MAX = 127  # |z symbols| are clipped to this before h_s (bounds the first layer's sums)


@dataclass
class IntLayer:
    """One exported ``IntConv2d``: int8 weights (O, C, k, k), int64 multipliers and biases (O,), the output
    clip in integer units (None: unbounded) and the pixel-shuffle factor that follows it."""

    w: np.ndarray
    mult: np.ndarray
    bias: np.ndarray
    lo: Optional[int]
    hi: Optional[int]
    up: int = 1

    def __post_init__(self):
        self._l1 = int(np.abs(self.w.astype(np.int64)).sum(axis=(1, 2, 3)).max())  # largest sum of |weights|

    def __call__(self, x: np.ndarray, in_max: int) -> np.ndarray:
        """``in_max`` bounds |x|: when every partial sum stays below 2**24, float32 sums are exact too (and
        twice as fast); otherwise float64 (exact below 2**53, which ``IntConv2d.export`` guarantees)."""
        o, c, k, _ = self.w.shape
        acc = _conv_sum(x, self.w, k // 2, np.float32 if self._l1 * in_max < 2**24 else np.float64)
        v = acc * self.mult.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1) + (1 << (SHIFT - 1))
        v >>= SHIFT  # arithmetic shift: floor division, like torch.div(..., rounding_mode="floor")
        if self.lo is not None or self.hi is not None:
            np.clip(v, self.lo, self.hi, out=v)
        return _pixel_shuffle(v, self.up) if self.up > 1 else v


def _conv_sum(x: np.ndarray, w: np.ndarray, pad: int, dtype) -> np.ndarray:
    """Integer convolution sums (stride 1, zero padding) as int64, via im2col and a float matrix product (exact:
    every product and partial sum is an integer the float type represents exactly, see ``IntLayer``)."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x.astype(dtype), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # n, c, h, w, k, k
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * wd, c * k * k)
    acc = cols @ w.reshape(o, c * k * k).T.astype(dtype)
    return np.rint(acc).astype(np.int64).reshape(n, h, wd, o).transpose(0, 3, 1, 2)


def _pixel_shuffle(x: np.ndarray, r: int) -> np.ndarray:
    n, c, h, w = x.shape
    return (x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
            .reshape(n, c // (r * r), h * r, w * r))


def int_hyper_synthesis(layers: Sequence[IntLayer], z_sym: np.ndarray, levels: int, means: bool,
                        y_hw: Tuple[int, int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """z symbols (1, hyper, h, w) -> (int64 table indexes, float32 means on the 2**-8 grid), cropped to y."""
    x = np.clip(np.asarray(z_sym, dtype=np.int64), -IN_MAX, IN_MAX)
    bound = IN_MAX
    for layer in layers:
        x = layer(x, bound)
        bound = max(abs(layer.lo), abs(layer.hi)) if layer.lo is not None and layer.hi is not None else 2**62
    x = x[..., : y_hw[0], : y_hw[1]]
    t, m = np.split(x, 2, axis=1) if means else (x, None)
    half = 1 << (OUT_FRAC - 1)
    idx = np.clip((t + half) >> OUT_FRAC, 0, levels - 1)
    return idx, (m.astype(np.float32) / np.float32(2**OUT_FRAC) if m is not None else None)


def layers_from_arrays(arrays, specs: List[dict], prefix: str) -> List[IntLayer]:
    """Rebuild the layers from an edge package's arrays (``{prefix}{i}.w``...) and manifest specs."""
    return [IntLayer(np.asarray(arrays[f"{prefix}{i}.w"], dtype=np.int8), np.asarray(arrays[f"{prefix}{i}.mult"]),
                     np.asarray(arrays[f"{prefix}{i}.bias"]), s["lo"], s["hi"], s["up"]) for i, s in enumerate(specs)]
