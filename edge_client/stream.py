"""A camera's stream: frames encoded as they come, sent over the transport's stream (:meth:`Transport.stream`: one
``InferStream`` on gRPC, one request per frame on REST), each answer matched to its frame and checked, results in
order. Under a link-rate hint a variable-rate bundle's frames share one rate controller; with ``track_link`` frames
leave at the hint's fps and the rate follows what the link delivers (:class:`shared.rate.LinkRateTracker`).

What was sent and not yet answered is kept in one place, :class:`Frames` (the stream ends with the frames it lost
named; something that resends them, such as a failover to another replica, reads :meth:`Frames.unanswered`).
Only the :class:`~edge_client.transports.Transport` protocol is used: no gRPC or HTTP here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Deque, Iterable, Iterator, List, Optional, Protocol, Tuple, Union

from shared.frame import EncodedFrame, ImageLike
from shared.rate import BitrateHint, HintOutcome

from .answers import lost_frames
from .results import IMAGE_ERRORS, AnswerError, ImageError, InferResult, ServiceError, StreamAnswer, source_name
from .transports import Transport

__all__ = ["SentFrame", "Frames", "stream_frames"]


class _Client(Protocol):
    """What the stream asks of its client (:class:`edge_client.EdgeClient`)."""

    transport: Transport
    top_k: int
    timeout_s: float  # per request: each frame's deadline where frames go one by one

    @property
    def model(self) -> str: ...  # the server's model, checked against the bundle

    @property
    def bundle(self) -> Any: ...

    def encode(self, image: ImageLike, bitrate: Optional[float], rung: Optional[int], hint: Optional[BitrateHint],
               controller: Any) -> Tuple[EncodedFrame, BitrateHint, float]: ...

    def stream_controller(self, hint: Optional[BitrateHint]) -> Any: ...

    def vet(self, res: InferResult, n_bytes: int) -> InferResult: ...


@dataclass
class SentFrame:
    """A frame handed to the transport, until its answer comes."""

    source: str
    request_id: str  # the id its answer must carry
    request: Any  # the transport's message (what a resend would send again)
    encode_ms: float
    sent_at: float  # time.perf_counter() when it was handed over
    n_bytes: int
    level: Optional[int]  # the quality level (variable-rate bundles)
    target_kbps: Optional[float]  # the rate aimed at when it was encoded (track_link)
    hint: HintOutcome  # whether its message met the hint


class Frames:
    """The frames of one stream in send order: a :class:`SentFrame` until it is answered, or, for a frame not sent
    (unreadable, skipped by stream control), its finished result, which waits for the frames before it. The
    encoding side adds (on gRPC, from the transport's thread), the answering side takes; a lock keeps them apart."""

    def __init__(self):
        self._queue: Deque[Union[SentFrame, InferResult]] = deque()
        self._lock = threading.Lock()

    def sent(self, frame: SentFrame) -> None:
        with self._lock:
            self._queue.append(frame)

    def not_sent(self, result: InferResult) -> None:
        with self._lock:
            self._queue.append(result)

    def finished(self) -> List[InferResult]:
        """The results of frames not sent that no sent frame waits before any more, taken out in order."""
        out = []
        with self._lock:
            while self._queue and isinstance(self._queue[0], InferResult):
                out.append(self._queue.popleft())
        return out

    def answered(self, request_id: str) -> SentFrame:
        """The oldest frame waiting, taken out, which the answer carrying ``request_id`` must be for (call
        :meth:`finished` first). An answer with no frame waiting or another frame's id is an :class:`AnswerError`
        naming the frames lost."""
        with self._lock:
            head = self._queue[0] if self._queue else None
            if isinstance(head, SentFrame) and head.request_id == request_id:
                return self._queue.popleft()
        if not isinstance(head, SentFrame):
            raise AnswerError(f"the server sent an answer (request id {request_id[:40]!r}) with no frame waiting for "
                              "one (two answers for a frame, or one before the first frame)", self.lost())
        raise AnswerError(f"the server answered request id {request_id[:40]!r}, not the next frame's ({head.source}, "
                          f"id {head.request_id!r}): answers must come in order, one per frame", self.lost())

    def unanswered(self) -> List[SentFrame]:
        """The frames sent and not answered, oldest first."""
        with self._lock:
            return [f for f in self._queue if isinstance(f, SentFrame)]

    def lost(self) -> List[str]:
        return [f.source for f in self.unanswered()]


def stream_frames(client: _Client, images: Iterable[ImageLike], bitrate: Optional[float] = None,
                  rung: Optional[int] = None, hint: Optional[BitrateHint] = None, timeout_s: Optional[float] = None,
                  track_link: bool = False) -> Iterator[InferResult]:
    """:meth:`EdgeClient.stream`'s frames and answers (its docstring says what a caller sees)."""
    client.bundle.scheme.check_stream(hint, track_link)
    ctl = client.stream_controller(hint)
    model, transport = client.model, client.transport  # (asks the server for its models first)
    frames = Frames()
    tracker, lock = None, threading.Lock()  # the controller is used by the encoding and the answering sides
    if track_link:
        from shared.rate import LinkRateTracker

        tracker = LinkRateTracker(hint.kbit_per_s)

    def requests():
        start = time.perf_counter()
        for k, image in enumerate(images):
            source = source_name(image)
            if tracker is not None:  # a camera's pace (frame k leaves at k / fps), not as fast as files load
                time.sleep(max(0.0, start + k / hint.fps - time.perf_counter()))
            try:
                with lock:
                    target = ctl.kbit_per_s if tracker is not None else None
                    skip = ctl is not None and ctl.skip()
                    if not skip:
                        frame, h, encode_ms = client.encode(image, bitrate, rung, hint, ctl)
            except IMAGE_ERRORS as e:
                frames.not_sent(InferResult.empty(source, error=ImageError.of(image, e)))
                continue
            if skip:
                frames.not_sent(InferResult.empty(source, skipped=True, target_kbps=target))
                continue
            rid = uuid.uuid4().hex
            req = transport.request(model, frame, h, frame.rung if rung is None else None, rid, client.top_k)
            frames.sent(SentFrame(source, rid, req, encode_ms, time.perf_counter(), frame.n_bytes, frame.level,
                                  target, frame.hint))
            yield req

    # a broken stream the transport could not resume ends the stream, naming the frames it lost
    answers = transport.stream(requests(), timeout_s, client.timeout_s)
    try:
        with closing(answers):  # leaving early (a broken order, the caller stops reading) ends the call
            for answer in answers:
                yield from frames.finished()
                sent = frames.answered(answer.request_id)
                now = time.perf_counter()
                if tracker is not None:
                    with lock:
                        ctl.set_rate(tracker.acked(sent.n_bytes, sent.sent_at, now))
                yield _result(client, answer, sent, 1e3 * (now - sent.sent_at))
    except ServiceError as e:
        if type(e) is not ServiceError or not frames.unanswered():
            raise
        raise ServiceError(e.code, f"{e.message}; {lost_frames(frames.lost())}", e.kind, e.retry_after_s) from None
    yield from frames.finished()
    if frames.unanswered():
        raise AnswerError("the server ended the stream without answering every frame", frames.lost())


def _result(client: _Client, answer: StreamAnswer, sent: SentFrame, latency_ms: float) -> InferResult:
    """The result of ``sent`` from its answer: the server's result (checked against the frame), its refusal, or a
    failed result when the answer held neither."""
    if answer.result is None:
        error = answer.error or AnswerError(f"{sent.source}: neither a result nor an error")
        return InferResult.empty(sent.source, answer.request_id, latency_ms, sent.encode_ms, error=error,
                                 level=sent.level, target_kbps=sent.target_kbps)
    res = answer.result
    res.source, res.latency_ms, res.encode_ms = sent.source, latency_ms, sent.encode_ms
    res.level, res.target_kbps, res.hint_outcome = sent.level, sent.target_kbps, sent.hint
    return client.vet(res, sent.n_bytes)
