"""``splitinfer train``: cache the frozen parts, train one rung per lambda, write and measure a bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _floats(s: str):
    return [float(v) for v in s.split(",") if v.strip()]


def setup_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.epilog = (
        "Images listed by --data are used for training except those held out by the fixed rule "
        "(shared.data.is_heldout: CRC32 of the file name is odd); --eval-data uses only the held-out ones, "
        "so no image ever both trains and evaluates. Label-free distillation is the default."
    )
    p.add_argument("--model", default="efficientnet_lite0", help="backbone (see `splitinfer models`)")
    p.add_argument("--split", default=None, help="split point (default: the model's default split)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the model's pretrained weights)")
    p.add_argument("--data", action="append", required=True,
                   help="image folder or CSV (repeatable); segmentation masks: a folder X beside Xannot (CamVid)")
    p.add_argument("--part", default="train", choices=["train", "all"],
                   help="'all' trains on every --data image, e.g. a data set's own training split that is never "
                        "evaluated (CamVid train/val against test)")
    p.add_argument("--extra-data", action="append", default=[],
                   help="unlabelled images used in full for training (no held-out rule): data you never evaluate on")
    p.add_argument("--eval-data", action="append", default=[], help="folder/CSV whose held-out images measure each rung")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on at most this many held-out images (0 = all)")
    p.add_argument("--out", required=True, help="bundle folder to write (also holds the checkpoint and logs)")
    p.add_argument("--supervised", action="store_true",
                   help="cross-entropy with labels (segmentation: masks, void ignored) instead of distillation")
    p.add_argument("--lambdas", type=_floats, default=[64, 32, 16, 8, 4, 2], help="comma-separated, one rung each")
    p.add_argument("--steps", type=int, default=2000, help="steps for the first (highest-rate) rung")
    p.add_argument("--steps-per-rung", type=int, default=800, help="steps for each warm-started rung")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds for the whole ladder (0 = no limit); each rung's schedule is compressed to fit")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--views", type=int, default=4, help="augmented views cached per training image")
    p.add_argument("--tail-every", type=int, default=1, help="logit loss every k steps (0 = split MSE only)")
    p.add_argument("--feature-warmup", type=float, default=0.3,
                   help="share of the first rung's steps trained on the split-feature MSE alone (no tail: cheap)")
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of the split-feature MSE in the distortion")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    p.add_argument("--rate-model", default="hyperprior", choices=["hyperprior", "factorized", "static"])
    p.add_argument("--latent", type=int, default=None, help="latent channels of y (default by split depth)")
    p.add_argument("--hidden", type=int, default=None, help="encoder width")
    p.add_argument("--dec-hidden", type=int, default=None, help="decoder width")
    p.add_argument("--stride", type=int, default=None, help="latent stride against the split feature")
    p.add_argument("--hyper-stride", type=int, default=None, help="side-information stride against y")
    p.add_argument("--hyper-decoder", default="integer", choices=["integer", "float"],
                   help="hyperprior h_s: integer (bit-exact decoding on every device) or float (comparison only)")
    p.add_argument("--side-refit-steps", type=int, default=500,
                   help="hyperprior: refit the z density to the training z after training (0 = off; changes only "
                        "the bits of z, see shared/training/side_density.py)")
    p.add_argument("--qp", type=float, default=1.0, help="quantiser step of the static rate model")
    p.add_argument("--limit", type=int, default=0, help="use at most this many training images (0 = all)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes while caching")
    p.add_argument("--init-from", default=None, metavar="BUNDLE[:RUNG]",
                   help="start the first rung from a rung of an existing bundle with the same config "
                        "(two-stage recipes: features first, logits last)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--cache-dir", default=None, help="where cached features go (default: OUT/cache)")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def default_bottleneck(depth: str, in_channels: int, args) -> dict:
    """Sizes per split depth: shallow features are large and fine, deep ones small and semantic."""
    deep = depth == "deep"
    d = dict(
        in_channels=in_channels,
        latent=args.latent or (32 if deep else 32),
        hidden=args.hidden or (max(64, in_channels // 2) if deep else 48),
        dec_hidden=args.dec_hidden or (max(128, in_channels) if deep else 64),
        stride=args.stride or (1 if deep else 2),
        rate_model=args.rate_model,
        hyper=32,
        hyper_stride=args.hyper_stride or (2 if deep else 4),
        qp=args.qp,
        hyper_decoder=getattr(args, "hyper_decoder", "integer"),
    )
    return d


def feature_stride(input_hw, feature_hw) -> int:
    """The stride s with ceil(input / s) == feature on both axes (the relation the bitstream checks):
    360x480 -> 23x30 is stride 16, which 360 // 23 is not."""
    import math

    for s in (1, 2, 4, 8, 16, 32, 64):
        if all(math.ceil(i / s) == f for i, f in zip(input_hw, feature_hw)):
            return s
    raise ValueError(f"a {feature_hw[0]}x{feature_hw[1]} feature of a {input_hw[0]}x{input_hw[1]} input has no "
                     "power-of-two stride with ceil rounding")


