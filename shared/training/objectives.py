"""Training objectives: ``loss = bpp + lambda * distortion`` (CompressAI / timm task style).

Distortion is label-free by default: distillation from the unsplit network (the teacher), i.e. the
KL divergence between its softened logits and the student's, plus an MSE at the split that gives the
bottleneck a dense, direct signal (normalised by the feature's variance so lambda means the same at
every split). With labels, cross-entropy replaces the KL term.

What differs per task is the task's (``shared.tasks``): segmentation is the same per pixel, the KL averaged over
pixels (the teacher's logits are cached at a reduced resolution, so the student's are average-pooled to match:
``Task.match_teacher``), and the cross-entropy (``Task.supervised_loss``) runs on the full-size masks with void
pixels ignored.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tasks import Task, get_task
from ..tasks.segmentation import segmentation_ce

__all__ = ["bpp_from_likelihoods", "Objective", "segmentation_ce", "tail_feature_mse"]


def bpp_from_likelihoods(likelihoods: Dict[str, Tensor], n_pixels: int) -> Tensor:
    """Estimated rate in bits per input pixel, summed over latents and averaged over the batch."""
    batch = next(iter(likelihoods.values())).shape[0]
    bits = sum(torch.log(l).sum() for l in likelihoods.values()) / -math.log(2)
    return bits / (batch * n_pixels)


def tail_feature_mse(student: Dict[str, Tensor], teacher: Dict[str, Tensor], var: Dict[str, Tensor]) -> Tensor:
    """Mean over the tail's tapped stages of the student's MSE to the teacher's activation, each divided by the
    teacher's per-channel variance there (the Entropic Student's stage-1 loss, normalised so that no stage
    dominates by its scale)."""
    terms = [((student[k].float() - teacher[k]) ** 2 / var[k]).mean() for k in teacher]
    return torch.stack(terms).mean()


def _dense_kl(student: Tensor, teacher: Tensor, t: float) -> Tensor:
    """KL(teacher || student) on softened class scores; classes on dim 1, averaged over everything else."""
    log_p_s = F.log_softmax(student / t, dim=1)
    log_p_t = F.log_softmax(teacher / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    return kl.mean() * t * t


class Objective:
    """``mode``: "distill" (label-free, default) or "supervised" (cross-entropy with labels); ``task``: the
    model's task (a name, e.g. ``model.spec.task``, or a :class:`~shared.tasks.Task`)."""

    def __init__(self, mode: str = "distill", temperature: float = 1.0, feature_weight: float = 1.0,
                 task: Union[str, Task] = "classification"):
        if mode not in ("distill", "supervised"):
            raise ValueError(f"mode must be distill or supervised, not {mode!r}")
        self.mode, self.t, self.feature_weight = mode, temperature, feature_weight
        self.task = get_task(task)

    def distortion(
        self,
        student_logits: Optional[Tensor],
        teacher_logits: Optional[Tensor],
        labels: Optional[Tensor],
        feat_hat: Tensor,
        feat: Tensor,
        feat_var: Tensor,
    ) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        out["feature_mse"] = ((feat_hat - feat) ** 2 / feat_var).mean()
        d = self.feature_weight * out["feature_mse"]
        if student_logits is not None:
            if self.mode == "supervised":
                out["ce"] = self.task.supervised_loss(student_logits, labels)
                d = d + out["ce"]
            else:
                out["kl"] = _dense_kl(self.task.match_teacher(student_logits, teacher_logits), teacher_logits, self.t)
                d = d + out["kl"]
        out["distortion"] = d
        return out
