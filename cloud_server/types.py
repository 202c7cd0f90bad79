"""The data plane's request and response types (pydantic). Both front ends translate to and from these."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.hint import BitrateHint
from shared.tasks.accessors import OutputAccessors
from shared.tasks.base import OutputTensor

from .errors import InvalidArgument, describe_validation

__all__ = [
    "InferenceRequest",
    "ClassScore",
    "InferenceResponse",
    "RungMetadata",
    "ModelMetadata",
    "parse_request",
]


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=256)
    """Model name (a served bundle)."""
    bitstream: bytes
    """One message in the splitinfer bitstream format."""
    target_bpp: Optional[float] = None
    kbit_per_s: Optional[float] = None
    fps: Optional[float] = None
    expected_rung: Optional[int] = Field(None, ge=0, le=255)
    """The rung the client encoded with; a header or hint that disagrees is refused."""
    request_id: Optional[str] = Field(None, max_length=128)
    top_k: Optional[int] = Field(None, ge=1, le=100)

    @model_validator(mode="after")
    def _check_hint(self) -> "InferenceRequest":
        self.hint  # raises ValueError on an inconsistent hint
        return self

    @property
    def hint(self) -> BitrateHint:
        return BitrateHint(self.target_bpp, self.kbit_per_s, self.fps)


class ClassScore(BaseModel):
    index: int
    name: str
    score: float


class InferenceResponse(BaseModel, OutputAccessors):
    request_id: str
    model: str
    bundle_id: str
    rung: int
    hinted_rung: Optional[int] = None
    bytes_received: int
    bpp: float
    input_hw: Tuple[int, int]
    topk: List[ClassScore]
    timings_ms: Dict[str, float] = Field(default_factory=dict)
    batch_size: int = 1
    outputs: Dict[str, OutputTensor] = Field(default_factory=dict)
    """The task's own outputs by name (``shared.tasks.Task.outputs`` after the ranked classes)."""


class RungMetadata(BaseModel):
    """One rung of a served ladder. Besides these fields it carries the accuracy figures of the model's task, by
    name (``shared.tasks.Task.metrics``: ``top1``, ``top5`` or ``miou``, ``pixel_acc``), as measured at training
    time; :meth:`metrics` lists them."""

    model_config = ConfigDict(extra="allow")

    index: int
    lam: float
    bpp: Optional[float] = None
    agreement: Optional[float] = None
    n_images: int = 0
    resident: bool = False

    def metrics(self) -> Dict[str, float]:
        """The task's accuracy figures this rung carries (measured ones only)."""
        return {k: v for k, v in (self.model_extra or {}).items() if v is not None}


class LevelPoint(BaseModel):
    """One measured point of a variable-rate bundle's rate-accuracy curve (plus the task's figures by name)."""

    model_config = ConfigDict(extra="allow")

    level: int
    bpp: float
    agreement: Optional[float] = None
    n_images: int = 0

    def metrics(self) -> Dict[str, float]:
        return {k: v for k, v in (self.model_extra or {}).items() if v is not None}


class VariableRate(BaseModel):
    """A variable-rate bundle: one network serving every quality level in ``levels`` (a bitrate hint is met per
    image by the edge's rate control), with its measured rate-accuracy ``curve``."""

    levels: Tuple[int, int]
    curve: List[LevelPoint] = []


class ModelMetadata(BaseModel):
    name: str
    bundle_id: str
    backbone: str
    split: str
    task: str
    input_hw: Tuple[int, int]
    rate_model: str
    num_classes: int
    backbone_loaded: bool  # the backbone is in memory (ServedModel.backbone_loaded: True for every served model)
    rungs: List[RungMetadata]
    variable_rate: Optional[VariableRate] = None
    platform: str = "splitinfer"
    head_weights: str = ""  # fingerprint of the backbone's head: an edge package must carry the same (docs/deploy.md)


def parse_request(fields: Dict[str, Any]) -> InferenceRequest:
    """Build an :class:`InferenceRequest`; a field that is missing, mistyped or out of range -> InvalidArgument."""
    try:
        return InferenceRequest.model_validate(fields)
    except ValidationError as e:
        raise InvalidArgument(f"invalid request: {describe_validation(e.errors())}") from None
