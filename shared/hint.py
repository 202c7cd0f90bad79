"""Moved to :mod:`shared.rate.hint`; this module keeps ``from shared.hint import BitrateHint`` working."""

from .rate.hint import BitrateHint, HintError

__all__ = ["BitrateHint", "HintError"]
