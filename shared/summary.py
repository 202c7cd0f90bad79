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

Where the points carry per-image records (``splitinfer eval``), :func:`summarize` adds 95% intervals, a
paired bootstrap over the images (:mod:`shared.intervals`): each point's gap to the unsplit model
(:func:`ladder_gaps`), each BD-rate and each bpp within N points, all recomputed on every resample of the
images; and for a variable-rate network the drop from its best level to its finest (:func:`level_check`,
the shipping rule: at most :data:`LEVEL_DROP_POINTS`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .intervals import (LEVEL, RESAMPLES, SEED, Resamples, gap_interval, has_records, mean_interval,
                        percentile_interval, resampled_curve)
from .tasks import all_metrics, metric_labels

__all__ = ["METRIC_LABELS", "LEVEL_DROP_POINTS", "accuracy_at", "accuracy_gap_at", "bd_rate", "bpp_to_reach", "envelope", "ladder_label", "ladder_gaps",
           "level_check", "level_check_line", "summarize", "summary_markdown", "fmt_interval", "images_line"]

MARGINS = (1, 3)  # percentage points below the reference
LEVEL_DROP_POINTS = 1.0  # shipping rule: a variable-rate network's finest level at most this far below its best
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


def accuracy_at(points: Sequence[Dict], bpp: float, metric: str = "top1") -> Optional[float]:
    """``metric`` at ``bpp`` on the curve's envelope, linear in log(bpp) between its points; above its costliest
    point that point's (it fits the budget); below its cheapest point None (the curve cannot go that low)."""
    env = envelope(points, metric)
    if env and bpp >= env[-1][0]:
        return env[-1][1]
    for (b0, a0), (b1, a1) in zip(env, env[1:]):
        if b0 <= bpp <= b1:
            t = (math.log(bpp) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return a0 + t * (a1 - a0)
    return env[0][1] if len(env) == 1 and abs(env[0][0] - bpp) < 1e-9 else None


def accuracy_gap_at(test: Sequence[Dict], anchor: Sequence[Dict], bpp: float, metric: str = "top1",
                    resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Dict:
    """``test`` minus ``anchor`` in ``metric`` points at the same rate ``bpp`` (:func:`accuracy_at` on both), with a
    paired bootstrap interval when both curves carry per-image records of the same images: ``{"bpp", "gap",
    "interval", "resamples_without"}`` (gap None where a curve does not reach down to ``bpp``)."""
    a, b = accuracy_at(test, bpp, metric), accuracy_at(anchor, bpp, metric)
    out = {"bpp": bpp, "gap": None if a is None or b is None else 100 * (a - b), "interval": None}
    n = len((test[0].get("per_image") or {}).get("bytes", ())) if test else 0
    if out["gap"] is None or not n or not (_pairable(test, metric, n) and _pairable(anchor, metric, n)):
        return out
    rs = Resamples(n, resamples, seed)
    vals = []
    for t, r in zip(resampled_curve(rs, test, metric), resampled_curve(rs, anchor, metric)):
        x, y = accuracy_at(t, bpp, metric), accuracy_at(r, bpp, metric)
        vals.append(math.nan if x is None or y is None else 100 * (x - y))
    iv = percentile_interval(vals, level)
    return {**out, "interval": iv["interval"], "resamples_without": len(vals) - iv["valid"]}


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


def _gap_figure(reference: Dict, metric: str) -> Optional[str]:
    """The figure gaps are measured in: ``metric`` when it is recorded per image (top-1), else the first of its
    task's figures that is (segmentation: pixel accuracy, since mIoU needs each image's confusion matrix)."""
    figures = next((f for f in all_metrics().values() if f[0] == metric), (metric,))
    return next((f for f in figures if has_records(reference, f, reference.get("n_images"))), None)


def ladder_gaps(ladder: Dict, metric: str, rs: Optional[Resamples], level: float = LEVEL) -> Dict:
    """Per point of a measured ladder: its gap to the unsplit model on the same images, in points, with the
    paired interval, and its agreement with the unsplit model with its interval:
    ``{"figure", "reason", "points": [{"rung", "level"?, "bpp", "gap", "interval", "agreement"}]}``."""
    ref = ladder.get("reference", {})
    figure = _gap_figure(ref, metric) if rs else None
    reason = None
    if rs is None:
        reason = "no per-image records (measured before intervals existed, or not by 'splitinfer eval')"
    elif figure is None:
        reason = f"no {metric} per image: the images carry no labels"
    points = []
    for p in ladder.get("rungs", []):
        row = {"rung": p.get("rung"), **({"level": p["level"]} if "level" in p else {}), "bpp": p.get("bpp")}
        if figure and has_records(p, figure, rs.n):
            row.update(gap_interval(rs, p, ref, figure, level))
        if rs and has_records(p, "agreement", rs.n):
            row["agreement"] = mean_interval(rs, p["per_image"], "agreement", level)
        points.append(row)
    return {"figure": figure, "reason": reason, "points": points}


def level_check(ladder: Dict, metric: str, rs: Optional[Resamples] = None, level: float = LEVEL) -> Optional[Dict]:
    """A variable-rate network's accuracy from its best measured level to its finest (highest) one, in points,
    with its paired interval, against the shipping rule (no more than :data:`LEVEL_DROP_POINTS` lower: a finer
    level that codes more bits for less accuracy is a training failure). ``ok`` judges the measured drop; the
    best level is picked on the same images, so noise makes the drop look, if anything, larger. None for a
    ladder of rungs (no levels) or fewer than 2 levels."""
    pts = [p for p in ladder.get("rungs", []) if "level" in p]
    if len(pts) < 2:
        return None
    finest = max(pts, key=lambda p: p["level"])
    res = {"figure": metric, "rule_points": LEVEL_DROP_POINTS, "finest_level": finest["level"], "best_level": None,
           "drop_points": None, "interval": None, "ok": None, "reason": None}
    if any(p.get(metric) is None for p in pts):
        return {**res, "reason": f"no {metric} at every level (unlabelled images?)"}
    best = max(pts, key=lambda p: (p[metric], p["level"]))  # a tie goes to the finer level
    drop = 100 * (finest[metric] - best[metric])
    res.update(best_level=best["level"], drop_points=drop, ok=bool(drop >= -LEVEL_DROP_POINTS - 1e-9))
    if rs and has_records(best, metric, rs.n) and has_records(finest, metric, rs.n):
        d = 100 * (rs.ratio(finest["per_image"], metric) - rs.ratio(best["per_image"], metric))
        res.update(percentile_interval(d, level))
    return res


def _pairable(points: Sequence[Dict], metric: str, n: int) -> bool:
    """Whether every point of a curve has per-image bytes and ``metric`` for the same ``n`` images."""
    return bool(points) and all(has_records(p, metric, n) and len(p["per_image"].get("bytes", ())) == n
                                for p in points)


def _bd_interval(test: List[List[Dict]], anchor: List[List[Dict]], metric: str, variant: str, level: float) -> Dict:
    """The BD-rate recomputed on every resample of both curves: its interval and how many resamples gave none."""
    vals = [bd_rate(t, a, metric, variant)["bd_rate"] for t, a in zip(test, anchor)]
    r = percentile_interval([math.nan if v is None else v for v in vals], level)
    return {"interval": r["interval"], "resamples_without": len(vals) - r["valid"]}


def _within_interval(curve: List[List[Dict]], targets, metric: str, level: float) -> Dict:
    """The bpp within a margin recomputed on every resample (``targets``: the resampled reference minus the
    margin); a resample whose curve never gets there counts as infinitely many bits (``high`` None)."""
    vals = []
    for pts, t in zip(curve, targets):
        b = None if math.isnan(t) else bpp_to_reach(pts, float(t), metric)["bpp"]
        vals.append(math.nan if math.isnan(t) else (math.inf if b is None else b))
    r = percentile_interval(vals, level)
    iv = r["interval"]
    return {"interval": None if iv is None else [iv[0] if math.isfinite(iv[0]) else None,
                                                 iv[1] if math.isfinite(iv[1]) else None],
            "resamples_not_reached": int(sum(math.isinf(v) for v in vals))}


def _no_interval_reason(rs: Optional[Resamples], paired: bool, metric: str) -> Optional[str]:
    if paired:
        return None
    if rs is None:
        return "no per-image records (measured before intervals existed)"
    if metric == "miou":
        return ("mIoU is not a per-image figure (it needs each image's confusion matrix): no intervals on mIoU "
                "BD-rates and bpp; gaps are in pixel accuracy")
    return f"no {metric} per image: the images carry no labels"


def summarize(ladders: Sequence[Dict], baselines: Sequence[Dict], metric: str = "top1",
              margins: Sequence[float] = MARGINS, variant: str = "pchip", resamples: int = RESAMPLES,
              seed: int = SEED, level: float = LEVEL) -> Dict:
    """The ``summary`` section of ``results.json`` from its ``ladders`` and ``baselines``.

    Each ladder's target is its own reference (the unsplit model on the same images); the codecs run the
    first ladder's model on the same images, so they are measured against the first ladder's reference.
    Where points carry per-image records, every gap, BD-rate and bpp within N points gets its ``interval``
    (``level``, a paired bootstrap of ``resamples`` seeded draws of the first ladder's images; see the module
    docstring); the ``images`` they were measured on are the first ladder's.
    """
    codecs = sorted({p["method"] for p in baselines}, key=lambda c: (c not in _ORDER, _ORDER.get(c, 0), c))
    refs = [lad.get("reference", {}) for lad in ladders]
    ref0 = refs[0] if refs else {}
    n = ref0.get("n_images") or 0
    recorded = bool(n) and any("per_image" in p for lad in ladders for p in lad.get("rungs", []))
    rs = Resamples(n, resamples, seed) if recorded else None
    paired = rs is not None and has_records(ref0, metric, n)  # intervals on the summary figure itself
    # (label, kind, points, the reference record it is compared with): codecs run the first ladder's model
    curves = [(ladder_label(lad), "ladder", lad.get("rungs", []), ref) for lad, ref in zip(ladders, refs)]
    curves += [(c.upper(), "codec", [p for p in baselines if p["method"] == c], ref0) for c in codecs]
    # every curve on every resample, computed once; None where its points were not recorded on these images
    fp = (ladders[0].get("images") or {}).get("fingerprint") if ladders else None
    same = [(lad.get("images") or {}).get("fingerprint") == fp for lad in ladders] + [True] * len(codecs)
    on_resamples = [resampled_curve(rs, pts, metric) if paired and ok and _pairable(pts, metric, n) else None
                    for (_, _, pts, _), ok in zip(curves, same)]
    methods = []
    for (label, kind, pts, ref), pts_rs in zip(curves, on_resamples):
        within = {}
        ref_rs = rs.ratio(ref["per_image"], metric) if pts_rs is not None and has_records(ref, metric, n) else None
        for m in margins:
            key = f"{m:g}"
            if ref.get(metric) is None:
                within[key] = {"bpp": None, "reached": False, "reason": f"no reference {metric} (unlabelled images?)"}
                continue
            within[key] = {"target": ref[metric] - m / 100, **bpp_to_reach(pts, ref[metric] - m / 100, metric)}
            if within[key]["bpp"] is not None and ref_rs is not None:
                within[key].update(_within_interval(pts_rs, ref_rs - m / 100, metric, level))
        methods.append({"method": label, "kind": kind, "reference": ref.get(metric), "within": within})

    def bd_entry(i: int, j: int) -> Dict:  # curve i against curve j
        r = {**bd_rate(curves[i][2], curves[j][2], metric, variant), "interval": None}
        if r["bd_rate"] is not None and on_resamples[i] is not None and on_resamples[j] is not None:
            r.update(_bd_interval(on_resamples[i], on_resamples[j], metric, variant, level))
        return r

    nl = len(ladders)
    bd = [{"ladder": curves[i][0], "codec": c, **bd_entry(i, nl + k)} for i in range(nl) for k, c in enumerate(codecs)]
    images = {"n_images": n or None, **((ladders[0].get("images") or {}) if ladders else {})}
    gaps = [{"ladder": ladder_label(lad), **ladder_gaps(lad, metric, rs, level)} for lad in ladders]
    checks = [{"ladder": ladder_label(lad), **c} for lad in ladders if (c := level_check(lad, metric, rs, level))]
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
        "bd_rate_vs_first": [{"ladder": curves[i][0], "anchor": curves[0][0], **bd_entry(i, 0)} for i in range(1, nl)],
        "images": images,
        "intervals": {"level": level, "resamples": resamples, "seed": seed,
                      "method": "paired percentile bootstrap over the images: every figure of every curve "
                                "recomputed on the same resamples" if rs else None,
                      "reason": _no_interval_reason(rs, paired, metric)},
        "gaps": gaps,
        "level_check": checks,
    }


def fmt_interval(value: float, interval: Optional[Sequence[Optional[float]]], fmt: str = "{:+.1f}",
                 none: str = "not reached") -> str:
    """``-3.0 [-4.6, -1.5]``: a figure and its interval in one format (a None bound reads ``none``)."""
    if not interval:
        return fmt.format(value)
    lo, hi = (none if v is None else fmt.format(v) for v in interval)
    return f"{fmt.format(value)} [{lo}, {hi}]"


def images_line(images: Dict) -> str:
    """Which images the figures were measured on: count, part and data (and the fingerprint of their names)."""
    n = images.get("n_images")
    where = f"the {images['part']} part of {images['data']}" if images.get("data") else "images not recorded"
    limit = f", at most {images['limit']} spread evenly" if images.get("limit") else ""
    fp = f" (names fingerprint {images['fingerprint']})" if images.get("fingerprint") else ""
    return f"measured on {n} images: {where}{limit}{fp}"


def _fmt_within(w: Dict) -> str:
    if w.get("bpp") is None:
        return "not reached" if "not reached" in (w.get("reason") or "") else "n/a"
    return ("≤ " if w.get("upper_bound") else "") + fmt_interval(w["bpp"], w.get("interval"), "{:.4f}")


def _fmt_bd(r: Optional[Dict]) -> str:
    if r is None:
        return "—"
    if r["bd_rate"] is None:
        return "n/a"
    iv = r.get("interval")
    return (f"{r['bd_rate']:+.1f}%" + (f" [{iv[0]:+.1f}, {iv[1]:+.1f}]" if iv else "")
            + (" (lin.)" if r["variant"] == "linear" else ""))


def level_check_line(c: Dict) -> str:
    """The shipping rule's line for one variable-rate network (see :func:`level_check`)."""
    if c["drop_points"] is None:
        return f"{c['ladder']}: accuracy from best level to finest: n/a, {c['reason']}"
    verdict = "OK" if c["ok"] else "FAILS"
    return (f"{c['ladder']}: accuracy from best level (q{c['best_level']}) to finest (q{c['finest_level']}): "
            f"{fmt_interval(c['drop_points'], c.get('interval'))} points; {verdict} the <={c['rule_points']:g} "
            "point rule")


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
    iv = summary.get("intervals") or {}
    if "images" in summary:
        notes.insert(0, "Figures " + images_line(summary["images"]) + "; " + (
            f"[low, high]: {100 * iv['level']:g}% intervals, {iv['method']} ({iv['resamples']} resamples, "
            f"seed {iv['seed']})" if iv.get("method") else "no intervals") + (f"; {iv['reason']}" if iv.get("reason")
                                                                              else "") + ".")
    def without(r: Dict) -> str:  # resamples on which a BD-rate had no value
        if not r.get("resamples_without"):
            return ""
        return (f"; {r['resamples_without']} of {iv.get('resamples')} resamples gave none (no overlap), its "
                "interval is over the rest")
    for m in summary["methods"]:
        for k, w in m["within"].items():
            if w.get("resamples_not_reached"):
                notes.append(f"{m['method']}, within {k}: not reached on {w['resamples_not_reached']} of "
                             f"{iv.get('resamples')} resamples.")
    for r in summary["bd_rate"]:
        if r["bd_rate"] is None:
            notes.append(f"BD-rate {r['ladder']} vs {r['codec'].upper()}: n/a, {r['reason']}.")
        elif r["note"] or without(r):
            notes.append(f"BD-rate {r['ladder']} vs {r['codec'].upper()}: " + "; ".join(
                t for t in (r["note"], without(r)[2:]) if t) + ".")
    for r in vs_first.values():
        if r["bd_rate"] is None:
            notes.append(f"BD-rate {r['ladder']} vs {r['anchor']}: n/a, {r['reason']}.")
        else:
            notes.append(f"BD-rate {r['ladder']} vs {r['anchor']}: {_fmt_bd(r)} over "
                         f"{100 * r['overlap'][0]:.2f}-{100 * r['overlap'][1]:.2f}% {metric}"
                         + (f" ({r['note']})" if r["note"] else "") + without(r) + ".")
    for c in summary.get("level_check", []):
        notes.append(level_check_line(c) + ".")
    for m in summary["methods"]:
        for k in margins:
            w = m["within"][k]
            if w.get("bpp") is None:
                notes.append(f"{m['method']}, within {k}: {w['reason']}.")
    return lines + [""] + [f"- {n}" for n in notes]
