"""The tables the commands print from what the library returns: a bundle's manifest (``splitinfer info``), the
supported models (``models``) and the edge's answers (``edge``). The tables of a use case that measures
(``eval``'s) are its own: :mod:`shared.reporting`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from shared.tasks import wire

__all__ = ["bundle_table", "models_table", "EDGE_HEADER", "edge_row", "hint_summary"]


def bundle_table(b) -> List[str]:
    """A bundle's manifest as ``splitinfer info`` prints it: rungs, recorded bpp, accuracy and agreement with the
    unsplit model, the verdict on it, warnings. Figures that were not measured (no labels) read "-", never nan."""
    from shared.summary import METRIC_LABELS
    from shared.tasks import get_task
    from shared.training.recipe import ladder_warnings
    from shared.training.verdict import judge, verdict_line

    cols = [(k, METRIC_LABELS[k]) for k in get_task(b).metrics]
    lines = [f"bundle {b.bundle_id}: {b.model} split {b.split}, rate model {b.config.rate_model}, {b.root}"]
    ref = b.reference
    if ref:
        score = (f"{cols[0][1]} {ref[cols[0][0]]:.2%}" if ref.get(cols[0][0]) is not None else
                 f"no labels, so no {cols[0][1]}: agreement with it is shown")
        lines.append(f"unsplit model on the same held-out images: {score} ({ref.get('n_images')} images)")
    # a variable-rate bundle: its one network at every measured level (``qN``), else one row per rung
    scheme = b.scheme
    rows = scheme.points()
    if any(m.get("agreement") is not None for _, _, m in rows):
        cols.append(("agreement", "agree"))
    lines.append(f"{'rung':>4} {'lambda':>8} {'bpp':>8} " + " ".join(f"{label:>10}" for _, label in cols))
    for where, lam, m in rows:
        f = lambda k, fmt: (fmt.format(m[k]) if m.get(k) is not None else "-")  # noqa: E731
        lines.append(f"{where:>4} {lam:>8g} {f('bpp', '{:.4f}'):>8} "
                     + " ".join(f"{f(k, '{:.2%}'):>10}" for k, _ in cols))
    if scheme.variable:
        lo, hi = scheme.levels
        lines.append(f"one variable-rate network: quality levels {lo}..{hi}, any of them per message "
                     "(docs/variable-rate.md)")
    # the verdict train recorded; for a bundle from before verdicts, judged now from its recorded figures
    lines.append(verdict_line(b.verdict or judge(b.manifest)))
    return lines + [f"WARNING: {w}" for w in ladder_warnings(b.manifest)]


def models_table(rows: List[dict]) -> List[str]:
    """``shared.models.split.describe_models()`` as the table ``splitinfer models`` prints."""
    head = f"{'model':<22} {'task':<14} {'split':<8} {'depth':<8} {'feature (CxHxW)':<16} {'edge FLOPs':>10}  description"
    return [head, "-" * len(head)] + [
        f"{r['model']:<22} {r['task']:<14} {r['split']:<8} {r['depth']:<8} {'x'.join(map(str, r['feature_shape'])):<16} "
        f"{100 * r['edge_flop_share']:>9.1f}%  {r.get('description', '')}" for r in rows] + [
        "", "edge FLOPs: share of the unsplit model's FLOPs that the edge (head) runs, at the model's input size."]


EDGE_HEADER = f"{'image':<32} {'rung':>4} {'bytes':>6} {'bpp':>7} {'hint':>4} {'enc ms':>7} {'rtt ms':>7}  prediction"
# the hint column: the message met its bitrate hint, went over it (why: hint_summary), or had none to meet
_HINT_MARK = {True: "met", False: "OVER", None: "-"}


def edge_row(r, mask: Optional[Path] = None, as_json: bool = False) -> str:
    """One answer of the edge client (``edge_client.InferResult``) as ``splitinfer edge`` prints it: a row under
    :data:`EDGE_HEADER` (the rung, or ``qN``: the quality level of a variable-rate bundle), a failure line, or
    (``as_json``) one JSON object: ``ok`` is the answer (neither refused nor skipped), ``hint_met`` whether the
    message met its bitrate hint (null: none to meet, e.g. a forced rung, or a stream's frames judged together) and
    ``hint_reason`` why not."""
    if as_json:
        o = r.hint_outcome
        return json.dumps({"image": r.source, "ok": r.ok, "hint_met": o.met, "hint_reason": o.reason or None,
                           "skipped": r.skipped, "rung": r.rung, "level": r.level,
                           "target_kbps": r.target_kbps, "bytes": r.n_bytes, "bpp": r.bpp, "encode_ms": r.encode_ms, "latency_ms": r.latency_ms, "topk": r.topk,
                           "outputs": wire.numbers(r.outputs), "mask": str(mask) if mask else None,
                           "server_timings_ms": r.server_timings_ms, "error": r.error.message if r.error else None})
    name = Path(r.source).name[:32]
    if r.skipped:
        return f"{name:<32} skipped: the link carries less than the coarsest level at this frame rate"
    if not r.ok:
        return f"{name:<32} {'failed' if r.error.kind == 'bad_image' else 'refused'}: {r.error.code}: {r.error.message}"
    pred = "  ".join(f"{label} ({score:.0%})" for _, label, score in r.topk)
    where = r.rung if r.level is None else f"q{r.level}"  # a variable-rate bundle: the quality level
    return (f"{name:<32} {where:>4} {r.n_bytes:>6} {r.bpp:>7.4f} {_HINT_MARK[r.hint_outcome.met]:>4} "
            f"{r.encode_ms:>7.1f} {r.latency_ms:>7.1f}  {pred}" + (f"  -> {mask}" if mask else ""))


def hint_summary(outcomes) -> List[str]:
    """The messages over their hint, by reason (the part before its first colon), with one example each."""
    over = [o for o in outcomes if o.met is False]
    kinds = {}
    for o in over:
        kinds.setdefault(o.reason.split(":")[0], []).append(o.reason)
    if not over:
        return []
    judged = sum(o.met is not None for o in outcomes)
    return [f"{len(over)} of {judged} messages over their hint"] + [
        f"  {len(rs)} x {rs[0]}" for _, rs in sorted(kinds.items())]
