"""Image -> bytes on the edge: preprocessing, the frozen head, the bottleneck encoder, rANS coding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from PIL import Image

from shared.bundle import Bundle, resolve_bundle
from shared.data import eval_transform, load_image
from shared.models import SplitModel, load_split_model
from shared.pipeline import LadderCodec, bits_per_pixel

ImageLike = Union[str, Path, Image.Image]


@dataclass
class EncodedFrame:
    data: bytes
    rung: int
    input_hw: Tuple[int, int]

    @property
    def n_bytes(self) -> int:
        return len(self.data)

    @property
    def bpp(self) -> float:
        return bits_per_pixel(len(self.data), self.input_hw)


class EdgeEncoder:
    """Holds the head of the backbone (the tail is dropped) and the bundle's ladder.

    ``model`` and ``codec`` may be given to reuse a loaded split model and ladder (the cloud's infer-image
    endpoint runs the edge half in-process on the backbone it already holds).
    """

    def __init__(self, bundle: Union[Bundle, Path, str, None] = None, weights: Optional[str] = None,
                 device: str = "cpu", model: Optional[SplitModel] = None, codec: Optional[LadderCodec] = None):
        self.bundle = resolve_bundle(bundle)
        if model is None:
            model = load_split_model(self.bundle.model, self.bundle.split, weights)
        self.bundle.check_backbone(model, ("head",))
        self.preprocess_spec = model.spec.preprocess
        self.head = model.head.to(device).eval()  # the tail is not kept on the edge
        self.codec = codec if codec is not None else LadderCodec(self.bundle, device)
        self.device = device
        self._transform = eval_transform(self.preprocess_spec)

    def select(self, bitrate_bpp: Optional[float]) -> int:
        return self.bundle.select(bitrate_bpp)

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        img = image if isinstance(image, Image.Image) else load_image(image)
        return self._transform(img.convert("RGB")).unsqueeze(0)

    @torch.no_grad()
    def encode(self, image: ImageLike, bitrate: Optional[float] = None, rung: Optional[int] = None) -> EncodedFrame:
        """Encode one image at the rung given, or at the rung the bitrate hint (bpp) selects."""
        x = self.preprocess(image).to(self.device)
        r = self.select(bitrate) if rung is None else rung
        hw = tuple(x.shape[-2:])
        (data,) = self.codec.encode(self.head(x), hw, r)
        return EncodedFrame(data, r, hw)
