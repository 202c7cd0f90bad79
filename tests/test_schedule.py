"""The one learning-rate schedule (shared/training/schedule.py) reproduces the copies it replaced."""

from __future__ import annotations

import math

import pytest

from shared.training.schedule import warmup_cosine_lr


def _ladders_old_lr_at(progress: float, base: float) -> float:
    """The copy ``shared/training/ladder.py`` had (``_lr_at``) before it called the one schedule."""
    if progress < 0.05:
        return base * (0.05 + progress / 0.05 * 0.95)
    t = (progress - 0.05) / 0.95
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def test_defaults_are_the_ladders_schedule():
    from shared.training import ladder

    assert ladder.warmup_cosine_lr is warmup_cosine_lr  # the ladder trains with this very function
    for i in range(2401):
        p = i / 2000  # past the end too: clamped at the floor
        assert warmup_cosine_lr(p, 3e-4) == _ladders_old_lr_at(p, 3e-4)
    assert warmup_cosine_lr(0.0, 1.0) == pytest.approx(0.05) and warmup_cosine_lr(0.05, 1.0) == 1.0
    assert warmup_cosine_lr(1.0, 1.0) == pytest.approx(0.05) and warmup_cosine_lr(2.0, 1.0) == pytest.approx(0.05)


def test_refit_schedule_matches_the_old_inline_formula():
    steps = 500
    for s in range(steps):
        old = 1e-2 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / steps)))
        assert warmup_cosine_lr(s / steps, 1e-2, warmup=0.0, floor=0.02) == pytest.approx(old, rel=1e-12, abs=0)
