"""Bytes -> answer in the cloud: header checks, entropy decoding, bottleneck decoder, frozen tail."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

from shared.bitstream import Header, bits_per_pixel
from shared.bundle import Bundle, resolve_bundle
from shared.tasks.accessors import OutputAccessors
from shared.tasks.base import OutputTensor

if TYPE_CHECKING:  # the PyTorch decoder imports torch when it is built: Prediction serves the torch-free one too
    import torch

    from shared.models import SplitModel
    from shared.pipeline import LadderCodec
    from shared.tasks import Answer, Task

__all__ = ["Prediction", "CloudDecoder"]


@dataclass
class Prediction(OutputAccessors):
    rung: int
    n_bytes: int
    input_hw: Tuple[int, int]
    topk: List[Tuple[int, str, float]]  # (class index, name, probability)
    timings_ms: Dict[str, float] = field(default_factory=dict)
    # the task's own outputs by name (shared.tasks.Task.outputs after the ranked classes)
    outputs: Dict[str, OutputTensor] = field(default_factory=dict)

    @property
    def bpp(self) -> float:
        return bits_per_pixel(self.n_bytes, self.input_hw)

    @property
    def label(self) -> int:
        return self.topk[0][0]


class CloudDecoder:
    """The cloud half of one bundle, in PyTorch (the reference decoder; ``cloud_server.onnx_runtime`` has the
    torch-free one).

    ``model`` and ``codec`` may be given to share a loaded backbone (a server serving several ladders of
    one backbone loads it once) and the ladder's resident rungs; otherwise they are built here.
    """

    def __init__(self, bundle: Union[Bundle, Path, str, None] = None, weights: Optional[str] = None,
                 device: str = "cpu", preload: bool = False, model: Optional[SplitModel] = None,
                 codec: Optional[LadderCodec] = None):
        from shared.models import load_split_model
        from shared.pipeline import LadderCodec
        from shared.tasks import get_task

        self.bundle = resolve_bundle(bundle)
        if model is None:
            model = load_split_model(self.bundle.model, self.bundle.split, weights)
        self.bundle.check_backbone(model, ("tail",))
        self.model = model.to(device)
        self.codec = codec if codec is not None else LadderCodec(self.bundle, device)
        self.task: Task = get_task(self.model.spec)
        self.names = self.task.class_names(self.model.spec)
        self.device = device
        if preload:
            self.codec.preload()

    runtime = "torch"

    def run_tail(self, features: torch.Tensor, input_hw: Sequence[int]) -> torch.Tensor:
        """Tail on a batch of decoded features (N, C, h, w) of ``input_hw`` inputs -> (N, classes[, H, W])."""
        import torch

        with torch.no_grad():
            return self.model.run_tail(features, (features.shape[0], 3, *input_hw))

    def decode_output(self, data: bytes) -> Tuple[torch.Tensor, Header, Dict[str, float]]:
        """Raw tail output for one message (raises shared.bitstream.BitstreamError on bad input)."""
        import torch

        with torch.no_grad():
            t0 = time.perf_counter()
            feat, hdr = self.codec.decode(data)
            t1 = time.perf_counter()
            out = self.run_tail(feat, hdr.input_hw)
            t2 = time.perf_counter()
        return out, hdr, {"decode": 1e3 * (t1 - t0), "tail": 1e3 * (t2 - t1)}

    def answer(self, out: torch.Tensor, topk: int = 5) -> Answer:
        """One image's tail output (1, classes[, H, W]) -> its answer, as the model's task makes it: the top-k
        classes, and the task's own outputs (segmentation: the class mask and the pixels of each class)."""
        return self.task.answer(out, self.names, topk)

    def decode(self, data: bytes, topk: int = 5) -> Prediction:
        out, hdr, timings = self.decode_output(data)
        ans = self.answer(out, topk)
        return Prediction(hdr.rung, len(data), hdr.input_hw, ans.topk, timings, ans.outputs)

