"""What an edge encoder returns: :class:`EncodedFrame` (one image's bitstream, the rung or level it was coded at,
the input size bpp counts, whether it met its hint), and :data:`ImageLike`, the images it takes. Torch-free: both
edges use it, the PyTorch reference encoder (:mod:`shared.encoder`) and the ONNX runtime (:mod:`edge_client.runtime`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from PIL import Image

from .bitstream import bits_per_pixel
from .rate.scheme import HintOutcome

__all__ = ["EncodedFrame", "ImageLike"]

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
