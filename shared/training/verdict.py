"""The verdict on a trained network: is it close enough to the unsplit model to be worth serving?

Judged on held-out images by **agreement** with the unsplit model (the share of images, or pixels, where both
answer the same class: needs no labels), and, where labels exist, by the task's first metric (top-1, mIoU)
against the unsplit model's on the same images. The best rung (or level) is judged: a ladder's low rungs are
meant to trade accuracy for bits. Torch-free: ``splitinfer info`` and the server read it from the manifest.
"""

from __future__ import annotations

from typing import Dict, Optional

__all__ = ["MIN_AGREEMENT", "MAX_METRIC_DROP", "judge", "unjudged", "verdict_line", "EXIT_WEAK"]

# Below this the network answers differently from the unsplit model on most images: no use as its stand-in
# (every rung of the embedded ladders agrees on 78-93% of the 461 held-out images).
MIN_AGREEMENT = 0.50
# More than this below the unsplit model's top-1 (or mIoU) on the same images: undertrained or broken (the rule
# `ladder_warnings` already applied, now a verdict).
MAX_METRIC_DROP = 0.10
EXIT_WEAK = 3  # the exit code of `splitinfer train` for a weak network (2 is a user's mistake)
# Fewer measured images than this make a rough verdict (one image moves agreement by over 10 points): said so
ROUGH_BELOW = 10
_LABELS = {"top1": "top-1", "miou": "mIoU"}


def judge(manifest: Dict) -> Dict:
    """The verdict on a measured bundle's ``manifest``: ``{"judged": True, "weak": bool, "reason": str, ...}``,
    or :func:`unjudged` when nothing was measured."""
    rungs = manifest.get("rungs", [])
    curve = (manifest.get("variable_rate") or {}).get("curve")
    points = curve if curve else [r.get("metrics", {}) for r in rungs]
    ev = manifest.get("evaluation") or {}
    ref = ev.get("reference") or {}
    n = ref.get("n_images") or ev.get("n_images")
    agree = [p["agreement"] for p in points if p.get("agreement") is not None]
    if not agree:
        return unjudged("no measurement of agreement with the unsplit model")
    key = next((k for k in ("top1", "miou") if ref.get(k) is not None), None)
    best_agree = max(agree)
    out = {"judged": True, "n_images": n, "agreement": best_agree, "min_agreement": MIN_AGREEMENT}
    reasons = []
    if best_agree < MIN_AGREEMENT:
        reasons.append(f"its best rung agrees with the unsplit model on {best_agree:.1%} of {n} held-out images "
                       f"(a usable network: at least {MIN_AGREEMENT:.0%})")
    if key:
        measured = [p[key] for p in points if p.get(key) is not None]
        if measured:
            best = max(measured)
            out.update({"metric": key, "best": best, "reference": ref[key], "max_drop": MAX_METRIC_DROP})
            if best < ref[key] - MAX_METRIC_DROP:
                reasons.append(f"its best {_LABELS[key]} {best:.2%} is {100 * (ref[key] - best):.1f} points below the "
                               f"unsplit model's {ref[key]:.2%} (at most {100 * MAX_METRIC_DROP:.0f} points is usable)")
    else:
        out["metric"] = None  # no labels: agreement alone
    out["weak"] = bool(reasons)
    out["reason"] = "; ".join(reasons) if reasons else (
        f"best rung agrees with the unsplit model on {best_agree:.1%} of {n} held-out images"
        + (f", {_LABELS[key]} {out['best']:.2%} against {out['reference']:.2%}" if key and "best" in out
           else " (no labels)"))
    if isinstance(n, int) and n < ROUGH_BELOW:
        out["reason"] += f"; only {n} images measured: a rough verdict"
    return out


def unjudged(why: str) -> Dict:
    return {"judged": False, "weak": None, "reason": why}


def verdict_line(v: Optional[Dict]) -> str:
    """One line for a person: ``verdict: WEAK - ...``, ``verdict: usable - ...`` or ``verdict: unjudged - ...``."""
    if not v:
        return "verdict: unjudged - trained before verdicts were recorded"
    if not v.get("judged"):
        return f"verdict: unjudged - {v.get('reason')}"
    if v.get("weak"):
        return f"verdict: WEAK - {v.get('reason')}"
    return f"verdict: usable - {v.get('reason')}"
