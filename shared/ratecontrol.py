"""Rate control for a variable-rate bundle: each image's message held to a byte budget, and a camera stream
held to a link rate. Torch-free: the ONNX edge and the PyTorch encoder share it.

Per image (:func:`encode_within`): the latent ``y``, its means and its integer table indexes do not depend on
the quality level ``q``, so one pass of the network serves every level. From the CDF tables the message's size
is *predicted* at a level (numpy: the code length of each symbol under its table, escapes included; within a
few bytes of the real one), a bisection over the levels finds the finest one predicted to fit, it is encoded,
and if the real message is over budget the next coarser level that fits is tried. Typically one encode.

Per stream (:class:`StreamRateController`): a leaky-bucket controller. The frame budget is ``kbit/s / fps``;
the bytes sent so far may run ahead of or behind the budget by at most ``slack`` frame budgets, so every
window of frames stays within ``2 * slack / window`` of the target (with ``slack=0.7`` and 30 frames:
under 5%). Inside those bounds it holds a *quality level* rather than a size, so hard frames get more bits
and easy ones fewer, and it moves that level slowly towards the link rate.

Per link (:class:`LinkRateTracker`): when the link's rate is unknown or changes, the target ``kbit/s`` of the
stream controller follows what the link delivers, measured from the answers' times: a queue building up on the
link (delays above the least recent one) cuts the target to what was acknowledged per second; no queue lets it
grow back, up to the rate asked for. :class:`SimulatedLink` is a link model to try it offline.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Optional, Tuple

import numpy as np

from .bitstream import Header, level_symbols_crc, pack
from .codec.rans import PRECISION, RansTables, encode_with_indexes

__all__ = ["LevelCoder", "RateChoice", "MessageSizes", "level_message", "encode_within", "StreamRateController",
           "LinkRateTracker", "SimulatedLink", "choose_level"]


class LevelCoder:
    """One image's latent, ready to code at any quality level ``q`` of ``levels = (lo, hi)``.

    ``y`` and ``means``: float32 (C, h, w); ``idx``: the integer hyper-decoder's table indexes; ``tables``: the
    y entropy model's CDF tables; ``log_ratio``: log of the ratio between neighbouring table scales."""

    def __init__(self, y: np.ndarray, means: np.ndarray, idx: np.ndarray, tables: RansTables, log_ratio: float,
                 levels: Tuple[int, int]):
        self.y, self.means = np.asarray(y, np.float32), np.asarray(means, np.float32)
        self.idx = np.asarray(idx, np.int64)
        self.tables, self.log_ratio, self.levels = tables, float(log_ratio), (int(levels[0]), int(levels[1]))
        self._centred = self.y - self.means

    def step(self, q: int) -> float:
        return math.exp(-int(q) * self.log_ratio)

    def symbols(self, q: int) -> np.ndarray:
        # float32 division by the step rounded to float32, half to even: what torch does in variable_rate.py
        return np.rint(self._centred / np.float32(self.step(q))).astype(np.int64)

    def indexes(self, q: int) -> np.ndarray:
        return np.clip(self.idx + int(q), 0, len(self.tables.cdf) - 1)

    def encode(self, q: int) -> Tuple[bytes, np.ndarray]:
        """(y payload, y symbols) at level ``q``."""
        sym = self.symbols(q)
        return encode_with_indexes(sym, self.indexes(q), self.tables), sym

    def predict_bytes(self, qs: Optional[np.ndarray] = None) -> np.ndarray:
        """Predicted y payload size at each level of ``qs`` (default: every level), from the code lengths."""
        qs = np.arange(self.levels[0], self.levels[1] + 1) if qs is None else np.asarray(qs)
        t = self.tables
        out = np.empty(len(qs))
        for k, q in enumerate(qs.tolist()):
            idx = self.indexes(q).reshape(-1)
            v = self.symbols(q).reshape(-1) - t.offsets[idx]
            max_value = t.lengths[idx] - 2
            escape = (v < 0) | (v >= max_value)
            value = np.where(escape, max_value, v)
            freq = t.cdf[idx, value + 1] - t.cdf[idx, value]
            bits = PRECISION * v.size - np.log2(np.maximum(freq, 1)).sum()
            if escape.any():  # raw value in 4-bit chunks, plus the chunk count
                raw = np.where(v < 0, -2 * v - 1, 2 * (v - max_value))[escape]
                chunks = np.ceil(np.log2(raw + 1) / 4)
                bits += 4 * (chunks + 1 + chunks // 15).sum()
            out[k] = 4 * math.ceil(bits / 32) + 8  # 32-bit words and the 64-bit final state
        return out


def level_message(bundle_id: bytes, tag: int, input_hw, y_hw, side_hw, z_payload: bytes,
                  z_symbols) -> Callable[[int, bytes, np.ndarray], bytes]:
    """The message builder rate control calls, for one image: a version-2 message at level ``q`` around a y
    payload, with the side payload and the level folded into the symbol checksum (both edges use it)."""
    def message(q: int, y_payload: bytes, y_symbols: np.ndarray) -> bytes:
        crc = level_symbols_crc(q, y_symbols, z_symbols)
        return pack(Header(bundle_id, tag, 0, tuple(input_hw), tuple(y_hw), tuple(side_hw), crc, level=q),
                    [y_payload, z_payload])
    return message


@dataclass
class RateChoice:
    message: bytes
    level: int
    trials: int  # encodes run (1 when the prediction was right)
    predicted: int  # the predicted message size at the chosen level
    fits: bool  # False only when even the coarsest level is over budget (then that level is sent)


class MessageSizes:
    """Predicted whole-message sizes per level, computed on demand and kept: the y payload's predicted size
    (:meth:`LevelCoder.predict_bytes`) plus the header and the side payload, exactly (a dry message)."""

    def __init__(self, coder: LevelCoder, message: Callable[[int, bytes, np.ndarray], bytes]):
        self.coder, self.message, self._cache = coder, message, {}
        self._dummy = np.zeros(coder.y.shape, np.int64)

    def __call__(self, q: int) -> int:
        n = self._cache.get(q)
        if n is None:
            y = int(self.coder.predict_bytes([q])[0])
            n = self._cache[q] = len(self.message(int(q), bytes(y), self._dummy))
        return n

    def finest_within(self, lo: int, hi: int, budget: float) -> Optional[int]:
        """The finest level in ``lo..hi`` predicted to fit ``budget`` (sizes grow with the level: bisection, a
        handful of predictions instead of one per level); None if even ``lo`` does not."""
        if self(lo) > budget:
            return None
        if self(hi) <= budget:
            return hi
        while hi - lo > 1:  # self(lo) <= budget < self(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self(mid) <= budget else (lo, mid)
        return lo

    def coarsest_above(self, lo: int, hi: int, least: float) -> Optional[int]:
        """The coarsest level in ``lo..hi`` predicted to take at least ``least`` bytes; None if even ``hi`` does not."""
        if self(hi) < least:
            return None
        if self(lo) >= least:
            return lo
        while hi - lo > 1:  # self(lo) < least <= self(hi)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self(mid) >= least else (mid, hi)
        return hi


def encode_within(coder: LevelCoder, budget_bytes: float, message: Callable[[int, bytes, np.ndarray], bytes],
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

    def choose(self, coder: LevelCoder, message: Callable[[int, bytes, np.ndarray], bytes]) -> RateChoice:
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


class SimulatedLink:
    """A link of ``kbps(t)`` kbit/s that sends one message at a time in order (a queue), ``rtt_s`` of
    propagation and answer time on top: :meth:`send` returns when the answer arrives. To try a
    :class:`LinkRateTracker` offline (the rate-control benchmark, the tests)."""

    def __init__(self, kbps: Callable[[float], float], rtt_s: float = 0.03):
        self.kbps, self.rtt_s, self._free = kbps, rtt_s, 0.0

    def send(self, n_bytes: int, at: float) -> float:
        start = max(at, self._free)
        self._free = start + 8e-3 * n_bytes / self.kbps(start)
        return self._free + self.rtt_s

    def stream(self, n_frames: int, fps: float, encode: Callable[[int], int], controller: "StreamRateController",
               tracker: Optional[LinkRateTracker] = None) -> np.ndarray:
        """A camera stream over this link: frame ``k`` leaves at ``k / fps``, ``encode(k)`` (with
        ``controller``) gives its bytes, and the answers that arrived by then have reached ``tracker`` (which
        sets the controller's rate). Per frame: (bytes, send-to-answer delay in s, the kbit/s aimed at); a frame
        the controller skips: (0, nan, kbit/s)."""
        out, waiting = np.zeros((n_frames, 3)), deque()  # waiting: (answer time, send time, bytes)
        for k in range(n_frames):
            t = k / fps
            while tracker is not None and waiting and waiting[0][0] <= t:  # answers come back in order
                answer, sent, n = waiting.popleft()
                controller.set_rate(tracker.acked(n, sent, answer))
            target = controller.kbit_per_s
            if controller.skip():
                out[k] = 0, np.nan, target
                continue
            n = encode(k)
            answer = self.send(n, t)
            waiting.append((answer, t, n))
            out[k] = n, answer - t, target
        return out


def choose_level(coder: LevelCoder, message: Callable[[int, bytes, np.ndarray], bytes], *, level: Optional[int] = None,
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
