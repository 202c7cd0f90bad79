"""A simulated link for rate-control tests and benchmarks (test support, not shipped): one message at a time
in order, a round trip on top, in simulated time. ``benchmarks/rate_control.py`` imports it too."""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

import numpy as np

from shared.rate import LinkRateTracker, StreamRateController

__all__ = ["SimulatedLink"]


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
