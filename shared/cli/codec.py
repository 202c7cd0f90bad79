"""``splitinfer encode`` / ``decode`` / ``info``: the edge and cloud halves on files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_BUNDLE_HELP = "bundle folder (default: the embedded efficientnet_lite0 ladder)"


def setup_encode(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="input image (JPEG, PNG, WebP, ...)")
    p.add_argument("-o", "--output", required=True, help="bitstream file to write")
    p.add_argument("--bundle", default=None, help=_BUNDLE_HELP)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bitrate", type=float, default=None, help="target bits per pixel; picks the rung")
    g.add_argument("--rung", type=int, default=None, help="rung index (0 = highest rate)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")


def run_encode(args) -> int:
    from edge_client import EdgeEncoder

    enc = EdgeEncoder(args.bundle, weights=args.weights)
    frame = enc.encode(args.image, bitrate=args.bitrate, rung=args.rung)
    Path(args.output).write_bytes(frame.data)
    print(f"{args.output}: {frame.n_bytes} bytes, {frame.bpp:.4f} bpp over {frame.input_hw[0]}x{frame.input_hw[1]}, "
          f"rung {frame.rung} of bundle {enc.bundle.bundle_id}")
    return 0


def setup_decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("bitstream", help="file written by `splitinfer encode`")
    p.add_argument("--bundle", default=None, help=_BUNDLE_HELP)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--json", action="store_true")


def run_decode(args) -> int:
    from cloud_server import CloudDecoder
    from shared.bitstream import BitstreamError

    dec = CloudDecoder(args.bundle, weights=args.weights)
    try:
        pred = dec.decode(Path(args.bitstream).read_bytes(), topk=args.topk)
    except BitstreamError as e:
        print(f"error: {args.bitstream}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"rung": pred.rung, "bytes": pred.n_bytes, "bpp": pred.bpp, "topk": pred.topk,
                          "class_pixels": pred.class_pixels, "timings_ms": pred.timings_ms}))
        return 0
    print(f"rung {pred.rung}, {pred.n_bytes} bytes ({pred.bpp:.4f} bpp)")
    for i, name, p in pred.topk:
        print(f"  {p:6.1%}  {i:4d}  {name}")
    return 0


def setup_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", nargs="?", default=None, help=_BUNDLE_HELP)


def run_info(args) -> int:
    from shared.bundle import resolve_bundle

    from shared.evaluation import METRICS
    from shared.summary import METRIC_LABELS

    b = resolve_bundle(args.bundle)
    print(f"bundle {b.bundle_id}: {b.model} split {b.split}, rate model {b.config.rate_model}, {b.root}")
    cols = [(k, METRIC_LABELS[k]) for k in METRICS.get(b.manifest.get("task"), METRICS["classification"])]
    ref = b.manifest.get("evaluation", {}).get("reference", {})
    if ref:
        print(f"unsplit model on the same held-out images: {cols[0][1]} {ref.get(cols[0][0], float('nan')):.2%} "
              f"({ref.get('n_images')} images)")
    print(f"{'rung':>4} {'lambda':>8} {'bpp':>8} " + " ".join(f"{label:>10}" for _, label in cols))
    for r in b.rungs:
        m = r.metrics
        f = lambda k, fmt: (fmt.format(m[k]) if k in m else "-")  # noqa: E731
        print(f"{r.index:>4} {r.lam:>8g} {f('bpp', '{:.4f}'):>8} " + " ".join(f"{f(k, '{:.2%}'):>10}" for k, _ in cols))
    from shared.training.recipe import ladder_warnings

    for w in ladder_warnings(b.manifest):
        print(f"WARNING: {w}")
    return 0


def setup_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="bundle folder to write")
    p.add_argument("picks", nargs="+", metavar="BUNDLE:RUNG[,RUNG...]",
                   help="rungs to take from each (measured) source bundle")
    p.add_argument("--transforms-dtype", choices=["float32", "float16"], default=None,
                   help="store g_a/g_s weights in this precision (float16 halves a deep rung; measure it again); "
                        "default: the first source's")


def run_merge(args) -> int:
    from shared.bundle import load_bundle, merge_bundles

    picks = []
    for spec in args.picks:
        path, _, rungs = spec.rpartition(":")
        b = load_bundle(path)
        picks += [(b, int(r)) for r in rungs.split(",")]
    m = merge_bundles(args.out, picks, transforms_dtype=args.transforms_dtype)
    print(f"wrote bundle {m.bundle_id} with {len(m.rungs)} rungs to {args.out}")
    return 0
