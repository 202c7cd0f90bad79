"""The edge's one transport protocol and the stream's bookkeeping, without a server: both transports follow
:class:`edge_client.transports.Transport` (the same methods, the same parameters), REST's unary fallback breaks its
stream when a frame gets no answer at all, and :class:`edge_client.stream.Frames` keeps a stream's order and knows
which frames were sent and not answered. (Streams against a live server: tests/test_service_edge.py; against a
lying one: tests/test_edge_answers.py.)"""

from __future__ import annotations

import inspect
import socket

import pytest


def _params(fn):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()][1:]  # without self


def test_both_transports_follow_the_protocol():
    from edge_client.transports import GrpcTransport, RestTransport, Transport

    methods = [n for n, v in vars(Transport).items() if callable(v) and not n.startswith("_")]
    assert set(methods) == {"request", "infer", "stream", "models", "edge_package", "close"}
    for cls in (GrpcTransport, RestTransport):
        for name in methods:
            assert _params(getattr(cls, name)) == _params(getattr(Transport, name)), (cls.__name__, name)
    grpc_t = GrpcTransport("127.0.0.1:1", None, False, None, 1 << 20)
    rest_t = RestTransport("http://127.0.0.1:1", None, True)
    try:
        assert isinstance(grpc_t, Transport) and isinstance(rest_t, Transport)
        assert not isinstance(object(), Transport)
    finally:
        grpc_t.close()
        rest_t.close()


def test_a_rest_stream_without_an_answer_breaks():
    """The unary fallback: a frame refused is that frame's answer, but no answer at all (nothing listens) ends the
    stream with a ServiceError, as a broken gRPC stream does; nothing after it is sent."""
    from edge_client.results import ServiceError
    from edge_client.transports import RestTransport
    from shared.frame import EncodedFrame
    from shared.rate import BitrateHint

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = RestTransport(f"http://127.0.0.1:{port}", None, True)
    made = []

    def requests():
        for rid in ("a", "b"):
            made.append(rid)
            yield t.request("m", EncodedFrame(b"\x00" * 8, 0, (32, 32)), BitrateHint(), None, rid, 1)

    try:
        with pytest.raises(ServiceError) as e:
            list(t.stream(requests(), None, 5.0))
        assert "nothing listens at" in e.value.message and made == ["a"]
    finally:
        t.close()


def _sent(source, rid):
    from edge_client.stream import SentFrame
    from shared.rate import HintOutcome

    return SentFrame(source, rid, None, 1.0, 0.0, 10, None, None, HintOutcome(None))


def test_frames_keep_the_order_and_what_is_unanswered():
    from edge_client.results import AnswerError, InferResult
    from edge_client.stream import Frames

    f = Frames()
    f.not_sent(InferResult.empty("bad.png", error=None))
    f.sent(_sent("a.jpg", "1"))
    f.not_sent(InferResult.empty("skipped.jpg", skipped=True))
    f.sent(_sent("b.jpg", "2"))
    assert [r.source for r in f.finished()] == ["bad.png"]  # only what no sent frame waits before
    assert f.lost() == ["a.jpg", "b.jpg"]
    with pytest.raises(AnswerError) as e:  # the next frame's answer must come first
        f.answered("2")
    assert "not the next frame's (a.jpg" in e.value.message and e.value.lost == ["a.jpg", "b.jpg"]
    assert f.answered("1").source == "a.jpg"
    assert [r.source for r in f.finished()] == ["skipped.jpg"]
    assert f.answered("2").source == "b.jpg" and f.unanswered() == [] and f.finished() == []
    with pytest.raises(AnswerError) as e:  # a second answer: no frame waits for it
        f.answered("2")
    assert "no frame waiting" in e.value.message and e.value.lost == []
