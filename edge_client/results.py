"""What the edge client returns and raises: :class:`InferResult` (one frame's answer), :class:`StreamAnswer` (one
answer as a transport hands it to the stream), and :class:`ServiceError` with its kinds. No transport, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from shared.frame import ImageLike
from shared.rate import HintOutcome
from shared.tasks import OutputTensor
from shared.tasks.accessors import OutputAccessors

from .answers import lost_frames
from .failover import reset_by_the_path

__all__ = ["InferResult", "StreamAnswer", "ServiceError", "BundleMismatchError", "ImageError", "AnswerError",
           "IMAGE_ERRORS", "source_name"]

# Retries follow the server's error kind, the same on both transports: "overloaded" (429 / RESOURCE_EXHAUSTED)
# and "unavailable" (503 / UNAVAILABLE: starting, shutting down). An answer without a kind did not come from the
# server's data plane (a proxy, a refused connection): retried on these transport codes only.
_RETRY_KINDS = ("overloaded", "unavailable")
_RETRY_WITHOUT_KIND = ("UNAVAILABLE", 429, 502, 503, 504)

# what reading or encoding one bad image raises (PIL's UnidentifiedImageError and DecompressionBombError are
# OSError / ValueError subclasses); anything else is a bug and propagates
IMAGE_ERRORS = (OSError, ValueError, SyntaxError)


class ServiceError(Exception):
    """The server refused a request or could not be reached. ``code``: gRPC status name or HTTP status;
    ``kind``: the server's error kind (``overloaded``, ``invalid_argument``, ...; empty when the answer did not
    come from the server); ``retry_after_s``: the server's retry hint, when it gave one."""

    def __init__(self, code: Union[str, int], message: str, kind: str = "", retry_after_s: Optional[float] = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.kind, self.retry_after_s = code, message, kind, retry_after_s

    @property
    def retryable(self) -> bool:
        if self.kind:
            return self.kind in _RETRY_KINDS
        return self.code in _RETRY_WITHOUT_KIND or reset_by_the_path(self)  # a proxy's reset: replica gone


class BundleMismatchError(ServiceError):
    """The server serves no model with this edge's bundle: the two would not decode each other's bytes."""

    def __init__(self, message: str):
        super().__init__("FAILED_PRECONDITION", message, "bundle_mismatch")


class ImageError(ServiceError):
    """An image this edge could not read or encode (missing, unreadable, not an image): nothing was sent."""

    def __init__(self, message: str):
        super().__init__("BAD_IMAGE", message, "bad_image")

    @classmethod
    def of(cls, image: ImageLike, e: Exception) -> "ImageError":
        return cls(f"{source_name(image)}: cannot encode: {type(e).__name__}: {e}")


class AnswerError(ServiceError):
    """An answer the edge does not accept (``edge_client.answers``: a rung, class or score out of range, other bytes
    than were sent), or a stream that broke its order (an answer with no frame waiting, an unknown request id, frames
    left unanswered when it ended). ``lost``: the frames left without an answer, by name."""

    def __init__(self, message: str, lost: Sequence[str] = ()):
        self.lost = list(lost)
        super().__init__("BAD_ANSWER", message + (f"; {lost_frames(self.lost)}" if self.lost else ""), "bad_answer")


@dataclass
class InferResult(OutputAccessors):
    source: str
    request_id: str
    rung: int
    n_bytes: int
    bpp: float
    topk: List[Tuple[int, str, float]]
    latency_ms: float  # client side: request sent -> answer received (network + server)
    encode_ms: float = 0.0  # edge side: preprocessing, head, bottleneck encoder, entropy coding
    hinted_rung: Optional[int] = None
    server_timings_ms: Dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    error: Optional[ServiceError] = None  # stream mode: a refused frame (the stream goes on)
    outputs: Dict[str, OutputTensor] = field(default_factory=dict)  # the task's own, by name (typed: OutputAccessors)
    level: Optional[int] = None  # variable-rate bundles: the quality level the edge encoded at
    target_kbps: Optional[float] = None  # a stream following its link (track_link): the rate it aimed at then
    skipped: bool = False  # stream control dropped this frame: the link carries less than the coarsest level
    hint_outcome: HintOutcome = HintOutcome(None)  # whether the message met its bitrate hint, and why not

    @classmethod
    def empty(cls, source: str, request_id: str = "", latency_ms: float = 0.0, encode_ms: float = 0.0,
              **kw) -> "InferResult":
        """A frame without a result: refused (``error``), unreadable, or skipped by stream control."""
        return cls(source, request_id, -1, 0, 0.0, [], latency_ms, encode_ms, **kw)

    @property
    def ok(self) -> bool:
        """Answered (neither refused nor skipped)."""
        return self.error is None and not self.skipped

    @property
    def label(self) -> Optional[Tuple[int, str, float]]:
        return self.topk[0] if self.topk else None


@dataclass
class StreamAnswer:
    """One answer of a stream as the transport read it: the request id it carries and its result (``source``,
    ``encode_ms`` and ``latency_ms`` not yet filled: the stream knows them) or the server's refusal of that frame;
    neither when the server sent an empty answer."""

    request_id: str
    result: Optional[InferResult] = None
    error: Optional[ServiceError] = None


def source_name(image: ImageLike) -> str:
    """The name a result gives its image: the path, else a PIL image's file name."""
    return str(image) if isinstance(image, (str, Path)) else getattr(image, "filename", "") or "<image>"
