"""Training objectives: ``loss = bpp + lambda * distortion`` (CompressAI / timm task style).

Distortion is label-free by default: distillation from the unsplit network (the teacher), i.e. the
KL divergence between its softened logits and the student's, plus an MSE at the split that gives the
bottleneck a dense, direct signal (normalised by the feature's variance so lambda means the same at
every split). With labels, cross-entropy replaces the KL term.

Segmentation is the same per pixel: the KL is averaged over pixels (the teacher's logits are cached at a
reduced resolution, so the student's are average-pooled to match), and the cross-entropy runs on the
full-size masks with void pixels ignored.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

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


def segmentation_ce(logits: Tensor, masks: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Per-pixel cross-entropy against (N, H, W) masks; values >= the number of classes are void (ignored).
    A batch without a single labelled pixel gives 0 (with a gradient), not NaN."""
    target = masks.long().masked_fill(masks.long() >= logits.shape[1], -100)
    if not (target >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-100)


def _pooled_like(student: Tensor, teacher: Tensor) -> Tensor:
    """Dense student logits average-pooled to the (cached, reduced) resolution of the teacher's."""
    if student.dim() == 4 and student.shape[-2:] != teacher.shape[-2:]:
        return F.adaptive_avg_pool2d(student, teacher.shape[-2:])
    return student


class Objective:
    """``mode``: "distill" (label-free, default) or "supervised" (cross-entropy with labels)."""

    def __init__(self, mode: str = "distill", temperature: float = 1.0, feature_weight: float = 1.0):
        if mode not in ("distill", "supervised"):
            raise ValueError(f"mode must be distill or supervised, not {mode!r}")
        self.mode, self.t, self.feature_weight = mode, temperature, feature_weight

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
            if self.mode == "supervised" and student_logits.dim() == 4:
                if labels is None or labels.dim() != 3:
                    raise ValueError("supervised segmentation needs a mask for every image (use distill mode)")
                out["ce"] = segmentation_ce(student_logits, labels)
                d = d + out["ce"]
            elif self.mode == "supervised":
                if labels is None or (labels < 0).any():
                    raise ValueError("supervised training needs a label for every image (use distill mode)")
                out["ce"] = F.cross_entropy(student_logits, labels)
                d = d + out["ce"]
            else:
                out["kl"] = _dense_kl(_pooled_like(student_logits, teacher_logits), teacher_logits, self.t)
                d = d + out["kl"]
        out["distortion"] = d
        return out
