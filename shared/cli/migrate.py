"""``splitinfer migrate``: convert a float-hyper-decoder ladder (bundle format 1) to the bit-exact integer one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def setup_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.epilog = (
        "Only h_s is retrained (on the bits of y; g_a, h_a and g_s are frozen, so y and z are unchanged). "
        "Training images follow the held-out rule of `splitinfer train`; --eval-data measures the new ladder "
        "on held-out images and records the figures in its manifest."
    )
    p.add_argument("--bundle", required=True, help="bundle to migrate (left untouched)")
    p.add_argument("--data", action="append", required=True, help="image folder or CSV (repeatable)")
    p.add_argument("--extra-data", action="append", default=[], help="unlabelled images used in full")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--steps", type=int, default=2000, help="training steps per rung")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--views", type=int, default=4, help="augmented views per training image")
    p.add_argument("--limit", type=int, default=0, help="at most this many training images (0 = all)")
    p.add_argument("--eval-data", action="append", default=[], help="folder/CSV whose held-out images measure each rung")
    p.add_argument("--eval-limit", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="where cached head features go (default: OUT/cache)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the model's pretrained weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..bundle import load_bundle
    from ..data import scan_images, split_items
    from ..models import load_split_model
    from ..training.cache import build_cache
    from ..training.migrate import migrate_bundle
    from ..training.recipe import measure_heldout

    src = load_bundle(args.bundle, allow_float_hyper=True)
    if src.config.rate_model != "hyperprior" or src.config.hyper_decoder == "integer":
        print(f"error: {args.bundle} has no floating-point hyper-decoder: nothing to migrate", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.resolve() == src.root.resolve():
        print("error: --out must differ from --bundle (the source is kept)", file=sys.stderr)
        return 2
    model = load_split_model(src.model, src.split, args.weights).to(args.device)
    src.check_backbone(model)
    items = []
    for d in args.data:
        items += split_items(scan_images(d, labels=False), "train")
    for d in args.extra_data:
        items += scan_images(d, labels=False)
    if args.limit:
        items = items[: args.limit]
    if not items:
        print("error: no training images found", file=sys.stderr)
        return 2
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
    path = cache_dir / f"{src.model}-{src.split}-v{args.views}-n{len(items)}-s{args.seed}-r0.safetensors"
    print(f"migrating {src.bundle_id} ({len(src.rungs)} rungs): {len(items)} images x {args.views} views")
    cache = build_cache(model, items, args.views, device=args.device, seed=args.seed, path=path)
    command = "splitinfer migrate " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["migrate"] else None
    bundle = migrate_bundle(src, cache, out, args.steps, args.batch_size, args.lr, args.device, args.seed, command)
    print(f"wrote bundle {bundle.bundle_id} with {len(bundle.rungs)} rungs to {out}")
    if args.eval_data:
        measure_heldout(model, bundle, args.eval_data, args.eval_limit)
    return 0
