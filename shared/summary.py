"""Summary figures of rate-accuracy curves: the bpp each method needs near the reference, and BD-rates.

Both figures work on a curve's **monotone envelope** (:func:`envelope`): the measured points sorted by
bpp, keeping only those more accurate than every cheaper point (a point that costs more bits for no
more accuracy is never the one to operate at). Accuracies are fractions, as in ``results.json``.

* :func:`bpp_to_reach`: the bpp at which the envelope first reaches a target accuracy, interpolating
  linearly in log-bpp between the two measured points around it. ``None`` ("not reached") when no
  measured point gets there; flagged as an upper bound when the cheapest point already does.
* :func:`bd_rate`: Bjontegaard-delta rate (VCEG-M33) with accuracy in place of PSNR: log(bpp) as a
  function of accuracy for each curve, integrated over the accuracy range both curves cover; the mean
  difference d gives ``100 * (exp(d) - 1)`` percent. Negative: the tested curve needs fewer bits for the
  same accuracy. The default interpolant is piecewise-cubic Hermite (**pchip**, the variant of the
  later VCEG/JCT-VC BD-rate tools): it passes through every point and stays monotone, where the original
  cubic polynomial fit (``variant="cubic"``, also available) can swing between noisy accuracy points.
  With fewer than 4 envelope points on either curve it falls back to linear interpolation of log(bpp)
  and says so; with fewer than 2, or no overlapping range, it gives ``None`` and the reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .tasks import metric_labels

__all__ = ["METRIC_LABELS", "bd_rate", "bpp_to_reach", "envelope", "ladder_label", "summarize", "summary_markdown"]

MARGINS = (1, 3)  # percentage points below the reference
VARIANTS = ("pchip", "cubic", "linear")
_ORDER = {"jpeg": 0, "webp": 1, "avif": 2, "hevc": 3}  # codec columns in this order, others after
# how the accuracy figures of results.json read in tables and plots (each task declares its own)
METRIC_LABELS = metric_labels()


def envelope(points: Sequence[Dict], metric: str = "top1") -> List[Tuple[float, float]]:
    """(bpp, accuracy) of the points on the monotone envelope: sorted by bpp, accuracy strictly rising."""
    pts = []
    for p in points:
        b, a = p.get("bpp"), p.get(metric)
        if b is not None and a is not None and b > 0 and math.isfinite(b) and math.isfinite(a):
            pts.append((float(b), float(a)))
    out: List[Tuple[float, float]] = []
    for b, a in sorted(pts, key=lambda t: (t[0], -t[1])):
        if not out or a > out[-1][1]:
            out.append((b, a))
    return out


def bpp_to_reach(points: Sequence[Dict], target: float, metric: str = "top1") -> Dict:
    """The bpp at which the curve reaches accuracy ``target``: ``{"bpp", "reached", "upper_bound", "reason"}``."""
    env = envelope(points, metric)
    target -= 1e-9  # 0.79 - 0.01 > 0.78 in floating point: a point exactly at the margin counts
    if not env:
        return {"bpp": None, "reached": False, "reason": f"no measured {metric}"}
    if env[-1][1] < target:
        best_b, best_a = env[-1]
        return {"bpp": None, "reached": False,
                "reason": f"not reached (best {100 * best_a:.2f}% at {best_b:.4f} bpp)"}
    if env[0][1] >= target:
        return {"bpp": env[0][0], "reached": True, "upper_bound": True,
                "reason": "the cheapest measured point already reaches it; the true bpp may be lower"}
    for (b0, a0), (b1, a1) in zip(env, env[1:]):
        if a0 < target <= a1:
            t = (target - a0) / (a1 - a0)
            return {"bpp": math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))), "reached": True,
                    "upper_bound": False, "reason": None}
    raise AssertionError("unreachable: the envelope rises monotonically")


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, variant: str) -> float:
    """Integral over [lo, hi] of y(x) (log-bpp against accuracy) under the chosen interpolant."""
    if variant == "cubic":
        poly = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    if variant == "pchip":
        from scipy.interpolate import PchipInterpolator

        return float(PchipInterpolator(x, y, extrapolate=False).integrate(lo, hi))
    knots = np.concatenate([[lo], x[(x > lo) & (x < hi)], [hi]])  # piecewise linear: trapezoids are exact
    vals = np.interp(knots, x, y)
    return float(np.sum((knots[1:] - knots[:-1]) * (vals[1:] + vals[:-1]) / 2))


def bd_rate(test: Sequence[Dict], anchor: Sequence[Dict], metric: str = "top1", variant: str = "pchip") -> Dict:
    """BD-rate of ``test`` against ``anchor`` in percent: ``{"bd_rate", "variant", "overlap", "points", "reason", "note"}``.

    ``bd_rate`` is ``None`` (with ``reason``) when either envelope has fewer than 2 points or the accuracy
    ranges do not overlap; ``variant`` is the interpolant actually used ("linear" when a curve has < 4 points).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown BD-rate variant {variant!r} (one of {', '.join(VARIANTS)})")
    et, ea = envelope(test, metric), envelope(anchor, metric)
    res: Dict = {"bd_rate": None, "variant": variant, "overlap": None, "points": [len(et), len(ea)],
                 "reason": None, "note": None}
    if min(len(et), len(ea)) < 2:
        res["reason"] = f"a curve has fewer than 2 points with {metric} on its envelope ({len(et)} and {len(ea)})"
        return res
    lo, hi = max(et[0][1], ea[0][1]), min(et[-1][1], ea[-1][1])
    if hi <= lo:
        res["reason"] = (f"no overlapping {metric} range ({100 * et[0][1]:.2f}-{100 * et[-1][1]:.2f}% vs "
                         f"{100 * ea[0][1]:.2f}-{100 * ea[-1][1]:.2f}%)")
        return res
    if variant != "linear" and min(len(et), len(ea)) < 4:
        res["variant"] = "linear"
        res["note"] = (f"fewer than 4 envelope points ({len(et)} and {len(ea)}): linear interpolation "
                       f"of log(bpp) instead of {variant}")
    ints = []
    for env in (et, ea):
        x = np.array([100 * a for _, a in env])  # accuracy in points: a better-conditioned cubic fit
        y = np.log([b for b, _ in env])
        ints.append(_integral(x, y, 100 * lo, 100 * hi, res["variant"]))
    mean_diff = (ints[0] - ints[1]) / (100 * (hi - lo))
    res.update(bd_rate=100 * (math.exp(mean_diff) - 1), overlap=[lo, hi])
    return res


