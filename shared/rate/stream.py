"""Rate control over time: a camera stream held to a link rate, and the link rate followed from the answers.

Per stream (:class:`StreamRateController`): a leaky-bucket controller. The frame budget is ``kbit/s / fps``;
the bytes sent so far may run ahead of or behind the budget by at most ``slack`` frame budgets, so every
window of frames stays within ``2 * slack / window`` of the target (with ``slack=0.7`` and 30 frames:
under 5%). Inside those bounds it holds a *quality level* rather than a size, so hard frames get more bits
and easy ones fewer, and it moves that level slowly towards the link rate.

Per link (:class:`LinkRateTracker`): when the link's rate is unknown or changes, the target ``kbit/s`` of the
stream controller follows what the link delivers, measured from the answers' times: a queue building up on the
link (delays above the least recent one) cuts the target to what was acknowledged per second; no queue lets it
grow back, up to the rate asked for. A link model to try it offline is test support (``tests/linksim.py``).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Deque, Optional, Tuple

from ..codec.levels import LevelCoder, MessageBuilder, MessageSizes
from .fit import RateChoice, encode_within

__all__ = ["StreamRateController", "LinkRateTracker"]


class StreamRateController:
    """Holds a stream to ``kbit_per_s`` at ``fps``: call :meth:`budget` before each frame and :meth:`sent` after.

    ``slack``: how many frame budgets the bytes sent may run ahead of or behind the target (0.7 keeps every
    30-frame window within 5%). ``levels``: the network's quality levels; ``level`` is the quality it holds."""

    def __init__(self, kbit_per_s: float, fps: float, levels: Tuple[int, int], slack: float = 0.7):
        if not (kbit_per_s > 0 and fps > 0 and math.isfinite(kbit_per_s) and math.isfinite(fps)):
            raise ValueError("kbit/s and fps must be positive finite numbers")
        self.fps, self.frame_bytes = fps, kbit_per_s * 1000.0 / fps / 8.0
        self.levels, self.slack = levels, slack
        self.debt = 0.0  # bytes sent minus bytes allowed so far (positive: ahead of the link)
        self.level = (levels[0] + levels[1]) / 2.0
        self.frames = 0

    @property
    def kbit_per_s(self) -> float:
        return self.frame_bytes * 8.0 * self.fps / 1000.0

    def set_rate(self, kbit_per_s: float) -> None:
        """A new target (a link's measured rate). Bytes sent ahead stay owed (they are on the link); bytes
        behind are forgiven beyond the new slack, so a cut does not let the stream catch up in a burst."""
        if not (kbit_per_s > 0 and math.isfinite(kbit_per_s)):
            raise ValueError("kbit/s must be a positive finite number")
        self.frame_bytes = kbit_per_s * 1000.0 / self.fps / 8.0
        self.debt = max(self.debt, -self.slack * self.frame_bytes)

    def skip(self) -> bool:
        """Whether to drop the next frame (a camera's frame skip): only when no message fits, the stream already
        running a whole frame budget and its slack ahead of the link (after frames whose coarsest level did not
        fit: a link slower than the coarsest level at this fps, or a rate cut). The frame's time then passes
        unsent, and the link drains instead of queueing."""
        if self.bounds()[1] > 0:
            return False
        self.sent(0)
        return True

    def bounds(self) -> Tuple[float, float]:
        """(least, most) bytes the next frame may take while the running total stays within the slack."""
        s = self.slack * self.frame_bytes
        return max(0.0, self.frame_bytes - s - self.debt), self.frame_bytes + s - self.debt

    def choose(self, coder: LevelCoder, message: MessageBuilder) -> RateChoice:
        """Encode the next frame: the held quality level when its size is inside the bounds, else the level
        nearest to them; never over the upper bound unless even the coarsest level is."""
        least, most = self.bounds()
        margin = 0.1 * self.slack * self.frame_bytes  # room for the prediction's few bytes of error
        lo, hi = coder.levels
        sizes = MessageSizes(coder, message)
        q = int(round(min(max(self.level, lo), hi)))
        if sizes(q) > most - margin:  # too big: the finest level under the upper bound
            q = sizes.finest_within(lo, q, most - margin)
            q = lo if q is None else q
        elif sizes(q) < least + margin:  # too small: the coarsest level over the lower bound (or the finest)
            q = sizes.coarsest_above(q, hi, least + margin)
            q = hi if q is None else q
        choice = encode_within(coder, most, message, floor=q, sizes=sizes)
        self.sent(len(choice.message), choice.level)
        return choice

    def sent(self, n_bytes: int, level: Optional[int] = None) -> None:
        self.debt += n_bytes - self.frame_bytes
        self.frames += 1
        # the held quality follows the levels actually sent, and drifts down (up) while the stream runs ahead
        # (behind): 0.3 level per frame budget of debt and frame. The bounds hold the windows; a stronger pull
        # (1.0, measured on 300 CamVid frames) made the level swing in a limit cycle: 86 level changes instead of
        # 24, with the same window figures
        if level is not None:
            self.level = 0.7 * self.level + 0.3 * level
        self.level -= 0.3 * self.debt / self.frame_bytes
        self.level = min(max(self.level, self.levels[0]), self.levels[1])


