"""Bytes -> answer in the cloud: header checks, entropy decoding, bottleneck decoder, frozen tail."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from shared.bitstream import Header
from shared.bundle import Bundle, resolve_bundle
from shared.labels import class_names
from shared.models import load_split_model
from shared.pipeline import LadderCodec, bits_per_pixel


@dataclass
class Prediction:
    rung: int
    n_bytes: int
    input_hw: Tuple[int, int]
    topk: List[Tuple[int, str, float]]  # (class index, name, probability)
    timings_ms: Dict[str, float] = field(default_factory=dict)

    @property
    def bpp(self) -> float:
        return bits_per_pixel(self.n_bytes, self.input_hw)

    @property
    def label(self) -> int:
        return self.topk[0][0]


class CloudDecoder:
    def __init__(self, bundle: Union[Bundle, Path, str, None] = None, weights: Optional[str] = None,
                 device: str = "cpu", preload: bool = False):
        self.bundle = resolve_bundle(bundle)
        self.model = load_split_model(self.bundle.model, self.bundle.split, weights).to(device)
        self.codec = LadderCodec(self.bundle, device)
        self.names = class_names(self.bundle.model, self.model.spec.num_classes)
        self.device = device
        if preload:
            self.codec.preload()

    @torch.no_grad()
    def decode_output(self, data: bytes) -> Tuple[torch.Tensor, Header, Dict[str, float]]:
        """Raw tail output for one message (raises shared.bitstream.BitstreamError on bad input)."""
        t0 = time.perf_counter()
        feat, hdr = self.codec.decode(data)
        t1 = time.perf_counter()
        out = self.model.run_tail(feat, (1, 3, *hdr.input_hw))
        if isinstance(out, dict):
            out = out["out"]
        t2 = time.perf_counter()
        return out, hdr, {"decode": 1e3 * (t1 - t0), "tail": 1e3 * (t2 - t1)}

    def decode(self, data: bytes, topk: int = 5) -> Prediction:
        out, hdr, timings = self.decode_output(data)
        probs = out.softmax(1)[0]
        p, idx = probs.topk(min(topk, probs.numel()))
        top = [(int(i), self.names[int(i)], float(v)) for v, i in zip(p, idx)]
        return Prediction(hdr.rung, len(data), hdr.input_hw, top, timings)
