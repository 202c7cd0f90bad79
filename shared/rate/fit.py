"""Per-image rate control of a variable-rate bundle: each message held to a byte budget.

From the predicted message sizes (:class:`shared.codec.levels.MessageSizes`) a bisection over the levels finds
the finest one predicted to fit, it is encoded, and if the real message is over budget the next coarser level
that fits is tried. Typically one encode. :func:`choose_level` is the one entry point both edge encoders call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..codec.levels import LevelCoder, MessageBuilder, MessageSizes

__all__ = ["RateChoice", "encode_within", "choose_level"]


@dataclass
class RateChoice:
    message: bytes
    level: int
    trials: int  # encodes run (1 when the prediction was right)
    predicted: int  # the predicted message size at the chosen level
    fits: bool  # False only when even the coarsest level is over budget (then that level is sent)


def encode_within(coder: LevelCoder, budget_bytes: float, message: MessageBuilder,
                  max_trials: int = 3, floor: Optional[int] = None,
                  sizes: Optional[MessageSizes] = None) -> RateChoice:
    """The finest level whose message is predicted to fit ``budget_bytes``, encoded and checked; if the real
    message is over budget, the finest coarser level that fits with the observed error. ``message(q, y_payload,
    y_symbols)`` builds the whole message (header, side payload, CRCs). ``floor``: go no finer than this level
    (stream control holds a quality)."""
    lo, hi = coder.levels
    sizes = sizes or MessageSizes(coder, message)
    top = hi if floor is None else max(lo, min(hi, int(floor)))
    slack, trials = 0.0, 0
    while True:
        q = sizes.finest_within(lo, top, budget_bytes - slack) if trials < max_trials - 1 else None
        q = lo if q is None else q
        y_str, sym = coder.encode(q)
        msg = message(q, y_str, sym)
        trials += 1
        if len(msg) <= budget_bytes or q == lo:
            return RateChoice(msg, q, trials, sizes(q), len(msg) <= budget_bytes)
        # over budget: the prediction was short by this much; ask the coarser levels for the same margin
        slack = max(slack, len(msg) - sizes(q)) + 1
        top = q - 1


def choose_level(coder: LevelCoder, message: MessageBuilder, *, level: Optional[int] = None,
                 max_bytes: Optional[float] = None, controller: Optional["StreamRateController"] = None) -> RateChoice:
    """The one entry point both edge encoders call for a variable-rate bundle: a fixed ``level``, a byte budget
    for this image (``max_bytes``), a stream ``controller``, or none of them (the finest level)."""
    if sum(v is not None for v in (level, max_bytes, controller)) > 1:
        raise ValueError("give at most one of a quality level, a byte budget and a stream controller")
    if controller is not None:
        return controller.choose(coder, message)
    if max_bytes is not None:
        return encode_within(coder, max_bytes, message)
    lo, hi = coder.levels
    q = hi if level is None else int(level)
    if not lo <= q <= hi:
        raise ValueError(f"quality level {q} is outside this bundle's {lo}..{hi}")
    y_str, sym = coder.encode(q)
    msg = message(q, y_str, sym)
    return RateChoice(msg, q, 1, len(msg), True)
