"""``splitinfer demo``: the round trip edge -> bytes -> cloud on the embedded samples, at three rungs.

Needs nothing from the network: the embedded ladder, the pretrained backbone from its PyPI package
and a handful of sample images ship with splitinfer.
"""

from __future__ import annotations

import argparse
import csv
import time
from importlib import resources
from pathlib import Path


def samples_dir() -> Path:
    return Path(str(resources.files("shared").joinpath("assets", "samples")))


def setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded ladder)")
    p.add_argument("--images", default=None, help="folder with labels.csv (default: the embedded samples)")
    p.add_argument("--rungs", default=None, help="comma-separated rung indexes (default: top, middle, bottom)")


def run(args) -> int:
    import torch

    from cloud_server import CloudDecoder
    from edge_client import EdgeEncoder

    folder = Path(args.images) if args.images else samples_dir()
    with (folder / "labels.csv").open() as f:
        samples = [(folder / r["filename"], int(r["class_index"])) for r in csv.DictReader(f)]
    edge = EdgeEncoder(args.bundle)
    cloud = CloudDecoder(edge.bundle)
    b = edge.bundle
    n = len(b.rungs)
    rungs = [int(r) for r in args.rungs.split(",")] if args.rungs else sorted({0, n // 2, n - 1})
    names = cloud.names
    print(f"bundle {b.bundle_id}: {b.model}, split {b.split} (edge runs the head + encoder, cloud the rest)")
    for r in rungs:
        m = b.rungs[r].metrics
        if "bpp" in m:
            print(f"  rung {r}: lambda {b.rungs[r].lam:g}, measured {m['bpp']:.3f} bpp, top-1 {m.get('top1', 0):.1%}"
                  f" on {m.get('n_images')} held-out images")
    print()
    head = f"{'image':<30} {'true class':<18} {'unsplit':<18} {'rung':>4} {'bytes':>6} {'bpp':>6} {'ms':>6}  prediction"
    print(head)
    print("-" * len(head))
    hits = {r: 0 for r in rungs}
    ref_hits = 0
    for path, label in samples:
        x = edge.preprocess(path)
        with torch.no_grad():
            ref = int(cloud.model(x).argmax(1))
        ref_hits += ref == label
        for j, r in enumerate(rungs):
            t0 = time.perf_counter()
            frame = edge.encode(path, rung=r)
            pred = cloud.decode(frame.data, topk=1)
            ms = 1e3 * (time.perf_counter() - t0)
            ok = "ok" if pred.label == label else "--"
            hits[r] += pred.label == label
            first = j == 0
            print(f"{path.name[:30] if first else '':<30} {names[label][:18] if first else '':<18} "
                  f"{names[ref][:18] if first else '':<18} {r:>4} {frame.n_bytes:>6} {frame.bpp:>6.3f} {ms:>6.0f}  "
                  f"{ok} {pred.topk[0][1]} ({pred.topk[0][2]:.0%})")
    print()
    print(f"unsplit model: {ref_hits}/{len(samples)} correct; " +
          ", ".join(f"rung {r}: {hits[r]}/{len(samples)}" for r in rungs))
    return 0
