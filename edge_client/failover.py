"""A camera stream that survives its replica: reopen a broken call and resend the frames it left unanswered.

Behind a load balancer (HAProxy, ``deploy/haproxy/``) one ``InferStream`` lives on one replica. When that replica
dies the balancer resets the stream (gRPC: ``CANCELLED`` / ``INTERNAL`` "Received RST_STREAM", or ``UNAVAILABLE``);
:class:`ResumableStream` then opens a new call, which the balancer routes to a live replica, sends again the
frames that were sent but not answered (in their order), and goes on with the frames not sent yet. Each frame's
answer is yielded once: answers on the broken call were taken off the window as they came, and only the frames
still in it are sent again (decoding a bitstream twice changes nothing, so the server may see one twice; the
caller never gets two answers). A stream that breaks ``tries`` times in a row without an answer in between ends
with :class:`StreamBroken`, which says how many frames it leaves unanswered.

Transport-free: the client gives how to open a call, how to tell a request's and an answer's frame, and which
errors are worth a new call (for gRPC: what ``ServiceError.retryable`` says, :func:`reset_by_the_path` included).
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

__all__ = ["ResumableStream", "StreamBroken", "reset_by_the_path"]


class StreamBroken(Exception):
    """The stream broke and could not be resumed: ``cause`` (the last error), after ``tries`` new calls in a row
    that broke too, with ``unanswered`` frames sent and never answered."""

    def __init__(self, cause: BaseException, tries: int, unanswered: int):
        super().__init__(f"the stream broke and was not resumed after {tries} new call{'s' if tries != 1 else ''} "
                         f"({unanswered} frame{'s' if unanswered != 1 else ''} unanswered): {cause}")
        self.cause, self.tries, self.unanswered = cause, tries, unanswered


def reset_by_the_path(err) -> bool:
    """Whether a gRPC error (a ``ServiceError``: ``code``, ``kind``, ``message``) is a call reset on the way rather
    than an answer: a stream reset that did not come from the server's data plane (no kind) nor from this side
    (gRPC's "Locally cancelled" has no RST_STREAM) -- what a proxy sends when the replica behind the call goes away.
    Worth another try like ``UNAVAILABLE`` (``ServiceError.retryable``): requests are idempotent."""
    return not err.kind and err.code in ("CANCELLED", "INTERNAL", "UNKNOWN") and "RST_STREAM" in err.message


class ResumableStream:
    """Answers of a request stream, each frame's once and in order, across calls that break.

    ``open_call(requests)`` starts a call on an iterator of requests and returns its iterator of answers (with
    ``cancel()``); ``request_key`` / ``answer_key`` give the frame id of a request / an answer (the request id);
    ``resumable(error)`` says whether an error the call raised is worth a new call. ``tries``: new calls in a row
    without an answer before giving up; ``backoff_s``: the first pause before a new call (doubling, with jitter).
    ``requests`` is read once, by whichever call is current; what it yields is kept until answered.
    """

    def __init__(self, open_call: Callable[[Iterator[Any]], Any], requests: Iterable[Any], *,
                 request_key: Callable[[Any], str], answer_key: Callable[[Any], str],
                 resumable: Callable[[BaseException], bool], tries: int = 3, backoff_s: float = 0.1):
        self._open, self._source = open_call, iter(requests)
        self._request_key, self._answer_key, self._resumable = request_key, answer_key, resumable
        self.tries, self.backoff_s = tries, backoff_s
        self._lock = threading.Lock()  # the window, the generation, the counters
        self._pull = threading.Lock()  # one reader of ``requests`` at a time (an old call's may still be in it)
        self._window: "OrderedDict[int, tuple]" = OrderedDict()  # seq -> (frame id, request): sent, not answered
        self._seq = 0
        self._gen = 0  # the current call; a request iterator of an older one stops
        self._resend_below = 0  # frames with a lower seq that the current call sends are sent again
        self._exhausted = False
        self._call = None
        self._cancelled = False
        self.resumes = 0  # new calls made after a break
        self.resent = 0  # frames read by a call that broke, sent again on a new one

    @property
    def unanswered(self) -> int:
        with self._lock:
            return len(self._window)

    def cancel(self) -> None:
        """Cancel the current call; no new one is made."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def _requests(self, gen: int) -> Iterator[Any]:
        """What call ``gen`` sends: the window's frames it has not sent (all of them, on a new call), then new ones."""
        sent_to = -1  # the last seq sent on this call
        while True:
            with self._lock:
                if gen != self._gen:
                    return
                item = next(((s, r) for s, (_, r) in self._window.items() if s > sent_to), None)
                if item is not None and item[0] < self._resend_below:
                    self.resent += 1
            if item is not None:
                sent_to = item[0]
                yield item[1]
                continue
            with self._pull:
                with self._lock:
                    if gen != self._gen:
                        return
                    if any(s > sent_to for s in self._window):  # read by an older call's iterator meanwhile
                        continue
                    if self._exhausted:
                        return
                try:
                    req = next(self._source)
                except StopIteration:
                    with self._lock:
                        self._exhausted = True
                    return
                with self._lock:  # into the window before it is sent, so a call that breaks now resends it
                    self._window[self._seq] = (self._request_key(req), req)
                    self._seq += 1

    def _answered(self, answer) -> None:
        with self._lock:
            if self._window and next(iter(self._window.values()))[0] == self._answer_key(answer):
                self._window.popitem(last=False)
            # an answer for another frame is the caller's to judge (out of order: the caller ends the stream)

    def __iter__(self) -> Iterator[Any]:
        tries = 0
        try:
            while True:
                with self._lock:
                    self._gen += 1
                    gen = self._gen
                    self._resend_below = self._seq if gen > 1 else 0  # what an earlier call read: sent again
                self._call = self._open(self._requests(gen))
                try:
                    for answer in self._call:
                        self._answered(answer)
                        tries = 0
                        yield answer
                    return
                except Exception as e:  # noqa: BLE001 - the caller's ``resumable`` decides; the rest propagates
                    if self._cancelled or not self._resumable(e):
                        raise
                    if tries >= self.tries:
                        raise StreamBroken(e, tries, self.unanswered) from e
                    self._call.cancel()
                    time.sleep(self.backoff_s * (2 ** tries) * (0.5 + random.random()))
                    tries += 1
                    self.resumes += 1
        finally:
            call = self._call
            if call is not None:
                call.cancel()  # a caller that stops reading ends the call (a no-op on one that has ended)
