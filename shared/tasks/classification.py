"""Classification: one class per image (ImageNet, CIFAR-10). Top-1/top-5 accuracy, softmax answers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from .base import Answer, Scores, Task, as_array, register_task

if TYPE_CHECKING:  # torch (and the data pipeline) are imported where they are used: see base.py
    from torch import Tensor

    from ..data import ImageDataset

__all__ = ["Classification", "TopKScores", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(1)


class TopKScores(Scores):
    """Top-1 and top-5 accuracy against class indexes; -1 = unknown (not counted)."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.top1 = self.top5 = 0

    def _add(self, logits: Tensor, pred: Tensor, labels: Tensor) -> None:
        lab = labels >= 0
        self.n_labelled += int(lab.sum())
        safe = labels.clamp(min=0)  # unknown labels (-1) scored against class 0, then masked out by ``lab``
        top1 = topk_correct(logits, safe, 1) & lab
        top5 = topk_correct(logits, safe, min(5, logits.shape[1])) & lab
        self.top1 += int(top1.sum())
        self.top5 += int(top5.sum())
        self._keep("top1", top1.long(), lab.long())
        self._keep("top5", top5.long(), lab.long())

    def _figures(self) -> Dict:
        return {"top1": self.top1 / self.n_labelled, "top5": self.top5 / self.n_labelled}


@register_task
class Classification(Task):
    name = "classification"
    metrics = ("top1", "top5")
    metric_labels = {"top1": "top-1", "top5": "top-5"}
    view_store = True
    labels_in_views = True

    def make_dataset(self, items: Sequence, pre, train: bool = False) -> ImageDataset:
        """(input, class index or -1): random resized crops and flips for training, the input crop otherwise."""
        from ..data import ImageDataset, eval_transform, train_transform

        return ImageDataset(items, train_transform(pre) if train else eval_transform(pre))

    def item_labels(self, items: Sequence, pre) -> List[Tensor]:
        import torch

        return [torch.tensor(-1 if y is None else y) for _, y in items]

    def scores(self, num_classes: int) -> TopKScores:
        return TopKScores(num_classes)

    def supervised_loss(self, logits: Tensor, labels: Optional[Tensor]) -> Tensor:
        if labels is None or (labels < 0).any():
            raise ValueError("supervised training needs a label for every image (use distill mode)")
        import torch.nn.functional as F

        return F.cross_entropy(logits, labels)

    def answer(self, output, names: Sequence[str], top_k: int) -> Answer:
        """Softmax probabilities of the best ``top_k`` classes (ties: the lower class index first)."""
        import numpy as np

        z = as_array(output)[0].astype(np.float64).reshape(-1)
        p = np.exp(z - z.max())
        p /= p.sum()
        idx = np.argsort(-p, kind="stable")[: min(top_k, p.size)]
        return Answer([(int(i), names[int(i)], float(p[i])) for i in idx])
