"""Bitrate hints: what a request says about the link.

A hint is either a target in bits per pixel, or a link rate (kbit/s) with a frame rate, which becomes
``kbit_per_s * 1000 / fps`` bits per frame over the bundle's input pixels. A bundle's rate scheme
(:mod:`shared.rate.scheme`) turns it into an operating point: on a ladder the rung of
:func:`~shared.rate.scheme.select_rung`, the one rule for that, so an edge and a server holding the same bundle
always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["BitrateHint", "HintError"]


class HintError(ValueError):
    """A hint, rung or quality level a bundle's rate scheme cannot take (a level for a ladder, a rung out of range,
    a link to follow without a variable-rate network): the caller's mistake, said in one line."""


def _positive(name: str, v: float) -> float:
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {v}")
    return v


@dataclass(frozen=True)
class BitrateHint:
    """``BitrateHint(target_bpp=0.3)`` or ``BitrateHint(kbit_per_s=500, fps=15)``; raises ValueError otherwise."""

    target_bpp: Optional[float] = None
    kbit_per_s: Optional[float] = None
    fps: Optional[float] = None

    def __post_init__(self) -> None:
        link = (self.kbit_per_s, self.fps)
        if self.target_bpp is not None:
            if any(v is not None for v in link):
                raise ValueError("give either a target bpp or a link rate (kbit/s with fps), not both")
            _positive("target bpp", self.target_bpp)
        elif any(v is not None for v in link):
            if None in link:
                raise ValueError("a link-rate hint needs both kbit/s and fps")
            _positive("kbit/s", self.kbit_per_s)
            _positive("fps", self.fps)

    @property
    def is_set(self) -> bool:
        return self.target_bpp is not None or self.kbit_per_s is not None

    def bpp(self, input_hw: Tuple[int, int]) -> Optional[float]:
        """The hint in bits per pixel of a ``input_hw`` input (None when no hint is given)."""
        if self.target_bpp is not None:
            return float(self.target_bpp)
        if self.kbit_per_s is not None:
            return self.kbit_per_s * 1000.0 / self.fps / (input_hw[0] * input_hw[1])
        return None

    def rung(self, bundle) -> int:
        """The rung of ``bundle`` this hint selects (no hint: the top rung; a variable-rate bundle: its one network)."""
        return bundle.scheme.point(self).rung

    def __str__(self) -> str:
        if self.target_bpp is not None:
            return f"{self.target_bpp:g} bpp"
        if self.kbit_per_s is not None:
            return f"{self.kbit_per_s:g} kbit/s at {self.fps:g} fps"
        return "no hint"
