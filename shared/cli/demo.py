"""``splitinfer demo``: a real round trip on loopback, edge -> gRPC -> cloud, at three bitrate hints.

Starts the cloud server (REST and gRPC) on 127.0.0.1 with the embedded ladder, runs the edge client on
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
    from shared.bundle import resolve_bundle
    from shared.labels import class_names

    folder = Path(args.images) if args.images else samples_dir()
    with (folder / "labels.csv").open() as f:
        samples = [(folder / r["filename"], int(r["class_index"])) for r in csv.DictReader(f)]
    bundle = resolve_bundle(args.bundle)
    hints = [float(v) for v in args.bitrates.split(",")] if args.bitrates else _default_hints(bundle)
    settings = Settings(http_port=0, grpc_port=0, bundles=[BundleSpec(path=bundle.root, weights=args.weights)],
                        weights=args.weights)
    print(f"starting the cloud server on 127.0.0.1 with bundle {bundle.bundle_id} "
          f"({bundle.model}, split {bundle.split}, {len(bundle.rungs)} rungs) ...")
    with SplitInferServer(settings) as server:
        target = f"127.0.0.1:{server.http_port if args.rest else server.grpc_port}"
        print(f"  gRPC on 127.0.0.1:{server.grpc_port}, REST on http://127.0.0.1:{server.http_port}")
        (served,) = server.repository.models()
        reference = served.decoder.model  # the unsplit network (head + tail), for the comparison column
        names = class_names(bundle.model, reference.spec.num_classes)
        with EdgeClient(target, bundle=bundle, weights=args.weights, rest=args.rest) as client:
            print(f"  edge client connected over {'REST' if args.rest else 'gRPC'} to model {client.model!r}\n")
            head = (f"{'image':<29} {'true class':<16} {'unsplit':<16} {'hint':>6} {'rung':>4} {'bytes':>6} "
                    f"{'bpp':>6} {'edge ms':>7} {'rtt ms':>7}  answer")
            print(head)
            print("-" * len(head))
            hits, ref_hits = {h: 0 for h in hints}, 0
            for path, label in samples:
                with torch.no_grad():
                    ref = int(reference(client.encoder.preprocess(path)).argmax(1))
                ref_hits += ref == label
                for j, h in enumerate(hints):
                    r = client.infer(path, bitrate=h)
                    top = r.label
                    hits[h] += top[0] == label
                    ok = "ok" if top[0] == label else "--"
                    first = j == 0
                    print(f"{path.name[:29] if first else '':<29} {names[label][:16] if first else '':<16} "
                          f"{names[ref][:16] if first else '':<16} {h:>6.3f} {r.rung:>4} {r.n_bytes:>6} {r.bpp:>6.3f} "
                          f"{r.encode_ms:>7.1f} {r.latency_ms:>7.1f}  {ok} {top[1]} ({top[2]:.0%})")
    print("\nserver stopped cleanly")
    print(f"unsplit model: {ref_hits}/{len(samples)} correct; " +
          ", ".join(f"hint {h:.3f} bpp: {hits[h]}/{len(samples)}" for h in hints))
    return 0
