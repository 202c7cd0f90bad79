"""Measure a ladder on held-out images: real bytes on the wire and the accuracy of the decoded result.

Accuracy is task-specific and lives in :class:`Scores` (used by the ladder, the codec baselines and the
segmentation teacher alike): top-1/top-5 against class labels, or, for segmentation, mean IoU and pixel
accuracy from one confusion matrix over the whole data set (void pixels ignored).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .bitstream import unpack
from .bundle import Bundle
from .data import Item, make_dataset
from .models.split import SplitModel
from .pipeline import LadderCodec, bits_per_pixel
from .training.objectives import bpp_from_likelihoods

__all__ = ["METRICS", "Scores", "evaluate_ladder", "topk_correct", "segmentation_examples"]

# per task: the accuracy figures a point carries (fractions), the first being the one summaries compare
# (their names in tables: shared.summary.METRIC_LABELS)
METRICS = {"classification": ("top1", "top5"), "segmentation": ("miou", "pixel_acc")}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(1)


class Scores:
    """Accuracy of one method, accumulated batch by batch.

    ``add(logits, labels, reference)``: labels are class indexes (-1 = unknown) or (N, H, W) masks (values
    >= the number of classes are void); ``reference``: the unsplit model's output on the same inputs, for
    the agreement (share of images, or of pixels, where both predict the same class).
    """

    def __init__(self, task: str, num_classes: int):
        self.task, self.c = task, num_classes
        self.n = self.n_labelled = 0
        self.top1 = self.top5 = 0
        self.agree = self.compared = 0
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def add(self, logits: torch.Tensor, labels: torch.Tensor, reference: Optional[torch.Tensor] = None) -> None:
        pred = logits.argmax(1)
        self.n += len(logits)
        if reference is not None:
            same = pred == reference.argmax(1)
            self.agree += int(same.sum())
            self.compared += same.numel()
        labels = labels.to(logits.device)
        if self.task == "segmentation":
            valid = labels < self.c
            self.n_labelled += int(valid.flatten(1).any(1).sum())
            idx = labels[valid].long() * self.c + pred[valid]
            self.confusion += torch.bincount(idx, minlength=self.c * self.c).view(self.c, self.c).cpu()
        else:
            lab = labels >= 0
            self.n_labelled += int(lab.sum())
            self.top1 += int(topk_correct(logits[lab], labels[lab], 1).sum())
            self.top5 += int(topk_correct(logits[lab], labels[lab], min(5, logits.shape[1])).sum())

    def class_iou(self) -> List[Optional[float]]:
        """IoU per class over the data set; None for a class neither in the labels nor predicted."""
        cm = self.confusion.double()
        inter, union = cm.diag(), cm.sum(0) + cm.sum(1) - cm.diag()
        return [float(i / u) if u > 0 else None for i, u in zip(inter, union)]

    def result(self) -> Dict:
        out: Dict = {}
        if self.compared:
            out["agreement"] = self.agree / self.compared
        if not self.n_labelled:
            return out
        if self.task == "segmentation":
            ious = [v for v in self.class_iou() if v is not None]
            out.update(miou=sum(ious) / len(ious), pixel_acc=float(self.confusion.diag().sum() / self.confusion.sum()),
                       class_iou=self.class_iou())
        else:
            out.update(top1=self.top1 / self.n_labelled, top5=self.top5 / self.n_labelled)
        return out


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
    """Per rung: mean real bpp (all bytes of each message), estimated bpp, accuracy against labels (when
    known; see :class:`Scores`) and agreement with the unsplit model; plus the unsplit model's own accuracy.
    ``metric`` names the figure summaries compare (``top1`` or ``miou``)."""
    codec = LadderCodec(bundle, device)
    rungs = list(range(len(bundle.rungs))) if rungs is None else list(rungs)
    spec = model.spec
    pre = spec.preprocess
    n_pix = pre.input_size[0] * pre.input_size[1]
    ds = make_dataset(items, pre, spec.task)
    acc = {r: {"bytes": 0, "side_bytes": 0, "est_bits": 0.0, "scores": Scores(spec.task, spec.num_classes)} for r in rungs}
    ref = Scores(spec.task, spec.num_classes)
    n = 0
    loader = DataLoader(ds, batch_size=batch_size)
    for x, y in tqdm(loader, desc="evaluating ladder", disable=not progress, unit="batch"):
        x = x.to(device)
        feat = model.head(x)
        teacher = model.tail(feat, x)
        n += len(x)
        ref.add(teacher, y)
        for r in rungs:
            msgs = codec.encode(feat, tuple(x.shape[-2:]), r)
            feats = torch.cat([codec.decode(m)[0] for m in msgs])
            a = acc[r]
            a["bytes"] += sum(len(m) for m in msgs)
            a["side_bytes"] += sum(sum(unpack(m)[0].payload_lengths[1:]) for m in msgs)  # z after y
            a["est_bits"] += float(bpp_from_likelihoods(codec.rung(r).likelihoods(feat), n_pix)) * n_pix * len(x)
            a["scores"].add(model.tail(feats, x), y, reference=teacher)
    results: List[Dict] = []
    for r in rungs:
        a = acc[r]
        results.append({
            "rung": r,
            "lambda": bundle.rungs[r].lam,
            "bpp": bits_per_pixel(a["bytes"], pre.input_size) / n,
            "bpp_estimated": a["est_bits"] / n_pix / n,
            "bytes_per_image": a["bytes"] / n,
            "side_share": a["side_bytes"] / max(a["bytes"], 1),  # the hyperprior's z payload / all bytes
            "n_images": n,
            **a["scores"].result(),
        })
    return {"rungs": results, "reference": {"n_images": n, **ref.result()}, "metric": METRICS[spec.task][0]}


@torch.no_grad()
def segmentation_examples(
    model: SplitModel,
    bundle: Bundle,
    items: Sequence[Item],
    rungs: Sequence[int],
    codec: str = "webp",
) -> List[Dict]:
    """For each item: the input crop, its mask, the unsplit model's mask, the mask decoded at each rung (with
    its real bpp), and the mask of the unsplit model on the ``codec``-compressed input at the quality whose
    file is the largest not above the last rung's message (the codec at equal rate, per image)."""
    from .baselines import codec_roundtrip, equal_rate_quality
    from .data import input_crop, load_image, load_mask, mask_crop, to_model_input

    pre = model.spec.preprocess
    lc = LadderCodec(bundle)
    out = []
    for path, mask in items:
        img = input_crop(load_image(path), pre)
        x = to_model_input(img, pre)[None]
        feat = model.head(x)
        ex = {"name": path.name, "input": img, "truth": mask_crop(load_mask(mask) if mask else None, pre),
              "unsplit": model.tail(feat, x).argmax(1)[0], "rungs": []}
        for r in rungs:
            (msg,) = lc.encode(feat, tuple(x.shape[-2:]), r)
            pred = model.tail(lc.decode(msg)[0], x).argmax(1)[0]
            ex["rungs"].append({"rung": r, "bpp": bits_per_pixel(len(msg), pre.input_size), "mask": pred})
        budget = len(msg)  # the last rung's bytes
        q = equal_rate_quality(img, codec, budget)
        dec, n_bytes = codec_roundtrip(img, codec, q)
        ex["codec"] = {"codec": codec, "quality": q, "bpp": bits_per_pixel(n_bytes, pre.input_size),
                       "mask": model(to_model_input(dec, pre)[None]).argmax(1)[0]}
        out.append(ex)
    return out