def ladder_label(ladder: Dict) -> str:
    """The name of a ladder in tables and plots: ``splitinfer <bundle folder> (<bundle id, 8 chars>)``;
    the folder name is what tells ladders of one model apart (e.g. ``hyperprior-distill``)."""
    folder = Path(str(ladder.get("bundle", ""))).name or ladder["model"]
    return f"splitinfer {folder} ({ladder['bundle_id'][:8]})"


def summarize(ladders: Sequence[Dict], baselines: Sequence[Dict], metric: str = "top1",
              margins: Sequence[float] = MARGINS, variant: str = "pchip") -> Dict:
    """The ``summary`` section of ``results.json`` from its ``ladders`` and ``baselines``.

    Each ladder's target is its own reference (the unsplit model on the same images); the codecs run the
    first ladder's model on the same images, so they are measured against the first ladder's reference.
    """
    codecs = sorted({p["method"] for p in baselines}, key=lambda c: (c not in _ORDER, _ORDER.get(c, 0), c))
    first_ref = next((lad.get("reference", {}).get(metric) for lad in ladders), None)
    curves = [(ladder_label(lad), "ladder", lad.get("rungs", []), lad.get("reference", {}).get(metric))
              for lad in ladders]
    curves += [(c.upper(), "codec", [p for p in baselines if p["method"] == c], first_ref) for c in codecs]
    methods = []
    for label, kind, pts, ref in curves:
        within = {}
        for m in margins:
            key = f"{m:g}"
            if ref is None:
                within[key] = {"bpp": None, "reached": False, "reason": f"no reference {metric} (unlabelled images?)"}
            else:
                within[key] = {"target": ref - m / 100, **bpp_to_reach(pts, ref - m / 100, metric)}
        methods.append({"method": label, "kind": kind, "reference": ref, "within": within})
    bd = [{"ladder": ladder_label(lad), "codec": c,
           **bd_rate(lad.get("rungs", []), [p for p in baselines if p["method"] == c], metric, variant)}
          for lad in ladders for c in codecs]
    return {
        "metric": metric,
        "margins_points": list(margins),
        "within_rule": "monotone envelope of the measured points, linear interpolation in log(bpp)",
        "bd_rate_rule": (f"Bjontegaard-delta rate, log(bpp) against {metric} interpolated by {variant} "
                         "(linear when a curve has < 4 envelope points) over the overlapping range; "
                         "negative = the ladder needs fewer bits than the codec"),
        "methods": methods,
        "bd_rate": bd,
        # every other ladder against the first one given (e.g. a variable-rate network against a per-rung ladder)
        "bd_rate_vs_first": [{"ladder": ladder_label(lad), "anchor": ladder_label(ladders[0]),
                              **bd_rate(lad.get("rungs", []), ladders[0].get("rungs", []), metric, variant)}
                             for lad in ladders[1:]],
    }


