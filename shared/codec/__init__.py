"""Bottleneck codecs: transforms (``layers``), rate models (``rate_models``) and the unit (``bottleneck``).

The torch-free parts the edge runs (``rans``, ``integer_numpy``) import without torch: the names below
load their torch modules on first use (PEP 562).
"""

import importlib

__all__ = ["Bottleneck", "BottleneckConfig", "RateModel", "RATE_MODELS", "build_rate_model"]

_HOME = {"Bottleneck": "bottleneck", "BottleneckConfig": "config", "RateModel": "rate_models",
         "RATE_MODELS": "rate_models", "build_rate_model": "rate_models"}


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
