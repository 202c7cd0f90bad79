"""Frozen backbones (a closed registry) and their edge/cloud split with torch.fx."""

# the families register their backbones on import (timm's way): importing the package fills the registry
from . import families  # noqa: F401  (before anything that lists or gets a backbone)
from .registry import BackboneSpec, Preprocess, SplitPoint, get_backbone, list_backbones
from .split import SplitModel, describe_models, load_split_model, split_graph, split_info

__all__ = [
    "BackboneSpec",
    "Preprocess",
    "SplitPoint",
    "get_backbone",
    "list_backbones",
    "SplitModel",
    "load_split_model",
    "split_graph",
    "split_info",
    "describe_models",
]
