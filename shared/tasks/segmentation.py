"""Semantic segmentation: one class per pixel (CamVid, VOC). Mean IoU and pixel accuracy; answers are masks.

Labels are (H, W) uint8 masks; values >= the number of classes are void (ignored), as CamVid's 11. In the
training cache the teacher's per-pixel logits are kept average-pooled to 1/:data:`DENSE_STRIDE` of the input
(full size would be 11x360x480 values per view for CamVid) and the student's are pooled the same way for the
distillation loss; the cross-entropy runs on the full-size masks.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from .base import Answer, OutputSpec, OutputTensor, Scores, Task, as_array, register_task

if TYPE_CHECKING:  # torch (and the data pipeline) are imported where they are used: see base.py
    from torch import Tensor

    from ..data import SegmentationDataset

__all__ = ["Segmentation", "ConfusionScores", "DENSE_STRIDE", "segmentation_ce", "encode_mask_png", "MASK",
           "CLASS_PIXELS", "class_pixels_output", "mask_png", "class_pixels"]

DENSE_STRIDE = 8  # cached segmentation logits: 45x60 for a 360x480 input (the teacher's own are 23x30, upsampled)


def segmentation_ce(logits: Tensor, masks: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Per-pixel cross-entropy against (N, H, W) masks; values >= the number of classes are void (ignored).
    A batch without a single labelled pixel gives 0 (with a gradient), not NaN."""
    import torch.nn.functional as F

    target = masks.long().masked_fill(masks.long() >= logits.shape[1], -100)
    if not (target >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-100)


def encode_mask_png(mask) -> bytes:
    """(H, W) integer class map (numpy) -> 8-bit grayscale PNG (16-bit when there are more than 256 classes)."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) if mask.max(initial=0) < 256 else mask.astype(np.uint16))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# The task's own outputs on the wire (after the ranked classes), and their typed accessors: the one place that
# names them (tests/test_structure.py).
MASK = OutputSpec("mask_png", "BYTES", (1,), "the class mask, an 8-bit PNG of class indexes")


CLASS_PIXELS = "class_pixels"  # its shape depends on the model's classes


def class_pixels_output(num_classes: int) -> OutputSpec:
    return OutputSpec(CLASS_PIXELS, "INT64", (1, num_classes), "pixels of each class in the mask, class order")


def mask_png(outputs: Mapping[str, OutputTensor]) -> Optional[bytes]:
    """The class mask (PNG bytes) of an answer's outputs; None when it has none (not a segmentation answer)."""
    t = MASK.of(outputs)
    return t.data[0] if t is not None and t.data else None


def class_pixels(outputs: Mapping[str, OutputTensor]) -> Optional[List[int]]:
    """The pixels of each class in the mask, in class order; None when the answer has none."""
    t = outputs.get(CLASS_PIXELS)
    return list(t.data) if t is not None else None


