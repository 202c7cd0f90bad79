"""Measuring ladders against codecs and rendering what was measured: the use cases of ``splitinfer eval`` and
``report``.

- :func:`evaluate_bundles`: the ``eval`` use case (every rung of one or more bundles and the codec baselines on
  the same images, the tables printed, results.json / results.md / rd.png / masks.png written);
- :func:`write_report`, :func:`summary_text`: the report files and the summary table (also ``splitinfer report``);
- :func:`ladder_table`: a ladder's measured figures as text;
- :func:`write_mask`: a segmentation answer's mask as a palette PNG (``splitinfer edge --masks``).

The tables that only the commands print (``info``, ``models``, ``edge``) are the application's:
:mod:`splitinfer.tables`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .errors import UserError
from .options import option

__all__ = ["EvalOptions", "evaluate_bundles", "read_results", "write_report", "summary_text", "write_pictures",
           "ladder_table", "write_mask", "MASK_SUFFIX"]

MASK_SUFFIX = ".mask.png"


@dataclass
class EvalOptions:
    """What :func:`evaluate_bundles` measures; ``splitinfer eval`` has one flag per field."""

    data: str = option(help="image folder or CSV with labels (only held-out images are used)")
    bundle: Optional[List[str]] = option(None, "bundle folder (repeatable; default: embedded)")
    part: str = option("heldout", "which images: the held-out ones, their selection half (choose recipes and "
                                  "checkpoints on it) or their test half (report on it, never choose), or 'all', e.g. "
                                  "a folder that never trained anything", choices=["heldout", "selection", "test", "all"])
    limit: int = option(0, "at most this many images, spread evenly (0 = all)")
    out: Optional[str] = option(None, "folder for results.json")
    weights: Optional[str] = option(None, "backbone weights file (default: pretrained)")
    batch_size: int = option(16, "images per batch through the backbone")
    codecs: str = option("", "image-codec baselines on the same crops: any of jpeg,webp,avif,hevc (comma-separated)")
    baselines_from: Optional[str] = option(
        None, "reuse the codec points of an earlier results.json measured on the same images with the same model "
              "(checked: image count and the unsplit model's score) instead of --codecs", metavar="RESULTS_JSON")
    update_manifest: bool = option(False, "record the measured bpp/accuracy in each bundle's manifest.json")
    pictures: int = option(0, "segmentation: masks.png in --out for N images spread over the data: input, truth, "
                              "unsplit model, three rungs and the first --codecs codec (default webp) at the lowest "
                              "rung's rate", metavar="N")


def read_results(path) -> tuple:
    """(ladders, baselines) of a results.json of ``splitinfer eval``; anything else is a :class:`UserError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return data["ladders"], data["baselines"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a results.json of 'splitinfer eval' ({type(e).__name__}: {e})") from None


def evaluate_bundles(opts: EvalOptions, say=print) -> dict:
    """Measure every rung of each bundle and the codec baselines on the same images, print the tables, write the
    report files to ``opts.out``; returns the summary (:mod:`shared.summary`). Mistakes raise :class:`UserError`
    before any measurement where they can be seen then."""
    from .baselines import CodecUnavailable, evaluate_codec, parse_codecs
    from .bundle import record_measurement, resolve_bundle
    from .data import split_items, spread
    from .evaluation import evaluate_ladder
    from .models import load_split_model
    from .summary import METRIC_LABELS, summarize
    from .tasks import get_task
    from .training.recipe import scan_data

    try:  # before any work: a missing encoder is an error message, not a traceback an hour in
        codecs = parse_codecs(opts.codecs)
        picture_codec = (codecs or parse_codecs("webp"))[0] if opts.pictures else None
    except CodecUnavailable as e:
        raise UserError(str(e)) from None
    if opts.pictures and not opts.out:
        raise UserError("--pictures needs --out")
    items = spread(split_items(scan_data(opts.data), opts.part), opts.limit)
    if not items:
        raise UserError(f"{opts.data} has no held-out images (the rule: CRC32 of the file name is odd); "
                        "--part all measures every image")
    ladders = []
    first_model = first_bundle = None  # the codec baselines run the unsplit network of the first ladder's model
    for b in opts.bundle or [None]:
        bundle = resolve_bundle(b)
        model = load_split_model(bundle.model, bundle.split, opts.weights)
        bundle.check_backbone(model)
        first_model, first_bundle = first_model or model, first_bundle or bundle
        res = evaluate_ladder(model, bundle, items, batch_size=opts.batch_size, per_image=True)
        part = {"heldout": "held-out", "selection": "selection (held-out)", "test": "test (held-out)"}.get(opts.part,
                                                                                                    "all")
        for line in ladder_table(bundle, res, get_task(model.spec).metrics, f"{part} part of {opts.data}"):
            say(line)
        if opts.update_manifest:
            record_measurement(bundle, res, {"data": str(opts.data), "part": opts.part})
        ladders.append({"bundle": str(bundle.root), "bundle_id": bundle.bundle_id, "model": bundle.model,
                        "images": _images_record(opts, items), **res})
    key = get_task(first_model.spec).metrics[0]
    baselines = []
    if opts.baselines_from:
        old = json.loads(Path(opts.baselines_from).read_text())
        ref_old = old["ladders"][0]["reference"] if old.get("ladders") else {}
        ref_new = ladders[0]["reference"]
        if ref_old.get("n_images") != ref_new["n_images"] or ref_old.get(key) != ref_new.get(key):
            raise UserError(f"{opts.baselines_from} was measured on other images or another model "
                            f"({ref_old.get('n_images')} images, unsplit {ref_old.get(key)}; here {ref_new['n_images']}, "
                            f"{ref_new.get(key)})")
        baselines = [p for p in old["baselines"] if not codecs or p["method"] in codecs]
        say(f"codec points reused from {opts.baselines_from}: {len(baselines)} "
            f"({', '.join(sorted({p['method'] for p in baselines}))})")
        codecs = []
    for codec in codecs:
        pts = evaluate_codec(first_model, items, codec, batch_size=opts.batch_size)
        for p in pts:
            say(f"{codec:>5} {p['setting']:>5}  {p['bpp']:7.4f} bpp  {METRIC_LABELS[key]} {p.get(key, float('nan')):.2%}")
        baselines += pts
    if opts.out:
        Path(opts.out).mkdir(parents=True, exist_ok=True)
        summary = write_report(Path(opts.out), ladders, baselines)
    else:
        summary = summarize(ladders, baselines, metric=ladders[0]["metric"])
    say(summary_text(summary))
    if opts.pictures:
        if not get_task(first_model.spec).dense:
            raise UserError("--pictures needs a segmentation ladder")
        path = write_pictures(Path(opts.out) / "masks.png", first_model, first_bundle, spread(items, opts.pictures),
                              picture_codec)
        say(f"wrote {path}")
    return summary


def _images_record(opts: EvalOptions, items) -> dict:
    """Which images ``eval`` measured (results.json's ``images``): data, part, limit, count, and a fingerprint of
    their names in order (two results.json with the same one were measured on the same images)."""
    import hashlib

    names = "\n".join(Path(p).name for p, _ in items).encode()
    return {"data": str(opts.data), "part": opts.part, "limit": opts.limit or None, "n_images": len(items),
            "fingerprint": hashlib.sha256(names).hexdigest()[:12]}


def ladder_table(bundle, res: dict, metrics, where: str) -> List[str]:
    """One measured ladder (:func:`shared.evaluation.evaluate_ladder`'s result) as printed by ``eval``; with
    per-image records, each point's gap to the unsplit model in points and its 95% interval."""
    from .intervals import Resamples
    from .summary import METRIC_LABELS, fmt_interval, ladder_gaps

    ref = res["reference"]
    recorded = ref.get("n_images") and any("per_image" in r for r in res["rungs"])
    gaps = ladder_gaps(res, metrics[0], Resamples(ref["n_images"]) if recorded else None)
    gap_head = f"{METRIC_LABELS.get(gaps['figure'], '')} - unsplit [95%]" if gaps["figure"] else ""
    scored = ref.get("n_labelled", ref["n_images"])
    images = (f"{ref['n_images']} images" if scored == ref["n_images"] else
              f"{ref['n_images']} images, {scored} of them labelled (the accuracy figures score those)")
    lines = [f"bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}) on {images} ({where}); "
             f"unsplit {METRIC_LABELS[metrics[0]]} {ref.get(metrics[0], float('nan')):.2%}",
             f"{'rung':>4} {'lambda':>7} {'bpp':>7} {'est.bpp':>8} {'bytes':>7} "
             + " ".join(f"{METRIC_LABELS[k]:>10}" for k in metrics) + f" {'agree':>6}  {gap_head}".rstrip()]
    for r, g in zip(res["rungs"], gaps["points"]):
        where_ = r["rung"] if "level" not in r else f"q{r['level']}"  # a variable-rate bundle: one row per level
        gap = fmt_interval(g["gap"], g.get("interval")) if "gap" in g else ""
        lines.append((f"{where_:>4} {r['lambda']:>7g} {r['bpp']:>7.4f} {r['bpp_estimated']:>8.4f} "
                      f"{r['bytes_per_image']:>7.0f} " + " ".join(f"{r.get(k, float('nan')):>10.2%}" for k in metrics)
                      + f" {r['agreement']:>6.1%}  {gap}").rstrip())
    if gaps["reason"]:
        lines.append(f"no gap intervals: {gaps['reason']}")
    return lines


def write_mask(result, folder, num_classes: int, labels: Optional[str] = None) -> Path:
    """The answer's mask as a palette PNG: ``<image stem>.mask.png`` in ``folder`` (None: beside the image), in the
    colours of the label set ``labels`` (an edge package's; None: the set registered with ``num_classes``)."""
    import io

    from PIL import Image

    from .labels import colours_of, palette_image

    src = Path(result.source)
    out = (Path(folder) if folder else src.parent) / (src.stem + MASK_SUFFIX)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(result.mask_png)) as m:
        palette_image(m, "", num_classes, colours_of(labels, num_classes)).save(out)
    return out


def write_pictures(out: Path, model, bundle, items, codec: str) -> Path:
    """masks.png: per image, input, truth, unsplit model, the finest, middle and coarsest rungs (or levels of a
    variable-rate bundle), the codec at the coarsest one's rate (see :func:`shared.evaluation.segmentation_examples`)."""
    from .evaluation import segmentation_examples
    from .plots import mask_comparison_plot
    from .tasks import get_task

    # finest first: rung 0 of a ladder, the highest level of a variable-rate network
    pts = sorted(bundle.scheme.measure_points(), key=lambda p: (p[0], -(p[1] or 0)))
    pts = [pts[i] for i in sorted({0, len(pts) // 2, len(pts) - 1})]
    examples = segmentation_examples(model, bundle, items, pts, codec)
    spec, task = model.spec, get_task(model.spec)
    return mask_comparison_plot(examples, out, spec.name, spec.num_classes, colours=task.palette(spec),
                                names=task.class_names(spec))


def summary_text(summary: dict) -> str:
    """The summary table as printed on the terminal (the markdown of results.md)."""
    from .summary import summary_markdown

    return "\n".join(summary_markdown(summary))


def write_report(out: Path, ladders: list, baselines: list, bd_variant: str = "pchip") -> dict:
    """results.json (every point plus a ``summary``), results.md (tables) and rd.png (rate-accuracy plot,
    log bpp, every ladder and codec). Returns the summary (see :mod:`shared.summary`)."""
    from .evaluation import METRICS
    from .plots import rate_accuracy_plot
    from .summary import METRIC_LABELS, fmt_interval, ladder_label, summarize, summary_markdown

    # results.json of classification ladders from before segmentation carry no "metric": top-1
    metric = ladders[0].get("metric", "top1") if ladders else "top1"
    cols = [(k, METRIC_LABELS[k]) for k in next(c for c in METRICS.values() if c[0] == metric)]
    pct = lambda p, k: f"{100 * p.get(k, float('nan')):.2f}%"  # noqa: E731
    summary = summarize(ladders, baselines, metric=metric, variant=bd_variant)
    report = {"ladders": ladders, "baselines": baselines, "summary": summary}
    (out / "results.json").write_text(_json_compact_lists(report) + "\n")
    lines = ["### Summary", "", *summary_markdown(summary), ""]
    curves = {}
    for lad, gaps in zip(ladders, summary["gaps"]):
        ref = lad["reference"]
        name = ladder_label(lad)
        gap_col = f"{METRIC_LABELS.get(gaps['figure'], '')} − unsplit (points) [95%]" if gaps["figure"] else None
        lines += [f"### {name}", "", f"Unsplit model on the same {ref['n_images']} images: "
                  + ", ".join(f"{label} {pct(ref, k)}" for k, label in cols)
                  + (f"; no gap intervals: {gaps['reason']}" if gaps["reason"] else ""), "",
                  "| rung | lambda | bpp (real) | bpp (estimated) | bytes/image | side info (z) | "
                  + " | ".join(label for _, label in cols) + " | agrees with unsplit |"
                  + (f" {gap_col} |" if gap_col else ""),
                  "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(cols) + "---:|" + ("---:|" if gap_col else "")]
        for r, g in zip(lad["rungs"], gaps["points"]):
            side = f"{100 * r['side_share']:.0f}%" if "side_share" in r else "-"  # older results.json: not measured
            where = r["rung"] if "level" not in r else f"q{r['level']}"  # a variable-rate bundle: its levels
            agree = g.get("agreement")
            agree = (fmt_interval(100 * agree["value"], [100 * v for v in agree["interval"]], "{:.1f}%")
                     if agree and agree.get("interval") else f"{100 * r['agreement']:.1f}%")
            gap = (fmt_interval(g["gap"], g.get("interval")) if "gap" in g else "n/a") if gap_col else None
            lines.append(f"| {where} | {r['lambda']:g} | {r['bpp']:.4f} | {r['bpp_estimated']:.4f} | "
                         f"{r['bytes_per_image']:.0f} | {side} | " + " | ".join(pct(r, k) for k, _ in cols)
                         + f" | {agree} |" + (f" {gap} |" if gap_col else ""))
        lines.append("")
        curves[name] = lad["rungs"]
    for codec in sorted({p["method"] for p in baselines}):
        pts = [p for p in baselines if p["method"] == codec]
        lines += [f"### {codec.upper()} on the input crop, unsplit model in the cloud", "",
                  "| setting | bpp | " + " | ".join(label for _, label in cols) + " |",
                  "|---|---:|" + "---:|" * len(cols)]
        lines += [f"| {p['setting']} | {p['bpp']:.4f} | " + " | ".join(pct(p, k) for k, _ in cols) + " |" for p in pts]
        lines.append("")
        curves[codec.upper()] = pts
    if metric == "miou":
        lines += _class_iou_table(ladders)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    ref = ladders[0]["reference"].get(metric) if ladders else None
    rate_accuracy_plot(curves, out / "rd.png", reference=ref, metric=metric,
                       title=f"rate vs {cols[0][1]} on held-out images")
    return summary


def _json_compact_lists(report: dict) -> str:
    """``report`` as indented JSON with every list of plain numbers on one line: the per-image records (one
    number per image and figure) stay a few lines per point instead of one line per image."""
    import re

    text = json.dumps(report, indent=2)
    scalar_list = re.compile(r"\[(?:\s*(?:-?[0-9.eE+-]+|null|true|false|NaN|-?Infinity)\s*,)*"
                             r"\s*(?:-?[0-9.eE+-]+|null|true|false|NaN|-?Infinity)\s*\]")
    return scalar_list.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",")) + "]", text)


def _class_iou_table(ladders: list) -> list:
    """IoU per class (segmentation): the unsplit model and every rung of each ladder."""
    from .labels import class_names

    lad = ladders[0]
    ref = lad["reference"]
    if "class_iou" not in ref:
        return []
    names = class_names(lad.get("model", ""), len(ref["class_iou"]))
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["### IoU per class (%)", "", "| | bpp | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names),
             "| unsplit | - | " + " | ".join(fmt(v) for v in ref["class_iou"]) + " |"]
    for la in ladders:
        for r in la["rungs"]:
            if "class_iou" in r:
                lines.append(f"| rung {r['rung']} ({la['bundle_id'][:8]}) | {r['bpp']:.4f} | "
                             + " | ".join(fmt(v) for v in r["class_iou"]) + " |")
    return lines + [""]