def _fmt_within(w: Dict) -> str:
    if w.get("bpp") is None:
        return "not reached" if "not reached" in (w.get("reason") or "") else "n/a"
    return ("≤ " if w.get("upper_bound") else "") + f"{w['bpp']:.4f}"


def _fmt_bd(r: Optional[Dict]) -> str:
    if r is None:
        return "—"
    if r["bd_rate"] is None:
        return "n/a"
    return f"{r['bd_rate']:+.1f}%" + (" (lin.)" if r["variant"] == "linear" else "")


def summary_markdown(summary: Dict) -> List[str]:
    """Markdown lines: one row per method (bpp within each margin, BD-rate against each codec), notes below."""
    margins = [f"{m:g}" for m in summary["margins_points"]]
    codecs = [m["method"] for m in summary["methods"] if m["kind"] == "codec"]
    bd = {(r["ladder"], r["codec"].upper()): r for r in summary["bd_rate"]}
    head = ["method"] + [f"bpp within {m} point{'s' if m != '1' else ''}" for m in margins]
    head += [f"BD-rate vs {c}" for c in codecs]
    vs_first = {r["ladder"]: r for r in summary.get("bd_rate_vs_first", [])}
    if vs_first:
        head.append("BD-rate vs the first ladder")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m in summary["methods"]:
        row = [m["method"]] + [_fmt_within(m["within"][k]) for k in margins]
        row += [_fmt_bd(bd.get((m["method"], c))) for c in codecs]
        if vs_first:
            row.append(_fmt_bd(vs_first.get(m["method"])) if m["kind"] == "ladder" else "—")
        lines.append("| " + " | ".join(row) + " |")
    metric = METRIC_LABELS.get(summary["metric"], summary["metric"])
    notes = [f"{metric} within N points of the unsplit model's; {summary['within_rule']}; "
             "'≤' = the cheapest measured point already qualifies.", f"BD-rate: {summary['bd_rate_rule']}."]
    for r in summary["bd_rate"]:
        if r["bd_rate"] is None:
            notes.append(f"BD-rate {r['ladder']} vs {r['codec'].upper()}: n/a, {r['reason']}.")
        elif r["note"]:
            notes.append(f"BD-rate {r['ladder']} vs {r['codec'].upper()}: {r['note']}.")
    for r in vs_first.values():
        if r["bd_rate"] is None:
            notes.append(f"BD-rate {r['ladder']} vs {r['anchor']}: n/a, {r['reason']}.")
        else:
            notes.append(f"BD-rate {r['ladder']} vs {r['anchor']}: {r['bd_rate']:+.1f}% over "
                         f"{100 * r['overlap'][0]:.2f}-{100 * r['overlap'][1]:.2f}% {metric}"
                         + (f" ({r['note']})" if r["note"] else "") + ".")
    for m in summary["methods"]:
        for k in margins:
            w = m["within"][k]
            if w.get("bpp") is None:
                notes.append(f"{m['method']}, within {k}: {w['reason']}.")
    return lines + [""] + [f"- {n}" for n in notes]
