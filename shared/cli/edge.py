"""``splitinfer edge``: encode images on this machine and send them to a splitinfer server."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..options import positive, server_address


def setup_edge(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="images, or folders of images")
    p.add_argument("--server", required=True, type=server_address,
                   help="HOST:PORT of the server's gRPC port (REST port with --rest)")
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bitrate", type=positive("a positive bpp"), default=None, metavar="BPP",
                   help="bitrate hint in bits per pixel")
    g.add_argument("--kbps", type=positive(), default=None, help="bitrate hint as a link rate in kbit/s (with --fps)")
    g.add_argument("--rung", type=int, default=None, help="force a rung (0 = highest rate)")
    p.add_argument("--fps", type=positive(), default=None, help="frame rate for --kbps")
    p.add_argument("--stream", action="store_true", help="send all frames over one InferStream (gRPC)")
    p.add_argument("--bundle", default=None,
                   help="edge package (splitinfer export-edge) or bundle folder (exported once into the cache; needs "
                        "PyTorch); default: the embedded ladder")
    p.add_argument("--weights", default=None, help="backbone weights file for that export (default: pretrained)")
    p.add_argument("--runtime", choices=("onnx", "torch"), default="onnx",
                   help="onnx: ONNX Runtime + numpy, no PyTorch (default); torch: the PyTorch reference encoder")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads (default: $SPLITINFER_EDGE_THREADS, else 1: fastest per frame on a "
                        "small, busy CPU)")
    p.add_argument("--model", default=None, help="server model name (default: the one serving this bundle)")
    p.add_argument("--api-key", default=None, help="API key (default: $SPLITINFER_API_KEY)")
    p.add_argument("--timeout", type=positive(), default=10.0, help="deadline per request in seconds (default 10)")
    p.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable (default 3)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-cert", default=None, help="PEM file of the CA that signed the server's certificate")
    p.add_argument("--topk", type=int, default=1, help="classes to print per image (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.add_argument("--masks", action="store_true",
                   help="segmentation: write each answer's mask beside its image as IMAGE.mask.png (a palette PNG: "
                        "class indexes as pixel values, shown in the class colours; the network input's size)")
    p.add_argument("--masks-dir", default=None, metavar="DIR", help="like --masks, into DIR instead")


def _expand(paths):
    """Folders -> their images (by extension); files as given. A missing path stays in the list: it fails on its
    own line like any unreadable image, and the others go on."""
    from ..imageprep import IMAGE_EXTS
    from ..reporting import MASK_SUFFIX

    out = []
    for p in map(Path, paths):
        if p.is_dir():  # masks written by an earlier --masks run are not inputs
            out += sorted(q for q in p.rglob("*")
                          if q.suffix.lower() in IMAGE_EXTS and not q.name.endswith(MASK_SUFFIX))
        else:
            out.append(p)
    return out


def run_edge(args) -> int:
    from edge_client import EdgeClient, ServiceError
    from shared.hint import BitrateHint

    from ..reporting import EDGE_HEADER, edge_row, write_mask

    if (args.kbps is None) != (args.fps is None):
        raise UserError("--kbps and --fps go together")
    images = _expand(args.images)
    if not images:
        raise UserError("no images found in " + ", ".join(args.images))
    hint = BitrateHint(target_bpp=args.bitrate, kbit_per_s=args.kbps, fps=args.fps)
    client = EdgeClient(args.server, bundle=args.bundle, weights=args.weights, model=args.model, rest=args.rest,
                        api_key=args.api_key or os.environ.get("SPLITINFER_API_KEY"), timeout_s=args.timeout,
                        retries=args.retries, tls=args.tls, root_cert=args.ca_cert, top_k=max(1, args.topk),
                        runtime=args.runtime, threads=args.threads)
    failed = 0
    num_classes = client.encoder.num_classes if args.masks or args.masks_dir else None
    with client:
        try:
            client.connect()
            if not args.json:
                print(f"server {args.server} ({'REST' if args.rest else 'gRPC'}), model {client.model}, bundle "
                      f"{client.bundle.bundle_id}, hint: {hint if args.rung is None else f'rung {args.rung}'}")
                print(EDGE_HEADER + "\n" + "-" * len(EDGE_HEADER))
            sent = []
            for r in (client.stream if args.stream else client.infer_many)(images, rung=args.rung, hint=hint):
                failed += not r.ok
                sent += [r.n_bytes] if r.ok else []
                mask = None
                if r.ok and r.mask_png and num_classes is not None:
                    mask = write_mask(r, args.masks_dir, client.bundle.model, num_classes)
                print(edge_row(r, mask, args.json), flush=True)
        except ServiceError as e:
            raise UserError(str(e)) from None
    if args.kbps and sent and not args.json:  # what the link carried against what it was given
        print(f"sent {8e-3 * sum(sent) / len(sent) * args.fps:.2f} kbit/s at {args.fps:g} fps (target {args.kbps:g}) "
              f"over {len(sent)} frames")
    if failed and not args.json:
        print(f"{failed} of {len(images)} images failed", file=sys.stderr)
    return 1 if failed else 0
