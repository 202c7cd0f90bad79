"""Training objectives: ``loss = bpp + lambda * distortion`` (CompressAI / timm task style).

Distortion is label-free by default: distillation from the unsplit network (the teacher), i.e. the
KL divergence between its softened logits and the student's, plus an MSE at the split that gives the
bottleneck a dense, direct signal (normalised by the feature's variance so lambda means the same at
every split). With labels, cross-entropy replaces the KL term.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bpp_from_likelihoods", "Objective"]


def bpp_from_likelihoods(likelihoods: Dict[str, Tensor], n_pixels: int) -> Tensor:
    """Estimated rate in bits per input pixel, summed over latents and averaged over the batch."""
    batch = next(iter(likelihoods.values())).shape[0]
    bits = sum(torch.log(l).sum() for l in likelihoods.values()) / -math.log(2)
    return bits / (batch * n_pixels)


def _dense_kl(student: Tensor, teacher: Tensor, t: float) -> Tensor:
    """KL(teacher || student) on softened class scores; classes on dim 1, averaged over everything else."""
    log_p_s = F.log_softmax(student / t, dim=1)
    log_p_t = F.log_softmax(teacher / t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    return kl.mean() * t * t


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
            if self.mode == "supervised":
                if labels is None or (labels < 0).any():
                    raise ValueError("supervised training needs a label for every image (use distill mode)")
                out["ce"] = F.cross_entropy(student_logits, labels)
                d = d + out["ce"]
            else:
                out["kl"] = _dense_kl(student_logits, teacher_logits, self.t)
                d = d + out["kl"]
        out["distortion"] = d
        return out
