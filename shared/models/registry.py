"""A closed registry of frozen backbones and their named split points (timm's ``_registry`` pattern).

Each backbone family registers one :class:`BackboneSpec`: how to build the network (with which weights),
its preprocessing, and the split points at which the edge hands over to the cloud. Everything that cuts,
lists or trains a model goes through :func:`get_backbone`, so tests iterate :func:`list_backbones`.

The families register when they are imported, and the package (``shared/models/__init__.py``) imports them, as
timm's ``models/__init__.py`` does: importing anything from ``shared.models`` fills the registry, and this module
imports no family (no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

__all__ = [
    "Preprocess",
    "SplitPoint",
    "BackboneSpec",
    "register_backbone",
    "get_backbone",
    "list_backbones",
]


@dataclass(frozen=True)
class Preprocess:
    """Input pipeline the weights expect (as timm's ``PretrainedCfg``): resize, centre crop, normalise."""

    input_size: Tuple[int, int]  # (H, W) of the network input; bpp is counted over these pixels
    resize: Optional[int]  # shorter side before the centre crop; None = resize straight to input_size
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SplitPoint:
    """A named cut. ``node`` is the torch.fx qualified name (``NodePathTracer`` style) of the last
    node the edge runs; the cut must be a single tensor that every later node depends on alone."""

    name: str
    node: str
    description: str = ""
    depth: str = "shallow"  # "shallow" (edge runs <= 15% of FLOPs), "mid", or "deep"
    # (C, H, W) of the feature at the spec's input size (declared; tests check it against the traced head)
    feature_shape: Optional[Tuple[int, int, int]] = None


@dataclass
class BackboneSpec:
    name: str
    task: str  # the name of its task in shared.tasks ("classification" | "segmentation"): shared.tasks.get_task
    num_classes: int
    preprocess: Preprocess
    split_points: Dict[str, SplitPoint]
    # build(weights) -> nn.Module in eval mode. ``weights``: None = the default pretrained weights
    # (raises a clear error when unavailable), "random" = random init (tests), or a local file path.
    build: Callable[[Optional[str]], nn.Module]
    default_split: str = ""
    description: str = ""
    # fx leaf modules (kept as single call_module nodes when tracing), e.g. blocks with python control flow
    leaf_modules: Tuple[type, ...] = field(default_factory=tuple)
    # when the network's forward returns a dict (torchvision segmentation: {"out": ...}), the key whose tensor
    # the split model's tail returns; None = the tail returns whatever forward returns
    output_key: Optional[str] = None
    # module paths of stage outputs, in forward order (timm's feature_info, narrowed): what the view store keeps
    # and what the tail-feature loss matches after a split (empty: the logits only)
    feature_taps: Tuple[str, ...] = ()
    # the label set its classes come from (shared.labels.LABEL_SETS: names, colours); None = numbered classes
    labels: Optional[str] = None


_REGISTRY: Dict[str, Callable[[], BackboneSpec]] = {}


def register_backbone(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Decorator: register a zero-argument function returning a :class:`BackboneSpec` under its name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} registered twice")
    _REGISTRY[name] = fn
    return fn


def list_backbones() -> List[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
