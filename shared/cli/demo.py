"""``splitinfer demo``: a real round trip on loopback, edge -> gRPC -> cloud, at three bitrate hints.

Starts the cloud server (REST and gRPC) on 127.0.0.1 with the embedded ladders, runs the edge client (the
torch-free runtime: ONNX Runtime + numpy, on each ladder's edge package, exported once into the cache) on
the embedded sample images at three bitrate hints, prints every answer with its bytes, bpp and
latency next to the true class and the unsplit model's answer, and stops the server cleanly.
Needs no network and no data: the ladder, the pretrained backbone (from its PyPI package) and the
samples all ship with splitinfer.
"""

from __future__ import annotations

import argparse
import csv
from importlib import resources
from pathlib import Path


def samples_dir() -> Path:
    return Path(str(resources.files("shared").joinpath("assets", "samples")))


def setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded ladder)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--images", default=None, help="folder with labels.csv (default: the embedded samples)")
    p.add_argument("--bitrates", default=None,
                   help="comma-separated bpp hints (default: the measured bpp of the top, a middle and the bottom rung)")
    p.add_argument("--rest", action="store_true", help="send over REST instead of gRPC")


def _default_hints(bundle) -> list:
    n = len(bundle.rungs)
    picks = sorted({0, n // 2, n - 1})
    return [bundle.rungs[i].bpp if bundle.rungs[i].bpp else None for i in picks]


def run(args) -> int:
    import torch

    from cloud_server.server import SplitInferServer
    from cloud_server.settings import BundleSpec, Settings
    from edge_client.client import EdgeClient
    from shared.bundle import embedded_bundle_paths, load_bundle, resolve_bundle
    from shared.labels import class_names
    from shared.models.split import split_info

    folder = Path(args.images) if args.images else samples_dir()
    with (folder / "labels.csv").open() as f:
        samples = [(folder / r["filename"], int(r["class_index"])) for r in csv.DictReader(f)]
    bundles = [resolve_bundle(args.bundle)] if args.bundle else [load_bundle(p) for p in embedded_bundle_paths()]
    if args.bitrates and len(bundles) > 1:
        print("error: --bitrates needs one --bundle (the embedded ladders have different rates)")
        return 2
    hints = {b.bundle_id: ([float(v) for v in args.bitrates.split(",")] if args.bitrates else _default_hints(b))
             for b in bundles}
    settings = Settings(http_port=0, grpc_port=0, weights=args.weights,
                        bundles=[BundleSpec(path=b.root, weights=args.weights) for b in bundles])
    print("starting the cloud server on 127.0.0.1 with " + "; ".join(
        f"bundle {b.bundle_id} ({b.model}, split {b.split}, the edge runs "
        f"{split_info(b.model, b.split)['edge_flop_share']:.0%} of the FLOPs, {len(b.rungs)} rungs)" for b in bundles))
    with SplitInferServer(settings) as server:
        target = f"127.0.0.1:{server.http_port if args.rest else server.grpc_port}"
        print(f"  gRPC on 127.0.0.1:{server.grpc_port}, REST on http://127.0.0.1:{server.http_port}")
        served = {m.bundle.bundle_id: m for m in server.repository.models()}
        reference = served[bundles[0].bundle_id].decoder.model  # the unsplit network, for the comparison column
        names = class_names(bundles[0].model, reference.spec.num_classes)
        clients = [EdgeClient(target, bundle=b, weights=args.weights, rest=args.rest, model=served[b.bundle_id].name)
                   for b in bundles]
        try:
            print(f"  edge clients connected over {'REST' if args.rest else 'gRPC'} to "
                  f"{', '.join(repr(c.model) for c in clients)}; the edge runs on ONNX Runtime (no PyTorch): "
                  + ", ".join(f"edge package {c.encoder.package.package_id}" for c in clients) + "\n")
            col = lambda b: f"{b.split[-12:]:>12}: {'rung':>4} {'bytes':>5} {'bpp':>5} {'ms':>5}  answer"  # noqa: E731
            head = f"{'image':<24} {'true class':<14} {'unsplit':<14} " + " | ".join(col(b) for b in bundles)
            print(head)
            print("-" * len(head))
            hits = {(c.model, j): 0 for c in clients for j in range(3)}
            sizes = {c.model: [] for c in clients}
            ref_hits = 0
            for path, label in samples:
                with torch.no_grad():
                    ref = int(reference(torch.from_numpy(clients[0].encoder.preprocess(path))).argmax(1))
                ref_hits += ref == label
                for j in range(max(len(h) for h in hints.values())):
                    cells = []
                    for c, b in zip(clients, bundles):
                        h = hints[b.bundle_id][min(j, len(hints[b.bundle_id]) - 1)]
                        r = c.infer(path, bitrate=h)
                        top = r.label
                        hits[(c.model, j)] = hits.get((c.model, j), 0) + (top[0] == label)
                        sizes[c.model].append(r.n_bytes)
                        cells.append(f"{'':>12}  {r.rung:>4} {r.n_bytes:>5} {r.bpp:>5.3f} {r.encode_ms:>5.1f}  "
                                     f"{'ok' if top[0] == label else '--'} {top[1][:14]:<14}")
                    first = j == 0
                    print(f"{path.name[:24] if first else '':<24} {names[label][:14] if first else '':<14} "
                          f"{names[ref][:14] if first else '':<14} " + " | ".join(cells))
        finally:
            for c in clients:
                c.close()
    print("\nserver stopped cleanly")
    print(f"unsplit model: {ref_hits}/{len(samples)} correct")
    for c, b in zip(clients, bundles):
        hs = hints[b.bundle_id]
        print(f"{c.model}: " + ", ".join(f"hint {h:.3f} bpp: {hits[(c.model, j)]}/{len(samples)}" for j, h in enumerate(hs))
              + f"; {sum(sizes[c.model]) / len(sizes[c.model]):.0f} bytes per image on average")
    return 0
