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
    p.add_argument("--update-manifest", action="store_true",
                   help="record the measured bpp/accuracy in each bundle's manifest.json")


def run(args) -> int:
    import sys

    from ..baselines import CodecUnavailable, parse_codecs
    from ..bundle import resolve_bundle, update_metrics
    from ..data import scan_images, split_items, spread
    from ..evaluation import evaluate_ladder
    from ..models import load_split_model

    try:  # before any work: a missing encoder is an error message, not a traceback an hour in
        codecs = parse_codecs(args.codecs)
    except CodecUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    items = split_items(scan_images(args.data), args.part)
    items = spread(items, args.limit)
    all_results = []
    first_model = None  # the codec baselines run the unsplit network of the first ladder's model
    for b in args.bundle or [None]:
        bundle = resolve_bundle(b)
        model = load_split_model(bundle.model, bundle.split, args.weights)
        first_model = first_model or model
        res = evaluate_ladder(model, bundle, items, batch_size=args.batch_size)
        ref = res["reference"]
        print(f"bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}) on {ref['n_images']} images; "
              f"unsplit top-1 {ref.get('top1', float('nan')):.2%}")
        print(f"{'rung':>4} {'lambda':>7} {'bpp':>7} {'est.bpp':>8} {'bytes':>7} {'top-1':>7} {'top-5':>7} {'agree':>6}")
        for r in res["rungs"]:
            print(f"{r['rung']:>4} {r['lambda']:>7g} {r['bpp']:>7.4f} {r['bpp_estimated']:>8.4f} "
                  f"{r['bytes_per_image']:>7.0f} {r.get('top1', float('nan')):>7.2%} {r.get('top5', float('nan')):>7.2%} "
                  f"{r['agreement']:>6.1%}")
        if args.update_manifest:
            update_metrics(bundle, res["rungs"], {"evaluation": {"data": str(args.data), "part": args.part,
                                                                 "reference": ref}})
        all_results.append({"bundle": str(bundle.root), "bundle_id": bundle.bundle_id, "model": bundle.model, **res})
    baselines = []
    if codecs:
        from ..baselines import evaluate_codec

        for codec in codecs:
            pts = evaluate_codec(first_model, items, codec, batch_size=args.batch_size)
            for p in pts:
                print(f"{codec:>5} {p['setting']:>5}  {p['bpp']:7.4f} bpp  top-1 {p.get('top1', float('nan')):.2%}")
            baselines += pts
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        summary = write_report(Path(args.out), all_results, baselines)
    else:
        from ..summary import summarize

        summary = summarize(all_results, baselines)
    print(summary_text(summary))
    return 0


def summary_text(summary: dict) -> str:
    """The summary table as printed on the terminal (the markdown of results.md)."""
    from ..summary import summary_markdown

    return "\n".join(summary_markdown(summary))


def write_report(out: Path, ladders: list, baselines: list, bd_variant: str = "pchip") -> dict:
    """results.json (every point plus a ``summary``), results.md (tables) and rd.png (rate-accuracy plot,
    log bpp, every ladder and codec). Returns the summary (see :mod:`shared.summary`)."""
    from ..plots import rate_accuracy_plot
    from ..summary import ladder_label, summarize, summary_markdown

    summary = summarize(ladders, baselines, variant=bd_variant)
    report = {"ladders": ladders, "baselines": baselines, "summary": summary}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["### Summary", "", *summary_markdown(summary), ""]
    curves = {}
    for lad in ladders:
        ref = lad["reference"]
        name = ladder_label(lad)
        lines += [f"### {name}", "", f"Unsplit model on the same {ref['n_images']} images: "
                  f"top-1 {100 * ref.get('top1', float('nan')):.2f}%, top-5 {100 * ref.get('top5', float('nan')):.2f}%", "",
                  "| rung | lambda | bpp (real) | bpp (estimated) | bytes/image | top-1 | top-5 | agrees with unsplit |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in lad["rungs"]:
            lines.append(f"| {r['rung']} | {r['lambda']:g} | {r['bpp']:.4f} | {r['bpp_estimated']:.4f} | "
                         f"{r['bytes_per_image']:.0f} | {100 * r.get('top1', float('nan')):.2f}% | "
                         f"{100 * r.get('top5', float('nan')):.2f}% | {100 * r['agreement']:.1f}% |")
        lines.append("")
        curves[name] = lad["rungs"]
    for codec in sorted({p["method"] for p in baselines}):
        pts = [p for p in baselines if p["method"] == codec]
        lines += [f"### {codec.upper()} on the input crop, unsplit model in the cloud", "",
                  "| setting | bpp | top-1 | top-5 |", "|---|---:|---:|---:|"]
        lines += [f"| {p['setting']} | {p['bpp']:.4f} | {100 * p.get('top1', float('nan')):.2f}% | "
                  f"{100 * p.get('top5', float('nan')):.2f}% |" for p in pts]
        lines.append("")
        curves[codec.upper()] = pts
    (out / "results.md").write_text("\n".join(lines) + "\n")
    ref = ladders[0]["reference"].get("top1") if ladders else None
    rate_accuracy_plot(curves, out / "rd.png", reference=ref, title="rate vs accuracy on held-out images")
    return summary
