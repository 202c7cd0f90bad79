"""``splitinfer eval``: rate (real bytes) and accuracy of every rung of one or more bundles on held-out images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", action="append", default=None, help="bundle folder (repeatable; default: embedded)")
    p.add_argument("--data", required=True, help="image folder or CSV with labels (only held-out images are used)")
    p.add_argument("--part", default="heldout", choices=["heldout", "all"],
                   help="'all' evaluates every image, e.g. a folder that never trained anything")
    p.add_argument("--limit", type=int, default=0, help="at most this many images, spread evenly (0 = all)")
    p.add_argument("--out", default=None, help="folder for results.json")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--codecs", default="",
                   help="image-codec baselines on the same crops: any of jpeg,webp,avif,hevc (comma-separated)")
    p.add_argument("--baselines-from", default=None, metavar="RESULTS_JSON",
                   help="reuse the codec points of an earlier results.json measured on the same images with the same "
                        "model (checked: image count and the unsplit model's score) instead of --codecs")
    p.add_argument("--update-manifest", action="store_true",
                   help="record the measured bpp/accuracy in each bundle's manifest.json")
    p.add_argument("--pictures", type=int, default=0, metavar="N",
                   help="segmentation: masks.png in --out for N images spread over the data: input, truth, unsplit "
                        "model, three rungs and the first --codecs codec (default webp) at the lowest rung's rate")


def run(args) -> int:
    import sys

    from ..baselines import CodecUnavailable, parse_codecs
    from ..bundle import resolve_bundle, update_metrics
    from ..data import scan_images, split_items, spread
    from ..evaluation import METRICS, evaluate_ladder
    from ..models import load_split_model
    from ..summary import METRIC_LABELS

    try:  # before any work: a missing encoder is an error message, not a traceback an hour in
        codecs = parse_codecs(args.codecs)
        picture_codec = (codecs or parse_codecs("webp"))[0] if args.pictures else None
    except CodecUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.pictures and not args.out:
        print("error: --pictures needs --out", file=sys.stderr)
        return 2
    items = split_items(scan_images(args.data), args.part)
    items = spread(items, args.limit)
    all_results = []
    first_model = first_bundle = None  # the codec baselines run the unsplit network of the first ladder's model
    for b in args.bundle or [None]:
        bundle = resolve_bundle(b)
        model = load_split_model(bundle.model, bundle.split, args.weights)
        bundle.check_backbone(model)
        first_model, first_bundle = first_model or model, first_bundle or bundle
        res = evaluate_ladder(model, bundle, items, batch_size=args.batch_size)
        ref = res["reference"]
        cols = METRICS[model.spec.task]
        part = "held-out" if args.part == "heldout" else "all"
        print(f"bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}) on {ref['n_images']} images ({part} part of "
              f"{args.data}); "
              f"unsplit {METRIC_LABELS[cols[0]]} {ref.get(cols[0], float('nan')):.2%}")
        print(f"{'rung':>4} {'lambda':>7} {'bpp':>7} {'est.bpp':>8} {'bytes':>7} "
              + " ".join(f"{METRIC_LABELS[k]:>10}" for k in cols) + f" {'agree':>6}")
        for r in res["rungs"]:
            print(f"{r['rung']:>4} {r['lambda']:>7g} {r['bpp']:>7.4f} {r['bpp_estimated']:>8.4f} "
                  f"{r['bytes_per_image']:>7.0f} " + " ".join(f"{r.get(k, float('nan')):>10.2%}" for k in cols)
                  + f" {r['agreement']:>6.1%}")
        if args.update_manifest:
            update_metrics(bundle, res["rungs"], {"evaluation": {"data": str(args.data), "part": args.part,
                                                                 "reference": ref}})
        all_results.append({"bundle": str(bundle.root), "bundle_id": bundle.bundle_id, "model": bundle.model, **res})
    baselines = []
    if args.baselines_from:
        old = json.loads(Path(args.baselines_from).read_text())
        key = METRICS[first_model.spec.task][0]
        ref_old = old["ladders"][0]["reference"] if old.get("ladders") else {}
        ref_new = all_results[0]["reference"]
        if ref_old.get("n_images") != ref_new["n_images"] or ref_old.get(key) != ref_new.get(key):
            print(f"error: {args.baselines_from} was measured on other images or another model "
                  f"({ref_old.get('n_images')} images, unsplit {ref_old.get(key)}; here {ref_new['n_images']}, "
                  f"{ref_new.get(key)})", file=sys.stderr)
            return 2
        baselines = [p for p in old["baselines"] if not codecs or p["method"] in codecs]
        print(f"codec points reused from {args.baselines_from}: {len(baselines)} "
              f"({', '.join(sorted({p['method'] for p in baselines}))})")
        codecs = []
    if codecs:
        from ..baselines import evaluate_codec

        for codec in codecs:
            pts = evaluate_codec(first_model, items, codec, batch_size=args.batch_size)
            key = METRICS[first_model.spec.task][0]
            for p in pts:
                print(f"{codec:>5} {p['setting']:>5}  {p['bpp']:7.4f} bpp  {METRIC_LABELS[key]} "
                      f"{p.get(key, float('nan')):.2%}")
            baselines += pts
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        summary = write_report(Path(args.out), all_results, baselines)
    else:
        from ..summary import summarize

        summary = summarize(all_results, baselines, metric=all_results[0]["metric"])
    print(summary_text(summary))
    if args.pictures:
        if first_model.spec.task != "segmentation":
            print("error: --pictures needs a segmentation ladder", file=sys.stderr)
            return 2
        path = write_pictures(Path(args.out) / "masks.png", first_model, first_bundle, spread(items, args.pictures),
                              picture_codec)
        print(f"wrote {path}")
    return 0


def write_pictures(out: Path, model, bundle, items, codec: str) -> Path:
    """masks.png: per image, input, truth, unsplit model, the top, middle and bottom rungs, the codec at the
    bottom rung's rate (see :func:`shared.evaluation.segmentation_examples`)."""
    from ..evaluation import segmentation_examples
    from ..plots import mask_comparison_plot

    n = len(bundle.rungs)
    rungs = sorted({0, n // 2, n - 1})
    examples = segmentation_examples(model, bundle, items, rungs, codec)
    return mask_comparison_plot(examples, out, model.spec.name, model.spec.num_classes)


def summary_text(summary: dict) -> str:
    """The summary table as printed on the terminal (the markdown of results.md)."""
    from ..summary import summary_markdown

    return "\n".join(summary_markdown(summary))


def write_report(out: Path, ladders: list, baselines: list, bd_variant: str = "pchip") -> dict:
    """results.json (every point plus a ``summary``), results.md (tables) and rd.png (rate-accuracy plot,
    log bpp, every ladder and codec). Returns the summary (see :mod:`shared.summary`)."""
    from ..evaluation import METRICS
    from ..plots import rate_accuracy_plot
    from ..summary import METRIC_LABELS, ladder_label, summarize, summary_markdown

    # results.json of classification ladders from before segmentation carry no "metric": top-1
    metric = ladders[0].get("metric", "top1") if ladders else "top1"
    cols = [(k, METRIC_LABELS[k]) for k in next(c for c in METRICS.values() if c[0] == metric)]
    pct = lambda p, k: f"{100 * p.get(k, float('nan')):.2f}%"  # noqa: E731
    summary = summarize(ladders, baselines, metric=metric, variant=bd_variant)
    report = {"ladders": ladders, "baselines": baselines, "summary": summary}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["### Summary", "", *summary_markdown(summary), ""]
    curves = {}
    for lad in ladders:
        ref = lad["reference"]
        name = ladder_label(lad)
        lines += [f"### {name}", "", f"Unsplit model on the same {ref['n_images']} images: "
                  + ", ".join(f"{label} {pct(ref, k)}" for k, label in cols), "",
                  "| rung | lambda | bpp (real) | bpp (estimated) | bytes/image | side info (z) | "
                  + " | ".join(label for _, label in cols) + " | agrees with unsplit |",
                  "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(cols) + "---:|"]
        for r in lad["rungs"]:
            side = f"{100 * r['side_share']:.0f}%" if "side_share" in r else "-"  # older results.json: not measured
            lines.append(f"| {r['rung']} | {r['lambda']:g} | {r['bpp']:.4f} | {r['bpp_estimated']:.4f} | "
                         f"{r['bytes_per_image']:.0f} | {side} | " + " | ".join(pct(r, k) for k, _ in cols)
                         + f" | {100 * r['agreement']:.1f}% |")
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


def _class_iou_table(ladders: list) -> list:
    """IoU per class (segmentation): the unsplit model and every rung of each ladder."""
    from ..labels import class_names

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