class LinkRateTracker:
    """The rate a link carries, followed from acknowledgements: the delay-based half of WebRTC's congestion
    control (Carlucci et al., MMSys 2016), simplified to what a camera stream needs.

    Call :meth:`acked` with each answer (bytes, send time, answer time; seconds of one clock). When even the
    least delay of the last ``interval_s`` is more than ``queue_s`` above the least of the last ``base_s``, a
    queue stands on the link (CoDel's test: a big frame's own delay passes, a queue that every frame waits in
    does not): the rate drops to ``backoff`` x the bytes acknowledged per second over the last ``window_s``
    (what the link delivered), lower still for a long queue so that it drains within about ``drain_s`` (to
    half the delivered rate at most; a cut at most halves the rate and never raises it), and holds for a
    window. Otherwise it grows, per second of answers (a pause in them earns nothing): by ``fast_growth`` back
    to ``backoff`` x the rate delivered at the last cut (what the link carried when it last queued), then by
    ``growth`` to probe for more, up to ``ceiling_kbps`` (the rate asked for). ``kbit_per_s`` is the current
    estimate."""

    def __init__(self, ceiling_kbps: float, start_kbps: Optional[float] = None, window_s: float = 1.0,
                 interval_s: float = 0.4, base_s: float = 30.0, queue_s: float = 0.05, growth: float = 0.15,
                 backoff: float = 0.85, drain_s: float = 2.0, fast_growth: float = 0.5):
        if not (ceiling_kbps > 0 and math.isfinite(ceiling_kbps)):
            raise ValueError("the ceiling must be a positive finite kbit/s")
        self.ceiling, self.window_s, self.interval_s, self.base_s = ceiling_kbps, window_s, interval_s, base_s
        self.queue_s, self.growth, self.backoff, self.drain_s = queue_s, growth, backoff, drain_s
        self.fast_growth, self._carried = fast_growth, 0.0  # _carried: the rate delivered at the last cut
        self.kbit_per_s = min(ceiling_kbps, start_kbps or ceiling_kbps)
        self._acks: Deque[Tuple[float, int, float]] = deque()  # (answer time, bytes, delay) of the last window_s
        self._delays: Deque[Tuple[float, float]] = deque()  # (answer time, delay) over the last base_s
        self._hold_until, self._first, self._last, self.cuts = -math.inf, None, None, 0

    def delivered_kbps(self) -> Optional[float]:
        """Bytes acknowledged per second over the last window (over the time since the first answer, while that
        is shorter: answers that arrive in a burst after a stall are not a fast link)."""
        if self._first is None or self._last <= self._first:
            return None
        return 8e-3 * sum(b for _, b, _ in self._acks) / min(self.window_s, self._last - self._first)

    def acked(self, n_bytes: int, sent_at: float, acked_at: float) -> float:
        """One answer: the new estimate in kbit/s."""
        delay = acked_at - sent_at
        self._acks.append((acked_at, int(n_bytes), delay))
        while self._acks[0][0] < acked_at - self.window_s:
            self._acks.popleft()
        while self._delays and self._delays[-1][1] >= delay:  # a monotonic queue: its first entry is the least
            self._delays.pop()                                 # delay of the last base_s
        self._delays.append((acked_at, delay))
        while self._delays[0][0] < acked_at - self.base_s:
            self._delays.popleft()
        dt = 0.0 if self._last is None else min(max(0.0, acked_at - self._last), self.interval_s)
        self._first = acked_at if self._first is None else self._first
        self._last = acked_at
        if acked_at < self._hold_until:
            return self.kbit_per_s
        delivered = self.delivered_kbps()
        queue = min(d for t, _, d in self._acks if t >= acked_at - self.interval_s) - self._delays[0][1]
        if queue > self.queue_s and delivered is not None:  # send less than the link delivers until it drains
            # to what the link delivered, less while a queue drains; at most halved per cut (few answers during
            # a stall undercount the link), never raised
            cut = max(0.5 * self.kbit_per_s, delivered * min(self.backoff, max(0.5, 1.0 - queue / self.drain_s)))
            self.kbit_per_s = min(self.kbit_per_s, cut)
            self._hold_until, self.cuts, self._carried = acked_at + self.window_s, self.cuts + 1, max(delivered, cut)
        else:
            back = self.backoff * self._carried  # quickly back to what the link last carried, then probe slowly
            if self.kbit_per_s < back:
                rate = min(back, self.kbit_per_s * (1.0 + self.fast_growth) ** dt)
            else:
                rate = self.kbit_per_s * (1.0 + self.growth) ** dt
            self.kbit_per_s = min(self.ceiling, rate)
        return self.kbit_per_s