class ConfusionScores(Scores):
    """Mean IoU and pixel accuracy from one confusion matrix over the whole data set (void pixels ignored);
    an image counts as labelled when any of its pixels is."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        import torch

        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    per_pixel = True

    def _add(self, logits: Tensor, pred: Tensor, labels: Tensor) -> None:
        valid = labels < self.c
        self.n_labelled += int(valid.flatten(1).any(1).sum())
        # per image: correct and labelled pixels (pixel accuracy; mIoU would need each image's confusion matrix)
        self._keep("pixel_acc", ((pred == labels) & valid).flatten(1).sum(1), valid.flatten(1).sum(1))
        idx = labels[valid].long() * self.c + pred[valid]
        import torch

        self.confusion += torch.bincount(idx, minlength=self.c * self.c).view(self.c, self.c).cpu()

    def class_iou(self) -> List[Optional[float]]:
        """IoU per class over the data set; None for a class neither in the labels nor predicted."""
        cm = self.confusion.double()
        inter, union = cm.diag(), cm.sum(0) + cm.sum(1) - cm.diag()
        return [float(i / u) if u > 0 else None for i, u in zip(inter, union)]

    def _figures(self) -> Dict:
        ious = [v for v in self.class_iou() if v is not None]
        return {"miou": sum(ious) / len(ious), "pixel_acc": float(self.confusion.diag().sum() / self.confusion.sum()),
                "class_iou": self.class_iou()}


@register_task
class Segmentation(Task):
    name = "segmentation"
    metrics = ("miou", "pixel_acc")
    metric_labels = {"miou": "mIoU", "pixel_acc": "pixel acc."}
    dense = True

    def make_dataset(self, items: Sequence, pre, train: bool = False) -> SegmentationDataset:
        """(input, mask): for training, random rescaling, crops and flips nearer scale 1 than the teacher's
        fine-tuning (the bottleneck learns the features of inputs like those it will code); else the input crop."""
        from ..data import SegmentationDataset, seg_eval_transform, seg_train_transform

        transform = seg_train_transform(pre, scale=(0.75, 1.5)) if train else seg_eval_transform(pre)
        return SegmentationDataset(items, transform)

    def item_labels(self, items: Sequence, pre) -> List[Tensor]:
        from ..data import load_mask, mask_crop

        return [mask_crop(None if y is None else load_mask(y), pre) for _, y in items]

    def scores(self, num_classes: int) -> ConfusionScores:
        return ConfusionScores(num_classes)

    def cache_output(self, teacher: Tensor, input_hw: Sequence[int]) -> Tensor:
        """Per-pixel logits average-pooled to 1/DENSE_STRIDE of the input."""
        import torch.nn.functional as F

        return F.adaptive_avg_pool2d(teacher, [math.ceil(s / DENSE_STRIDE) for s in input_hw])

    def cache_labels(self, labels: Tensor, keep: bool) -> Tensor:
        """The masks, or -1 per view when the items have none (label-free runs keep no masks)."""
        import torch

        return labels if keep else torch.full((len(labels),), -1)

    def match_teacher(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The student's logits average-pooled to the (cached, reduced) resolution of the teacher's."""
        if student.shape[-2:] != teacher.shape[-2:]:
            import torch.nn.functional as F

            return F.adaptive_avg_pool2d(student, teacher.shape[-2:])
        return student

    def supervised_loss(self, logits: Tensor, labels: Optional[Tensor]) -> Tensor:
        if labels is None or labels.shape[-2:] != logits.shape[-2:] or labels.shape[0] != logits.shape[0]:
            raise ValueError("supervised segmentation needs a mask for every image (use distill mode)")
        return segmentation_ce(logits, labels)

    def answer(self, output, names: Sequence[str], top_k: int) -> Answer:
        """The per-pixel argmax as a PNG mask, the pixel count of every class, and the classes ranked by the
        share of pixels they take (the share is the score; ties: the lower class index first)."""
        import numpy as np

        out = as_array(output)
        mask = out[0].argmax(0)
        counts = np.bincount(mask.reshape(-1), minlength=out.shape[1])
        share = counts / mask.size
        idx = np.argsort(-share, kind="stable")[: min(top_k, counts.size)]
        top = [(int(i), names[int(i)], float(share[i])) for i in idx if share[i] > 0]
        pixels = class_pixels_output(out.shape[1])
        return Answer(top, {MASK.name: MASK.tensor([encode_mask_png(mask)]),
                            pixels.name: pixels.tensor([int(c) for c in counts])})

    def outputs(self, num_classes: int) -> List[OutputSpec]:
        return super().outputs(num_classes) + [MASK, class_pixels_output(num_classes)]

    def output_problem(self, outputs: Mapping[str, OutputTensor], num_classes: int) -> Optional[str]:
        problem = super().output_problem(outputs, num_classes)
        counts = class_pixels(outputs)
        if problem is None and counts is not None and any(c < 0 for c in counts):
            return "a class pixel count is negative"
        return problem
