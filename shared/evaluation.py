"""Measure a ladder on held-out images: real bytes on the wire and the accuracy of the decoded result."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .bundle import Bundle
from .data import ImageDataset, Item, eval_transform
from .models.split import SplitModel
from .pipeline import LadderCodec, bits_per_pixel
from .training.objectives import bpp_from_likelihoods

__all__ = ["evaluate_ladder", "topk_correct"]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(1)


@torch.no_grad()
def evaluate_ladder(
    model: SplitModel,
    bundle: Bundle,
    items: Sequence[Item],
    rungs: Optional[Sequence[int]] = None,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = True,
) -> Dict:
    """Per rung: mean real bpp (all bytes of each message), estimated bpp, top-1/top-5 against labels
    (when known) and agreement with the unsplit model; plus the unsplit model's own accuracy."""
    codec = LadderCodec(bundle, device)
    rungs = list(range(len(bundle.rungs))) if rungs is None else list(rungs)
    pre = model.spec.preprocess
    n_pix = pre.input_size[0] * pre.input_size[1]
    ds = ImageDataset(items, eval_transform(pre))
    acc = {r: {"bytes": 0, "est_bits": 0.0, "top1": 0, "top5": 0, "agree": 0} for r in rungs}
    ref = {"top1": 0, "top5": 0}
    n, n_lab = 0, 0
    loader = DataLoader(ds, batch_size=batch_size)
    for x, y in tqdm(loader, desc="evaluating ladder", disable=not progress, unit="batch"):
        x, y = x.to(device), y.to(device)
        feat = model.head(x)
        teacher = model.tail(feat, x)
        lab = y >= 0
        n += len(x)
        n_lab += int(lab.sum())
        ref["top1"] += int(topk_correct(teacher[lab], y[lab], 1).sum())
        ref["top5"] += int(topk_correct(teacher[lab], y[lab], 5).sum())
        for r in rungs:
            msgs = codec.encode(feat, tuple(x.shape[-2:]), r)
            feats = torch.cat([codec.decode(m)[0] for m in msgs])
            logits = model.tail(feats, x)
            a = acc[r]
            a["bytes"] += sum(len(m) for m in msgs)
            a["est_bits"] += float(bpp_from_likelihoods(codec.rung(r).likelihoods(feat), n_pix)) * n_pix * len(x)
            a["top1"] += int(topk_correct(logits[lab], y[lab], 1).sum())
            a["top5"] += int(topk_correct(logits[lab], y[lab], 5).sum())
            a["agree"] += int((logits.argmax(1) == teacher.argmax(1)).sum())
    results: List[Dict] = []
    for r in rungs:
        a = acc[r]
        row = {
            "rung": r,
            "lambda": bundle.rungs[r].lam,
            "bpp": bits_per_pixel(a["bytes"], pre.input_size) / n,
            "bpp_estimated": a["est_bits"] / n_pix / n,
            "bytes_per_image": a["bytes"] / n,
            "agreement": a["agree"] / n,
            "n_images": n,
        }
        if n_lab:
            row.update(top1=a["top1"] / n_lab, top5=a["top5"] / n_lab)
        results.append(row)
    reference = {"n_images": n}
    if n_lab:
        reference.update(top1=ref["top1"] / n_lab, top5=ref["top5"] / n_lab)
    return {"rungs": results, "reference": reference}
