"""The integer hyper-synthesis's exact path as the edge runs it, without torch: compiled (``hyperdec.c``) or numpy.

Same arithmetic as ``IntHyperSynthesis.exact`` (``integer.py``, which documents the scheme): integer sums (float
sums of integers in numpy, exact below 2**53, so BLAS's summation order does not matter; int16 products in int32
or int64 sums in C), int64 requantisation with a multiplier and a 24-bit shift, clipped activations, pixel
shuffles. ``tests/test_hyperdec.py`` checks that all three give identical table indexes and means on every rung
and level of the embedded bundles and on random layers up to the edges of the exact range.

Two implementations, one function (:func:`int_hyper_synthesis`), chosen here once like the rANS coder's:

- ``"c"``: ``hyperdec.c``, in the library that holds the compiled rANS coder (``rans_compiled.py`` loads it);
- ``"numpy"``: :func:`numpy_hyper_synthesis` below, the fallback where that library is not built, does not load
  or predates the hyper-decoder (it says why: :data:`COMPILED_ERROR`).

``$SPLITINFER_HS`` = ``c`` or ``numpy`` forces one (``c`` raises at import if the compiled one cannot load).
Both refuse, with the same ``ValueError``, layers that do not chain and layers whose sums could leave the exact
range (an exported h_s never does: ``IntConv2d.export`` checks it).

The grid constants live here (torch-free) and ``integer.py`` imports them: one definition for both paths.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["W_MAX", "ACT_MAX", "ACT_FRAC", "OUT_FRAC", "SHIFT", "IN_MAX", "EXACT_LIMIT", "IntLayer",
           "int_hyper_synthesis", "numpy_hyper_synthesis", "layers_from_arrays", "IMPLEMENTATIONS",
           "implementation", "using", "HS_ENV", "COMPILED_ERROR"]

W_MAX = 127  # weights: 8-bit signed
ACT_MAX = 255  # activations: 8-bit unsigned
ACT_FRAC = 4  # activations live on a grid of 2**-4: [0, 15.94]
OUT_FRAC = 8  # outputs (index logits, means) on a grid of 2**-8
SHIFT = 24  # requantisation: multipliers carry 24 fractional bits
IN_MAX = 127  # |z symbols| are clipped to this before h_s (bounds the first layer's sums)
EXACT_LIMIT = 2**53  # every sum and requantised value stays below this: float64 sums of integers are exact there
MAX_LAYERS = 64  # (hyperdec.h's SI_HS_MAX_LAYERS) more is not an h_s
HS_ENV = "SPLITINFER_HS"

# one message per failure, raised alike by both implementations (hyperdec.h's return codes)
ERRORS = {
    -1: (ValueError, "integer h_s: shapes that do not chain"),
    -2: (ValueError, "integer h_s: a layer's sums could leave the range where they are exact (2**53); "
                     "not an exported h_s"),
}


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
    _in_range: Dict[int, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.w = np.ascontiguousarray(self.w, dtype=np.int8)
        self.mult = np.ascontiguousarray(self.mult, dtype=np.int64).reshape(-1)
        self.bias = np.ascontiguousarray(self.bias, dtype=np.int64).reshape(-1)
        self.lo = None if self.lo is None else int(self.lo)
        self.hi = None if self.hi is None else int(self.hi)
        self.up = int(self.up)
        o, _, k, k2 = self.w.shape if len(self.w.shape) == len("ocyx") else (0, 0, 0, 0)  # (out, in, k, k)
        if o < 1 or k != k2 or k % 2 == 0 \
                or len(self.mult) != o or len(self.bias) != o or self.up < 1 or o % (self.up * self.up):
            raise ValueError(f"{ERRORS[-1][1]}: weights {self.w.shape} (odd square kernels), {len(self.mult)} "
                             f"multipliers, {len(self.bias)} biases, pixel shuffle {self.up}")
        if any(v is not None and abs(v) >= EXACT_LIMIT for v in (self.lo, self.hi)):
            raise ValueError(f"integer h_s: a clip bound at or beyond 2**53 (lo {self.lo}, hi {self.hi})")
        self._l1c = [int(v) for v in np.abs(self.w.astype(np.int64)).sum(axis=(1, 2, 3))]  # sum |w| per channel
        self._l1 = max(self._l1c)

    @property
    def bound(self) -> int:
        """The largest |output| the clip allows: the next layer's input bound (unclipped: beyond any exact one)."""
        return max(abs(self.lo), abs(self.hi)) if self.lo is not None and self.hi is not None else 2**62

    def check_range(self, in_max: int) -> None:
        """Raise unless every sum and requantised value stays below 2**53 for inputs |x| <= ``in_max``: where
        the float sums here and in torch are exact, and what ``hyperdec.c`` checks alike."""
        ok = self._in_range.get(in_max)
        if ok is None:
            ok = all(l1 * in_max < EXACT_LIMIT and abs(m) * l1 * in_max + abs(b) + (1 << (SHIFT - 1)) < EXACT_LIMIT
                     for l1, m, b in zip(self._l1c, self.mult.tolist(), self.bias.tolist()))
            self._in_range[in_max] = ok
        if not ok:
            raise ValueError(ERRORS[-2][1])

    def __call__(self, x: np.ndarray, in_max: int) -> np.ndarray:
        """``in_max`` bounds |x|: when every partial sum stays below 2**24, float32 sums are exact too (and
        twice as fast); otherwise float64 (exact below 2**53, which ``check_range`` guarantees)."""
        self.check_range(in_max)
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


