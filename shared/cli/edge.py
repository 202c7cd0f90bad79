"""``splitinfer edge``: encode images on this machine and send them to a splitinfer server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="images, or folders of images")
    p.add_argument("--server", required=True, help="HOST:PORT of the server's gRPC port (REST port with --rest)")
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bitrate", type=float, default=None, metavar="BPP", help="bitrate hint in bits per pixel")
    g.add_argument("--kbps", type=float, default=None, help="bitrate hint as a link rate in kbit/s (with --fps)")
    g.add_argument("--rung", type=int, default=None, help="force a rung (0 = highest rate)")
    p.add_argument("--fps", type=float, default=None, help="frame rate for --kbps")
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
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per request in seconds (default 10)")
    p.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable (default 3)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-cert", default=None, help="PEM file of the CA that signed the server's certificate")
    p.add_argument("--topk", type=int, default=1, help="classes to print per image (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per frame")
    p.add_argument("--masks", action="store_true",
                   help="segmentation: write each answer's mask beside its image as IMAGE.mask.png (a palette PNG: "
                        "class indexes as pixel values, shown in the class colours; the network input's size)")
    p.add_argument("--masks-dir", default=None, metavar="DIR", help="like --masks, into DIR instead")


MASK_SUFFIX = ".mask.png"


def write_mask(result, folder, model: str, num_classes: int) -> Path:
    """The answer's mask as a palette PNG: ``<image stem>.mask.png`` in ``folder`` (None: beside the image)."""
    import io

    from PIL import Image

    from shared.labels import palette_image

    src = Path(result.source)
    out = (Path(folder) if folder else src.parent) / (src.stem + MASK_SUFFIX)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(result.mask_png)) as m:
        palette_image(m, model, num_classes).save(out)
    return out


def _expand(paths):
    """Folders -> their images (by extension); files as given. A missing path stays in the list: it fails on its
    own line like any unreadable image, and the others go on."""
    from shared.imageprep import IMAGE_EXTS

    out = []
    for p in map(Path, paths):
        if p.is_dir():  # masks written by an earlier --masks run are not inputs
            out += sorted(q for q in p.rglob("*")
                          if q.suffix.lower() in IMAGE_EXTS and not q.name.endswith(MASK_SUFFIX))
        else:
            out.append(p)
    return out


def run(args) -> int:
    from edge_client import EdgeClient, ServiceError
    from shared.hint import BitrateHint

    if (args.kbps is None) != (args.fps is None):
        print("error: --kbps and --fps go together", file=sys.stderr)
        return 2
    images = _expand(args.images)
    if not images:
        print("error: no images found", file=sys.stderr)
        return 2
    hint = BitrateHint(target_bpp=args.bitrate, kbit_per_s=args.kbps, fps=args.fps)
    client = EdgeClient(args.server, bundle=args.bundle, weights=args.weights, model=args.model, rest=args.rest,
                        api_key=args.api_key or os.environ.get("SPLITINFER_API_KEY"), timeout_s=args.timeout,
                        retries=args.retries, tls=args.tls, root_cert=args.ca_cert, top_k=max(1, args.topk),
                        runtime=args.runtime, threads=args.threads)
    failed = 0
    num_classes = None
    if args.masks or args.masks_dir:
        num_classes = client.encoder.num_classes
    with client:
        try:
            client.connect()
            if not args.json:
                print(f"server {args.server} ({'REST' if args.rest else 'gRPC'}), model {client.model}, bundle "
                      f"{client.bundle.bundle_id}, hint: {hint if args.rung is None else f'rung {args.rung}'}")
                head = f"{'image':<32} {'rung':>4} {'bytes':>6} {'bpp':>7} {'enc ms':>7} {'rtt ms':>7}  prediction"
                print(head)
                print("-" * len(head))
            send = client.stream if args.stream else client.infer_many
            for r in send(images, rung=args.rung, hint=hint):
                failed += not r.ok
                mask = None
                if r.ok and r.mask_png and num_classes is not None:
                    mask = write_mask(r, args.masks_dir, client.bundle.model, num_classes)
                if args.json:
                    print(json.dumps({"image": r.source, "ok": r.ok, "rung": r.rung, "bytes": r.n_bytes,
                                      "bpp": r.bpp, "encode_ms": r.encode_ms, "latency_ms": r.latency_ms,
                                      "topk": r.topk, "class_pixels": r.class_pixels,
                                      "mask": str(mask) if mask else None, "server_timings_ms": r.server_timings_ms,
                                      "error": r.error.message if r.error else None}), flush=True)
                elif r.ok:
                    pred = "  ".join(f"{name} ({score:.0%})" for _, name, score in r.topk)
                    print(f"{Path(r.source).name[:32]:<32} {r.rung:>4} {r.n_bytes:>6} {r.bpp:>7.4f} "
                          f"{r.encode_ms:>7.1f} {r.latency_ms:>7.1f}  {pred}" + (f"  -> {mask}" if mask else ""),
                          flush=True)
                else:
                    what = "failed" if r.error.kind == "bad_image" else "refused"
                    print(f"{Path(r.source).name[:32]:<32} {what}: {r.error.code}: {r.error.message}", flush=True)
        except ServiceError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if failed and not args.json:
        print(f"{failed} of {len(images)} images failed", file=sys.stderr)
    return 1 if failed else 0
