"""TailBatcher's deadline path on every supported Python (pyproject: >= 3.10)."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import torch


class _Py310FutureTimeout(Exception):
    """What ``concurrent.futures.TimeoutError`` is on Python 3.10: not the builtin ``TimeoutError``."""


def test_future_timeout_is_a_deadline_and_cancels_the_queued_item(monkeypatch):
    from cloud_server import batching
    from cloud_server.errors import DeadlineExceeded

    calls = []
    b = batching.TailBatcher(lambda x, hw: (calls.append(x), x)[1], max_batch=4, max_wait_s=0.5)
    futures_seen = []
    real_result = concurrent.futures.Future.result

    def result(self, timeout=None):  # Python 3.10's Future.result on timeout
        futures_seen.append(self)
        raise concurrent.futures.TimeoutError()

    monkeypatch.setattr(concurrent.futures, "TimeoutError", _Py310FutureTimeout)
    monkeypatch.setattr(concurrent.futures.Future, "result", result)
    with b.track(), pytest.raises(DeadlineExceeded):  # before the fix: the 3.10 class escaped (a 500)
        b.run(torch.ones(1, 1), (1, 1), deadline=time.monotonic() + 10)
    monkeypatch.setattr(concurrent.futures.Future, "result", real_result)
    (fut,) = futures_seen
    assert fut.cancelled()  # the queued item leaves the queue: the worker skips it
    b.close()
    assert calls == []


def test_real_deadline_still_maps_to_deadline_exceeded():
    from cloud_server.batching import TailBatcher
    from cloud_server.errors import DeadlineExceeded

    slow = TailBatcher(lambda x, hw: (time.sleep(0.3), x)[1], max_batch=2, max_wait_s=0.0)
    with slow.track(), pytest.raises(DeadlineExceeded):
        slow.run(torch.ones(1, 1), (1, 1), deadline=time.monotonic() + 0.05)
    slow.close()
