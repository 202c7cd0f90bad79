"""``splitinfer export-edge``: a bundle's edge half as ONNX graphs + arrays, for the torch-free edge runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def setup_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "The package holds the head and each rung's bottleneck encoder (and hyper-encoder) as ONNX, the integer\n"
        "hyper-decoder's weights and the entropy coder's tables as arrays, and the bundle's manifest; it is tied to\n"
        "the bundle id and the head's weights fingerprint. Copy it to the device and run, without PyTorch:\n"
        "  splitinfer edge --bundle EDGE_DIR --server CLOUD:50051 IMAGES...\n"
        "The cloud serves the bundle itself (splitinfer serve --bundle BUNDLE).")
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded ladder)")
    p.add_argument("--out", required=True, metavar="EDGE_DIR", help="folder to write (replaced if it exists)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")


def run(args) -> int:
    from ..edge_export import export_edge

    out = export_edge(args.bundle, Path(args.out), weights=args.weights, progress=lambda m: print(m, file=sys.stderr))
    from edge_client.package import EdgePackage

    pkg = EdgePackage(out)
    size = sum(f.stat().st_size for f in out.iterdir())
    m = pkg.manifest
    print(f"edge package {pkg.package_id} -> {out} ({size / 1e6:.1f} MB): bundle {pkg.bundle_id} "
          f"({m['model']}/{m['split']}, {len(m['rungs'])} rungs), head weights {m['head_weights']}")
    return 0
