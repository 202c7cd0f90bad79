"""Tail batching: concurrent requests for the same backbone share one tail call.

The first request to arrive opens a batch and waits at most ``max_wait_s`` for others; the batch runs as
soon as it holds ``max_batch`` requests, or as many as are in flight for this backbone (callers announce
themselves with :meth:`TailBatcher.track` when they start decoding), or when the wait is over. So a lone
request never waits, and under load a batch fills up to what is actually coming. Requests are grouped by
input size (a batch must stack). One worker thread per backbone runs the batches; callers block on their own future, so the
batcher serves the threaded gRPC server and FastAPI's thread pool alike. With ``max_batch == 1`` the caller
runs the tail itself (no thread, no queue).

Work nobody waits for is dropped: a queued request whose deadline has passed, or whose caller's cancel token
is set (the client went away), is taken out of its batch before the tail runs.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent import futures
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import Cancelled, DeadlineExceeded, Unavailable

__all__ = ["TailBatcher", "BatchResult"]

# features and outputs are torch tensors (the PyTorch runtime) or numpy arrays (the ONNX one): the batcher only
# stacks and slices them
Array = Any
TailFn = Callable[[Array, Tuple[int, int]], Array]


def _cat(features: List[Array]) -> Array:
    """Stack features along the batch: numpy arrays with numpy, tensors with torch (imported only for them)."""
    if type(features[0]).__module__.startswith("numpy"):
        import numpy as np

        return np.concatenate(features)
    import torch

    return torch.cat(features)


@dataclass
class BatchResult:
    output: Array  # this request's row, shape (1, ...)
    batch_size: int
    queue_ms: float
    tail_ms: float


@dataclass
class _Item:
    feature: Array
    input_hw: Tuple[int, int]
    deadline: Optional[float]
    token: object = None  # a scope.CancelToken (anything with .cancelled)
    enqueued: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


class TailBatcher:
    def __init__(self, fn: TailFn, max_batch: int = 8, max_wait_s: float = 0.002, name: str = "tail",
                 on_batch: Optional[Callable[[int], None]] = None):
        self.fn, self.max_batch, self.max_wait_s, self.name = fn, int(max_batch), float(max_wait_s), name
        self.on_batch = on_batch
        self._q: "queue.Queue[Optional[_Item]]" = queue.Queue()
        self._closed = False
        self._inflight = 0
        self._count_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if self.max_batch > 1:
            self._thread = threading.Thread(target=self._worker, name=f"batcher-{name}", daemon=True)
            self._thread.start()

    # -- callers -------------------------------------------------------------------------------------
    @contextmanager
    def track(self):
        """Around a request's whole path (decode and tail): tells the worker how many tail calls to expect."""
        with self._count_lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._inflight -= 1

    def run(self, feature: Array, input_hw: Tuple[int, int], deadline: Optional[float] = None,
            token=None) -> BatchResult:
        """Tail output for one decoded feature (1, C, h, w). ``deadline``: a ``time.monotonic()`` instant;
        ``token``: a :class:`~cloud_server.scope.CancelToken` (cancelled: the request leaves the queue)."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        if token is not None and token.cancelled:
            raise Cancelled("the client went away before the tail; the request was dropped")
        if self._thread is None:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("deadline exceeded before the tail")
            t0 = time.perf_counter()
            out = self.fn(feature, input_hw)
            if self.on_batch:
                self.on_batch(1)
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("deadline exceeded while running the tail")
            return BatchResult(out, 1, 0.0, 1e3 * (time.perf_counter() - t0))
        item = _Item(feature, tuple(input_hw), deadline, token)
        # the client going away cancels the future: the caller stops waiting, the worker skips the item
        remove = token.add_callback(item.future.cancel) if token is not None else None
        self._q.put(item)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return item.future.result(timeout=timeout)
        except futures.TimeoutError:
            # ``Future.result``'s timeout: the builtin TimeoutError from Python 3.11 on, a class of its own on 3.10
            # (which pyproject allows); still queued: cancelled, the worker skips it; already running: its result is dropped
            item.future.cancel()
            raise DeadlineExceeded("deadline exceeded while waiting for the tail") from None
        except CancelledError:
            if token is not None and token.cancelled:
                raise Cancelled("the client went away while the request waited for the tail; dropped") from None
            raise DeadlineExceeded("deadline exceeded while waiting for the tail (dropped from the queue)") from None
        finally:
            if remove is not None:
                remove()

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=30)

    # -- worker --------------------------------------------------------------------------------------
    def _collect(self, first: _Item) -> Tuple[List[_Item], bool]:
        items, stop = [first], False
        until = first.enqueued + self.max_wait_s
        while len(items) < min(self.max_batch, max(1, self._inflight)):
            left = until - time.perf_counter()
            try:
                nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            items.append(nxt)
        return items, stop

    def _worker(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is None:
                break
            items, stop = self._collect(first)
            groups: Dict[Tuple, List[_Item]] = {}
            now = time.monotonic()
            for it in items:
                if (it.deadline is not None and now > it.deadline) or (it.token is not None and it.token.cancelled):
                    it.future.cancel()  # nobody waits for this one: drop it (its caller raises)
                if it.future.set_running_or_notify_cancel():
                    groups.setdefault((it.input_hw, tuple(it.feature.shape[1:])), []).append(it)
            for (hw, _), group in groups.items():
                self._run_group(hw, group)
        # drain anything left after the stop marker
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                return
            if it is not None and it.future.set_running_or_notify_cancel():
                self._run_group(it.input_hw, [it])

    def _run_group(self, hw: Tuple[int, int], group: List[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            out = self.fn(_cat([it.feature for it in group]), hw)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting caller
            for it in group:
                it.future.set_exception(e)
            return
        tail_ms = 1e3 * (time.perf_counter() - t0)
        if self.on_batch:
            self.on_batch(len(group))
        for i, it in enumerate(group):
            it.future.set_result(BatchResult(out[i : i + 1], len(group), 1e3 * (t0 - it.enqueued), tail_ms))