def measure_heldout(model, bundle, eval_data, limit: int = 0):
    """Measure every rung on the held-out images of ``eval_data``, print the figures and record them in
    the bundle's manifest (``train --eval-data``, ``migrate --eval-data``)."""
    from ..bundle import update_metrics
    from ..data import scan_images, split_items, spread
    from ..evaluation import evaluate_ladder

    items = [it for d in eval_data for it in split_items(scan_images(d), "heldout")]
    res = evaluate_ladder(model.to("cpu"), bundle, spread(items, limit))
    bundle = update_metrics(bundle, res["rungs"], {"evaluation": {
        "data": [str(d) for d in eval_data], "part": "heldout", "reference": res["reference"]}})
    for r in res["rungs"]:
        print(json.dumps(r))
    print("unsplit reference:", json.dumps(res["reference"]))
    return bundle


def run(args) -> int:
    import torch
    import torch.distributed as dist

    from ..bundle import save_bundle
    from ..codec import BottleneckConfig
    from ..data import scan_images, split_items
    from ..models import load_split_model
    from ..training.cache import build_cache
    from ..training.ladder import LadderConfig, dist_info, images_per_second, train_ladder, write_args

    rank, world, distributed = dist_info()
    device = _device(args.device)
    if distributed:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if device.startswith("cuda"):
            device = f"cuda:{int(__import__('os').environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_split_model(args.model, args.split, args.weights).to(device)
    split = model.split.name

    items = []
    for d in args.data:
        items += split_items(scan_images(d, labels=args.supervised), args.part)
    for d in args.extra_data:
        items += scan_images(d, labels=False)
    if args.limit:
        items = items[: args.limit]
    if args.supervised and any(lab is None for _, lab in items):
        print("error: --supervised needs labels for every training image", file=sys.stderr)
        return 2
    shard = items[rank::world]
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
    # labelled and label-free caches differ (labels are only read with --supervised)
    tag = "-labels" if args.supervised else ""
    cache_path = cache_dir / f"{args.model}-{split}-v{args.views}-n{len(shard)}-s{args.seed}-r{rank}{tag}.safetensors"
    if rank == 0:
        print(f"{args.model} split {split}: {len(items)} training images x {args.views} views, device {device}, "
              f"{world} process(es)")
    cache = build_cache(model, shard, args.views, device=device, seed=args.seed + rank, path=cache_path,
                        workers=args.workers)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # training only; decoding never depends on it
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        cache = cache.to(device)

    c, fh, fw = cache.features.shape[1:]
    bcfg = BottleneckConfig(**default_bottleneck(model.split.depth, c, args))
    lcfg = LadderConfig(
        lambdas=args.lambdas, steps=args.steps, steps_per_rung=args.steps_per_rung, batch_size=args.batch_size,
        lr=args.lr, mode="supervised" if args.supervised else "distill", temperature=args.temperature,
        feature_weight=args.feature_weight, tail_every=args.tail_every, feature_warmup=args.feature_warmup,
        seed=args.seed, time_budget=args.time_budget,
    )
    if rank == 0:
        write_args(out, vars(args) | {"bottleneck": bcfg.to_dict()})
    init = None
    if args.init_from:
        from ..bundle import load_bundle

        path, _, rung = args.init_from.partition(":")
        src = load_bundle(path, allow_float_hyper=args.hyper_decoder == "float")
        if src.config != bcfg or (src.model, src.split) != (args.model, split):
            print(f"error: --init-from {path}: its model/split/config differ from this run's", file=sys.stderr)
            return 2
        init = src.load_rung(int(rung or len(src.rungs) - 1)).state_dict()
    nets = train_ladder(model, cache, bcfg, lcfg, out, device=device, resume=not args.no_resume, init=init)
    if rank != 0:
        dist.destroy_process_group()
        return 0
    refits = []
    if bcfg.rate_model == "hyperprior" and args.side_refit_steps > 0:
        from ..training.side_density import refit_side_density

        for lam, net in zip(args.lambdas, nets):
            rec = refit_side_density(net.to(device), cache.features, steps=args.side_refit_steps, seed=args.seed)
            refits.append({"lambda": lam, **rec})
            print(f"rung λ={lam:g}: z density refitted, {rec['bits_per_z_before']:.3f} -> "
                  f"{rec['bits_per_z_after']:.3f} bits per z value (model estimate)")

    pre = model.spec.preprocess
    extra = {
        "task": model.spec.task,
        "feature_shape": [int(c), int(fh), int(fw)],
        "feature_stride": feature_stride(pre.input_size, (int(fh), int(fw))),
        "preprocess": {"input_size": list(pre.input_size), "resize": pre.resize, "mean": list(pre.mean), "std": list(pre.std)},
        "backbone_weights": model.fingerprints(),  # edge and cloud refuse other weights (Bundle.check_backbone)
        "training": {
            "objective": lcfg.mode,
            "data": [str(d) for d in args.data],
            "part": args.part,
            "extra_data": [str(d) for d in args.extra_data],
            "n_images": len(items),
            "views": args.views,
            "heldout_rule": ("shared.data.is_heldout: images whose file-name CRC32 is odd never train"
                             if args.part == "train" else "none (--part all: every --data image trains)"),
            "steps": args.steps,
            "steps_per_rung": args.steps_per_rung,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "init_from": args.init_from,
            "device": device,
            "processes": world,
            "images_per_second": images_per_second(out),
            "side_refit": refits,
            "command": "splitinfer train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None,
        },
    }
    bundle = save_bundle(out, args.model, split, bcfg, nets, args.lambdas, extra=extra)
    print(f"wrote bundle {bundle.bundle_id} with {len(bundle.rungs)} rungs to {out}")
    if args.eval_data:
        measure_heldout(model, bundle, args.eval_data, args.eval_limit)
    if distributed:
        dist.destroy_process_group()
    return 0
