"""The learning-rate schedule every training loop here uses: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine_lr"]


def warmup_cosine_lr(progress: float, base: float, warmup: float = 0.05, floor: float = 0.05) -> float:
    """Learning rate at ``progress`` in [0, 1] (clamped above): a linear ramp from ``floor * base`` to ``base``
    over the first ``warmup`` of training, then a cosine decay back to ``floor * base`` at the end.

    The defaults are the ladders' schedule (``ladder._lr_at``: 5% warm-up, decay to 5%); the refits
    (``migrate.fit_integer_hyper_decoder``, ``side_density.refit_side_density``) use ``warmup=0, floor=0.02``."""
    if progress < warmup:
        return base * (floor + progress / warmup * (1 - floor))
    t = (progress - warmup) / (1 - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
