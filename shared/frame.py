"""What an edge encoder is, takes and returns: :class:`Encoder` (the interface), :data:`ImageLike` (the images it
takes) and :class:`EncodedFrame` (one image's bitstream, the rung or level it was coded at, the input size bpp
counts, whether it met its hint). Torch-free: both edges follow it, the PyTorch reference encoder
(:class:`shared.encoder.EdgeEncoder`) and the ONNX runtime (:class:`edge_client.runtime.OnnxEdgeEncoder`);
``tests/test_edge_runtime.py`` checks that both do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Tuple, Union, runtime_checkable

from PIL import Image

from .bitstream import bits_per_pixel
from .rate.scheme import HintOutcome

if TYPE_CHECKING:
    from .bundle import Bundle
    from .rate import OperatingPoint, RateScheme, StreamRateController

__all__ = ["EncodedFrame", "ImageLike", "Encoder"]

ImageLike = Union[str, Path, Image.Image]


@dataclass
class EncodedFrame:
    data: bytes
    rung: int
    input_hw: Tuple[int, int]
    encode_ms: float = 0.0  # preprocessing, head, bottleneck encoder, entropy coding
    level: Optional[int] = None  # the quality level of a variable-rate bundle (None: a ladder rung)
    trials: int = 1  # entropy-coding passes rate control ran (variable-rate bundles)
    hint: HintOutcome = HintOutcome(None)  # whether the message met its bitrate hint, and why not

    @property
    def n_bytes(self) -> int:
        return len(self.data)

    @property
    def bpp(self) -> float:
        return bits_per_pixel(len(self.data), self.input_hw)


@runtime_checkable
class Encoder(Protocol):
    """Image -> :class:`EncodedFrame` at an operating point of the bundle's rate scheme: what the edge client asks
    of an encoder, whichever runtime it runs on."""

    bundle: "Bundle"
    num_classes: int

    @property
    def scheme(self) -> "RateScheme":
        """The bundle's rate scheme (``shared.rate``): hint -> operating point, and each message's outcome."""

    @property
    def levels(self) -> Optional[Tuple[int, int]]:
        """The quality levels of a variable-rate bundle; None for a ladder."""

    def select(self, bitrate_bpp: Optional[float]) -> int:
        """The rung a bpp hint selects."""

    def preprocess(self, image: ImageLike) -> Any:
        """The network input of one image (a batch of one; a tensor or an array, as the runtime uses)."""

    def encode(self, image: ImageLike, bitrate: Optional[float] = None, rung: Optional[int] = None,
               level: Optional[int] = None, controller: Optional["StreamRateController"] = None,
               point: Optional["OperatingPoint"] = None) -> EncodedFrame:
        """Encode one image at ``point``, or the one the other arguments give (``scheme.point``)."""
