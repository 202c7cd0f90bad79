"""Human-readable class names per task, and the colours segmentation masks are drawn with."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import List, Tuple

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
VOID_RGB = (0, 0, 0)  # pixels without a class (mask values >= the number of classes)


@lru_cache(maxsize=None)
def imagenet_classes() -> List[str]:
    """The 1,000 ILSVRC-2012 class names in the standard (sorted WordNet id) order."""
    return json.loads(resources.files("shared").joinpath("assets/imagenet_classes.json").read_text())


def class_names(model: str, num_classes: int) -> List[str]:
    if num_classes == 1000:
        return imagenet_classes()
    if model.startswith("cifar"):
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if model.endswith("_seg") and num_classes == len(CAMVID_CLASSES):
        return [n for n, _ in CAMVID_CLASSES]
    if model.startswith("deeplabv3") and num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [str(i) for i in range(num_classes)]


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
    """One RGB colour per class (CamVid's own for the CamVid model, VOC's colour map otherwise)."""
    if model.endswith("_seg") and num_classes == len(CAMVID_CLASSES):
        return [rgb for _, rgb in CAMVID_CLASSES]
    return [_voc_colour(i) for i in range(num_classes)]


def palette_image(mask, model: str, num_classes: int):
    """(H, W) class indexes (numpy or tensor) -> a palette ("P" mode) PIL image: the file keeps the class
    indexes as pixel values and shows them in the class colours; void (>= ``num_classes``) is black."""
    import numpy as np
    from PIL import Image

    m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    m = np.where(m < min(num_classes, 255), m, 255).astype(np.uint8)
    colours = palette(model, num_classes)[:255]
    colours += [VOID_RGB] * (256 - len(colours))
    img = Image.fromarray(m)
    img.putpalette([c for rgb in colours for c in rgb])  # an "L" image becomes "P": indexes kept
    return img
