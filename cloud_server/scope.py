"""Request scope and admission: what a front end knows about a call, and the limit on requests in flight.

What a front end knows about the call travels in a :class:`CallScope` (a context variable, so that it reaches the
thread that runs the work): its :class:`CancelToken` (set when the client cancels, disconnects or its call ends)
and, when the front end admitted the request before queueing it for a thread (REST), its :class:`Admission`.

:class:`AdmissionControl` holds the ``max_concurrent_requests`` slots and the measured pace behind deadline-aware
admission; the data plane takes a slot for each request (:meth:`~cloud_server.dataplane.DataPlane.admit`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, List, Optional

from .errors import Overloaded

__all__ = ["CancelToken", "Admission", "AdmissionControl", "CallScope", "current_scope", "call_scope",
           "enter_scope"]

log = logging.getLogger("splitinfer.server")
# deadline-aware admission: the pace (seconds between answers while busy) is an EWMA of this weight (about the last
# 20 answers: a few batches), measured from this many answers on; one gap counts at most this long
_PACE_ALPHA, _PACE_WARMUP, _PACE_MAX_S = 0.05, 8, 5.0


# ------------------------------------------------------------------------------------------ call scope
class CancelToken:
    """Set once when the client is gone (gRPC call terminated, HTTP connection closed); callbacks run then."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: List[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                log.exception("cancel callback failed")

    def add_callback(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn`` on cancel (at once if already cancelled); returns a function that removes it."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(fn)

                def remove() -> None:
                    with self._lock:
                        if fn in self._callbacks:  # a second remove() is a no-op
                            self._callbacks.remove(fn)

                return remove
        fn()
        return lambda: None


class Admission:
    """One slot of ``max_concurrent_requests``; :meth:`release` is idempotent."""

    def __init__(self, control: "AdmissionControl"):
        self._control, self._held = control, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._control._release()


class CallScope:
    """What a front end knows about the call that data-plane methods run for (see the module docstring)."""

    __slots__ = ("token", "admission")

    def __init__(self, token: Optional[CancelToken] = None, admission: Optional[Admission] = None):
        self.token = token if token is not None else CancelToken()
        self.admission = admission

    def take_admission(self) -> Optional[Admission]:
        """The front end's slot, handed to the first request that runs in this scope."""
        a, self.admission = self.admission, None
        return a


_SCOPE: ContextVar[Optional[CallScope]] = ContextVar("splitinfer_call_scope", default=None)


class DeadlineGate:
    """``n`` slots handed out earliest deadline first (in arrival order among equal deadlines). A semaphore wakes its
    waiters in no useful order (a newcomer may take a slot before threads that wait, and a waiter that wakes to check
    its deadline goes to the back), so a request admitted because its deadline leaves time for the work ahead of it
    could be overtaken by later ones and miss it (issue 24: goodput at capacity with 2 s deadlines)."""

    def __init__(self, n: int):
        self._lock = threading.Lock()
        self._free = n
        self._waiting: list = []  # heap of [deadline, seq, event, gone]
        self._seq = itertools.count()

    def acquire(self, deadline: float, check: Callable[[], None], poll_s: float = 0.05) -> None:
        """Take a slot, waiting in deadline order; ``check`` (called every ``poll_s`` while waiting) raises to give
        up (the client went away, the deadline passed)."""
        check()
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return
            entry = [deadline, next(self._seq), threading.Event(), False]
            heapq.heappush(self._waiting, entry)
        try:
            while True:
                check()
                if entry[2].wait(max(0.0, min(poll_s, deadline - time.monotonic()))):
                    return
        except BaseException:
            with self._lock:
                if entry[2].is_set():  # handed a slot meanwhile: to the next one
                    self._hand_on()
                else:
                    entry[3] = True  # left in the heap, skipped when it comes up
            raise

    def release(self) -> None:
        with self._lock:
            self._hand_on()

    def _hand_on(self) -> None:
        while self._waiting:
            entry = heapq.heappop(self._waiting)
            if not entry[3]:
                entry[2].set()
                return
        self._free += 1


def current_scope() -> Optional[CallScope]:
    return _SCOPE.get()


@contextmanager
def call_scope(scope: CallScope) -> Iterator[CallScope]:
    """Run the block (and whatever it hands to threads with a copied context) in ``scope``."""
    reset = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(reset)


def enter_scope(scope: CallScope) -> None:
    """Set ``scope`` for the rest of the current context (gRPC runs each call in a context of its own)."""
    _SCOPE.set(scope)


# ------------------------------------------------------------------------------------------ admission
class AdmissionControl:
    """``capacity`` slots for requests in flight (``gauge``: the in-flight metric), and the measured time between
    answers while busy (1 / throughput, an EWMA) that deadline-aware admission judges a request by."""

    def __init__(self, capacity: int, gauge=None):
        self.capacity = capacity
        self._gauge = gauge
        self._inflight = 0
        self._slot_lock = threading.Lock()
        self._pace_lock = threading.Lock()
        self._pace_s: Optional[float] = None
        self._pace_n = 0
        self._last_done: Optional[float] = None

    @property
    def inflight(self) -> int:
        """Admitted requests not finished yet."""
        return self._inflight

    @property
    def at_capacity(self) -> bool:
        """A new request would be refused now (a hint for front ends: :meth:`take` decides)."""
        return self._inflight >= self.capacity

    def take(self) -> Optional[Admission]:
        """A slot now, or None at capacity (never waits)."""
        with self._slot_lock:
            if self._inflight >= self.capacity:
                return None
            self._inflight += 1
            if self._gauge is not None:
                self._gauge.inc()
            return Admission(self)

    def _release(self) -> None:
        with self._slot_lock:
            self._inflight -= 1
            if self._gauge is not None:
                self._gauge.dec()

    @property
    def pace_s(self) -> Optional[float]:
        """Measured seconds between answers while more than one request is in flight (1 / throughput; an EWMA over
        about the last 20 answers); None until measured."""
        return self._pace_s if self._pace_n >= _PACE_WARMUP else None

    def expected_s(self) -> Optional[float]:
        """How long a request admitted now would take to be answered: the requests in flight (itself included) at
        the measured pace; None when nothing is queued or nothing is measured yet."""
        pace, n = self.pace_s, self._inflight
        return None if pace is None or n < 2 else n * pace

    def check_fits(self, deadline: float) -> None:
        """Deadline-aware admission: refuse at once (``overloaded``, retryable) a request that cannot be answered
        before its deadline at the measured pace, instead of letting it wait in the queue and time out after taking a
        slot (and the work of the ones before it) for nothing."""
        need = self.expected_s()
        if need is None:
            return
        left = deadline - time.monotonic()
        if need > left:
            raise Overloaded(f"cannot be answered before its deadline: about {need:.2f} s of work is ahead of it "
                             f"({self._inflight} requests in flight), {max(0.0, left):.2f} s left; retry later")

    def record_answer(self) -> None:
        """One request answered: the time since the one before counts toward the pace when the server was busy."""
        now = time.monotonic()
        with self._pace_lock:
            if self._last_done is not None and self._inflight >= 2:
                dt = min(now - self._last_done, _PACE_MAX_S)
                self._pace_s = dt if self._pace_s is None else self._pace_s + _PACE_ALPHA * (dt - self._pace_s)
                self._pace_n += 1
            self._last_done = now
