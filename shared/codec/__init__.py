"""Bottleneck codecs: transforms (``layers``), rate models (``rate_models``) and the unit (``bottleneck``)."""

from .bottleneck import Bottleneck, BottleneckConfig
from .rate_models import RATE_MODELS, RateModel, build_rate_model

__all__ = ["Bottleneck", "BottleneckConfig", "RateModel", "RATE_MODELS", "build_rate_model"]
