"""Label sets: the class names of the data sets the backbones were trained on, and the colours masks are drawn
with. Plain data, importable without PyTorch (the edge draws masks with it).

Which set a model uses is its backbone's declaration (``BackboneSpec.labels``); code that has the spec asks its
task (:meth:`shared.tasks.Task.class_names`, :meth:`~shared.tasks.Task.palette`). Without a spec (the torch-free
edge, a results file) the set is the one registered with the model's number of classes.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# CamVid (SegNet's 11-class version) in class-index order: names and the data set's own RGB palette
# (``classes.json`` of the team data kit; a test checks the two agree when the kit is present).
CAMVID_CLASSES: List[Tuple[str, Tuple[int, int, int]]] = [
    ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)), ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)), ("Tree", (128, 128, 0)), ("SignSymbol", (192, 128, 128)), ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)), ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
]
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
VOID_RGB = (0, 0, 0)  # pixels without a class (mask values >= the number of classes)


@lru_cache(maxsize=None)
def imagenet_classes() -> List[str]:
    """The 1,000 ILSVRC-2012 class names in the standard (sorted WordNet id) order."""
    return json.loads(resources.files("shared").joinpath("assets/imagenet_classes.json").read_text())


# ------------------------------------------------------------------------------------------ label sets
# name -> (number of classes, class names (a function: ImageNet's are read on first use), colours or None).
# A backbone names its set (``BackboneSpec.labels``); the task turns it into names and colours
# (``shared.tasks.Task.class_names`` / ``palette``).
LABEL_SETS: Dict[str, Tuple[int, Callable[[], List[str]], Optional[List[Tuple[int, int, int]]]]] = {
    "imagenet": (1000, lambda: imagenet_classes(), None),
    "cifar10": (10, lambda: list(CIFAR10_CLASSES), None),
    "camvid": (len(CAMVID_CLASSES), lambda: [n for n, _ in CAMVID_CLASSES], [rgb for _, rgb in CAMVID_CLASSES]),
    "voc": (len(VOC_CLASSES), lambda: list(VOC_CLASSES), None),
}


def label_set(labels: Optional[str], num_classes: int) -> Optional[str]:
    """The label set to use for a model with ``num_classes`` outputs: ``labels`` when it is registered with that
    many classes; when ``labels`` is None (the torch-free edge knows no backbone specs), the one registered set
    of that size if there is exactly one; else None (classes are numbered)."""
    if labels is not None:
        if labels not in LABEL_SETS:
            raise KeyError(f"unknown label set {labels!r}; known: {', '.join(sorted(LABEL_SETS))}")
        return labels if LABEL_SETS[labels][0] == num_classes else None
    sized = [k for k, (n, _, _) in LABEL_SETS.items() if n == num_classes]
    return sized[0] if len(sized) == 1 else None


def names_of(labels: Optional[str], num_classes: int) -> List[str]:
    """Class names in class-index order (see :func:`label_set`); ``"0"``, ``"1"``, ... without a label set."""
    name = label_set(labels, num_classes)
    return LABEL_SETS[name][1]() if name else [str(i) for i in range(num_classes)]


def colours_of(labels: Optional[str], num_classes: int) -> List[Tuple[int, int, int]]:
    """One RGB colour per class: the data set's own when it has them (CamVid), VOC's colour map otherwise."""
    name = label_set(labels, num_classes)
    own = LABEL_SETS[name][2] if name else None
    return list(own) if own else [_voc_colour(i) for i in range(num_classes)]


def class_names(model: str, num_classes: int) -> List[str]:
    """Class names of a model with ``num_classes`` outputs, for callers that know no backbone spec (the edge, a
    results file). ``model`` does not choose the set (see :func:`label_set`); with a spec, ask the task."""
    return names_of(None, num_classes)


def _voc_colour(i: int) -> Tuple[int, int, int]:
    """Pascal VOC's colour map: the bits of the index spread over R, G and B (distinct for any index)."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= ((i >> 0) & 1) << shift
        g |= ((i >> 1) & 1) << shift
        b |= ((i >> 2) & 1) << shift
        i >>= 3
    return r, g, b


def palette(model: str, num_classes: int) -> List[Tuple[int, int, int]]:
    """One RGB colour per class, for callers that know no backbone spec (``model`` does not choose; see
    :func:`colours_of`)."""
    return colours_of(None, num_classes)


def palette_image(mask, model: str, num_classes: int, colours: Optional[Sequence[Tuple[int, int, int]]] = None):
    """(H, W) class indexes (numpy or tensor) -> a palette ("P" mode) PIL image: the file keeps the class
    indexes as pixel values and shows them in the class colours (``colours``: the task's palette; default
    :func:`palette`); void (>= ``num_classes``) is black."""
    import numpy as np
    from PIL import Image

    m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    m = np.where(m < min(num_classes, 255), m, 255).astype(np.uint8)
    colours = list(colours if colours is not None else palette(model, num_classes))[:255]
    colours += [VOID_RGB] * (256 - len(colours))
    img = Image.fromarray(m)
    img.putpalette([c for rgb in colours for c in rgb])  # an "L" image becomes "P": indexes kept
    return img
