"""Image -> bytes with PyTorch: preprocessing, the frozen head, the bottleneck encoder, rANS coding.

The reference encoder, for training, evaluation and the cloud's infer-image endpoint (which runs the edge
half next to the backbone it holds): it lives beside :class:`shared.pipeline.LadderCodec`, whose ``encode`` /
``encode_variable`` it drives, so the cloud never imports the edge package. Devices run
:class:`edge_client.runtime.OnnxEdgeEncoder`, which writes the same bitstreams without torch;
``edge_client.EdgeEncoder`` is this class."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import torch
from PIL import Image

from .bundle import Bundle, resolve_bundle
from .data import eval_transform, load_image
from .frame import EncodedFrame, ImageLike
from .models import SplitModel, load_split_model
from .pipeline import LadderCodec
from .rate import BitrateHint, OperatingPoint

__all__ = ["EdgeEncoder", "EncodedFrame"]


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
        self.num_classes = model.spec.num_classes
        self.head = model.head.to(device).eval()  # the tail is not kept on the edge
        self.codec = codec if codec is not None else LadderCodec(self.bundle, device)
        self.device = device
        self._transform = eval_transform(self.preprocess_spec)

    def select(self, bitrate_bpp: Optional[float]) -> int:
        return self.bundle.select(bitrate_bpp)

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        img = image if isinstance(image, Image.Image) else load_image(image)
        if img.mode != "RGB":  # convert() of an RGB image is a full copy (the cloud's infer-image: up to 40 MP)
            img = img.convert("RGB")
        return self._transform(img).unsqueeze(0)

    @property
    def scheme(self):
        """The bundle's rate scheme (``shared.rate``): hint -> operating point, and each message's outcome."""
        return self.bundle.scheme

    @property
    def levels(self):
        """The quality levels of a variable-rate bundle; None for a ladder."""
        return self.scheme.levels

    @torch.no_grad()
    def encode(self, image: ImageLike, bitrate: Optional[float] = None, rung: Optional[int] = None,
               level: Optional[int] = None, controller=None, point: Optional[OperatingPoint] = None) -> EncodedFrame:
        """Encode one image; the arguments as :meth:`edge_client.runtime.OnnxEdgeEncoder.encode`'s."""
        if point is None:
            point = self.scheme.point(BitrateHint(target_bpp=bitrate), rung=rung, level=level, controller=controller)
        t0 = time.perf_counter()
        x = self.preprocess(image).to(self.device)
        hw = tuple(x.shape[-2:])
        if point.variable:
            (c,) = self.codec.encode_variable(self.head(x), hw, **point.how())
            frame = EncodedFrame(c.message, 0, hw, 0.0, c.level, c.trials)
        else:
            (data,) = self.codec.encode(self.head(x), hw, point.rung)
            frame = EncodedFrame(data, point.rung, hw)
        frame.encode_ms = 1e3 * (time.perf_counter() - t0)
        frame.hint = self.scheme.outcome(point, frame.n_bytes, hw, frame.level)
        return frame
