"""Paired bootstrap intervals over images for the figures of ``splitinfer eval`` (numpy only).

Every figure of a measured point is a ratio of sums over its images: top-1 = correct / labelled images, pixel
accuracy = correct / labelled pixels, bpp = a constant times bytes / images. A resample draws the ``n``
images with replacement (as multinomial counts per image) and recomputes those sums. One seeded set of
resamples serves every curve measured on the same images, in the same order, so a difference between two
curves (a gap to the unsplit model, a BD-rate) is **paired**: what is hard or easy about an image is in
both terms and cancels. The interval is the percentile one: the central ``level`` share of the resampled
figure. Per-image records are ``evaluate_ladder(..., per_image=True)``'s (see ``Scores.per_image``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["RESAMPLES", "SEED", "LEVEL", "Resamples", "percentile_interval", "per_image_parts", "has_records",
           "gap_interval", "mean_interval", "resampled_curve"]

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
_CACHE_LIMIT = 20_000_000  # counts kept in memory up to this many entries (80 MB); more are drawn anew per use


def per_image_parts(record: Dict, figure: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(hits, counted) per image of ``figure`` in a ``per_image`` record, or None when it has no such figure:
    with ``<figure>_of`` (pixels) as recorded; else each image counts 1 (or 0 where its hit is None: unknown)."""
    vals = record.get(figure)
    if vals is None:
        return None
    of = record.get(figure + "_of")
    if of is not None:
        return np.asarray(vals, dtype=float), np.asarray(of, dtype=float)
    hits = np.array([0.0 if v is None else float(v) for v in vals])
    return hits, np.array([0.0 if v is None else 1.0 for v in vals])


def has_records(point: Dict, figure: str, n: Optional[int] = None) -> bool:
    """Whether ``point`` carries per-image ``figure`` (for ``n`` images, when given) with some image counted."""
    parts = per_image_parts(point.get("per_image") or {}, figure)
    return parts is not None and (n is None or len(parts[0]) == n) and parts[1].sum() > 0


class Resamples:
    """``resamples`` seeded bootstrap resamples of ``n`` images: :meth:`sums` of per-image columns on each.
    Two objects with the same ``n`` and ``seed`` draw the same resamples (pairing across calls)."""

    def __init__(self, n: int, resamples: int = RESAMPLES, seed: int = SEED):
        if n < 1:
            raise ValueError("no images to resample")
        self.n, self.resamples, self.seed = n, resamples, seed
        self._counts = self._draw() if n * resamples <= _CACHE_LIMIT else None

    def _draw(self, rows: Optional[int] = None) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.multinomial(self.n, np.full(self.n, 1.0 / self.n), size=rows or self.resamples).astype(np.int32)

    def sums(self, cols: np.ndarray) -> np.ndarray:
        """Per-image values (n,) or (n, k) -> their sums on every resample: (resamples,) or (resamples, k)."""
        cols = np.asarray(cols, dtype=float)
        if len(cols) != self.n:
            raise ValueError(f"{len(cols)} per-image values for {self.n} images")
        if self._counts is not None:
            return self._counts @ cols
        rng, step, out = np.random.default_rng(self.seed), max(1, _CACHE_LIMIT // self.n), []
        p = np.full(self.n, 1.0 / self.n)
        for start in range(0, self.resamples, step):  # the same draws as _draw, chunk by chunk
            out.append(rng.multinomial(self.n, p, size=min(step, self.resamples - start)) @ cols)
        return np.concatenate(out)

    def ratio(self, record: Dict, figure: str) -> np.ndarray:
        """``figure`` (a fraction) on every resample: resampled hits over resampled counted (NaN where none)."""
        parts = per_image_parts(record, figure)
        if parts is None:
            raise KeyError(f"no per-image {figure!r}")
        s = self.sums(np.stack(parts, axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return s[:, 0] / s[:, 1]

    def mean(self, values: Sequence[float]) -> np.ndarray:
        """The mean of per-image ``values`` on every resample."""
        return self.sums(np.asarray(values, dtype=float)) / self.n


def percentile_interval(samples: Sequence[float], level: float = LEVEL) -> Dict:
    """``{"interval": [low, high], "valid": k}``: the central ``level`` share of the samples; ``+inf`` (a bound
    never reached) is kept, NaN (no figure on that resample) left out, ``valid`` counts the rest. The bounds are
    samples, not interpolated between (``inverted_cdf``), so an infinite sample never turns into NaN."""
    s = np.asarray(samples, dtype=float)
    s = s[~np.isnan(s)]
    if not len(s):
        return {"interval": None, "valid": 0}
    a = (1 - level) / 2
    lo, hi = np.quantile(s, [a, 1 - a], method="inverted_cdf")
    return {"interval": [float(lo), float(hi)], "valid": int(len(s))}


def gap_interval(rs: Resamples, point: Dict, reference: Dict, figure: str, level: float = LEVEL) -> Dict:
    """``figure`` of ``point`` minus the reference's on the same images, in points (percentage points), with its
    paired interval: ``{"figure", "gap", "interval"}`` (both resampled on the same images)."""
    p, r = point["per_image"], reference["per_image"]
    d = 100 * (rs.ratio(p, figure) - rs.ratio(r, figure))
    ph, pc = per_image_parts(p, figure)
    rh, rc = per_image_parts(r, figure)
    gap = 100 * (ph.sum() / pc.sum() - rh.sum() / rc.sum())
    return {"figure": figure, "gap": float(gap), **percentile_interval(d, level)}


def mean_interval(rs: Resamples, record: Dict, figure: str, level: float = LEVEL) -> Dict:
    """``figure`` (a fraction) of one record with its interval: ``{"figure", "value", "interval"}``."""
    h, c = per_image_parts(record, figure)
    return {"figure": figure, "value": float(h.sum() / c.sum()), **percentile_interval(rs.ratio(record, figure), level)}


def resampled_curve(rs: Resamples, points: Sequence[Dict], metric: str) -> List[List[Dict]]:
    """The curve ``points`` on every resample: per resample, one ``{"bpp", metric}`` per point. A point's bpp is
    its bytes per image times a constant (8 / pixels), so the resampled bpp is the point's bpp scaled by the
    resampled over the measured mean bytes."""
    bpp, acc = [], []
    for p in points:
        rec = p["per_image"]
        b = np.asarray(rec["bytes"], dtype=float)
        bpp.append(p["bpp"] * rs.mean(b) / b.mean())
        acc.append(rs.ratio(rec, metric))
    bpp, acc = np.stack(bpp, axis=1), np.stack(acc, axis=1)
    return [[{"bpp": float(b), metric: (None if np.isnan(a) else float(a))} for b, a in zip(bs, as_)]
            for bs, as_ in zip(bpp, acc)]