def _plan(layers: Sequence[IntLayer], shape: Tuple[int, ...], levels: int, means: bool,
          y_hw: Tuple[int, int]) -> Tuple[int, int]:
    """Check that the layers chain from z's shape (both implementations, one message); the crop (h, w) of the
    output that the indexes and means cover (numpy's slice: at most the output's size)."""
    if not 1 <= len(layers) <= MAX_LAYERS or len(shape) != 4 or min(shape[1:]) < 1 or int(levels) < 1 \
            or min(y_hw) < 0:
        raise ValueError(f"{ERRORS[-1][1]}: {len(layers)} layers, z {tuple(shape)} (n, c, h, w), {levels} levels, "
                         f"y {tuple(y_hw)}")
    c, h, w = shape[1:]
    for i, layer in enumerate(layers):
        if layer.w.shape[1] != c:
            raise ValueError(f"{ERRORS[-1][1]}: layer {i} takes {layer.w.shape[1]} channels, gets {c}")
        c, h, w = layer.w.shape[0] // layer.up**2, h * layer.up, w * layer.up
    if means and c % 2:
        raise ValueError(f"{ERRORS[-1][1]}: {c} output channels do not split into index logits and means")
    return min(int(y_hw[0]), h), min(int(y_hw[1]), w)


def numpy_hyper_synthesis(layers: Sequence[IntLayer], z_sym: np.ndarray, levels: int, means: bool,
                          y_hw: Tuple[int, int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The numpy implementation of :func:`int_hyper_synthesis`."""
    x = np.clip(np.asarray(z_sym, dtype=np.int64), -IN_MAX, IN_MAX)
    crop = _plan(layers, x.shape, levels, means, y_hw)
    bound = IN_MAX
    for layer in layers:
        x = layer(x, bound)
        bound = layer.bound
    x = x[..., : crop[0], : crop[1]]
    t, m = np.split(x, 2, axis=1) if means else (x, None)
    half = 1 << (OUT_FRAC - 1)
    idx = np.clip((t + half) >> OUT_FRAC, 0, levels - 1)
    return idx, (m.astype(np.float32) / np.float32(2**OUT_FRAC) if m is not None else None)


def layers_from_arrays(arrays, specs: List[dict], prefix: str) -> List[IntLayer]:
    """Rebuild the layers from an edge package's arrays (``{prefix}{i}.w``...) and manifest specs."""
    return [IntLayer(np.asarray(arrays[f"{prefix}{i}.w"], dtype=np.int8), np.asarray(arrays[f"{prefix}{i}.mult"]),
                     np.asarray(arrays[f"{prefix}{i}.bias"]), s["lo"], s["hi"], s["up"]) for i, s in enumerate(specs)]


# ------------------------------------------------------------------------------------------------ the choice
def _implementations():
    from .rans_compiled import CompiledHyperDecoder, load

    found: Dict[str, object] = {"numpy": numpy_hyper_synthesis}
    lib, where = load()
    if lib is not None and getattr(lib, "has_hyperdec", False):
        found["c"] = CompiledHyperDecoder(lib, ERRORS, _plan, IN_MAX)
        return found, None
    return found, where if lib is None else f"{where} has no si_int_hyper (built before hyperdec.c: rebuild it)"


IMPLEMENTATIONS, COMPILED_ERROR = _implementations()
_want = os.environ.get(HS_ENV, "").strip().lower() or ("c" if "c" in IMPLEMENTATIONS else "numpy")
if _want not in ("c", "numpy"):
    raise ValueError(f"${HS_ENV} must be c or numpy, not {_want!r}")
if _want not in IMPLEMENTATIONS:
    raise ImportError(f"${HS_ENV}=c but the compiled integer h_s cannot load: {COMPILED_ERROR}")
_active = _want


def implementation() -> str:
    """The integer h_s in use: ``"c"`` or ``"numpy"``."""
    return _active


@contextlib.contextmanager
def using(name: str) -> Iterator[None]:
    """Run a block with the named implementation (tests, benchmarks; process-wide, not for concurrent use)."""
    global _active
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"no {name!r} integer h_s here ({', '.join(IMPLEMENTATIONS)}; compiled: {COMPILED_ERROR})")
    old, _active = _active, name
    try:
        yield
    finally:
        _active = old


def int_hyper_synthesis(layers: Sequence[IntLayer], z_sym: np.ndarray, levels: int, means: bool,
                        y_hw: Tuple[int, int]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """z symbols (n, hyper, h, w) -> (int64 table indexes, float32 means on the 2**-8 grid), cropped to y; with
    the implementation chosen above."""
    return IMPLEMENTATIONS[_active](layers, z_sym, levels, means, y_hw)
