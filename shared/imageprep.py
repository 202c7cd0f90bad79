"""Image -> network input without torch: file reading, resize + centre crop, normalisation (PIL and numpy).

The one definition of the input pipeline: ``shared.data`` (training, evaluation, the PyTorch edge) wraps it
in tensors and the torch-free edge runtime uses it as is, so both feed the head the same float32 pixels.
It does what torchvision's ``Resize(short side)`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize`` do on PIL
images (the same PIL resampling, rounding and float32 arithmetic; ``tests/test_data.py`` compares them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np
from PIL import Image

__all__ = ["IMAGE_EXTS", "load_image", "input_crop", "resized_size", "to_array"]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}


def load_image(path: Union[Path, str]) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def input_crop(img: Image.Image, pre, nearest: bool = False) -> Image.Image:
    """The network's input crop as an image (what codec baselines compress): resize + centre crop.

    ``pre``: a ``Preprocess`` (or anything with ``input_size`` and ``resize``). ``nearest``: nearest-neighbour
    resampling, for masks (class indexes must not be blended)."""
    h, w = pre.input_size
    if pre.resize is None:
        return img.resize((w, h), Image.NEAREST if nearest else Image.BICUBIC) if img.size != (w, h) else img
    size = resized_size(img.size, pre)
    if size != img.size:
        img = img.resize(size, Image.NEAREST if nearest else Image.BILINEAR)
    return _center_crop(img, h, w)


def resized_size(size: Tuple[int, int], pre) -> Tuple[int, int]:
    """(width, height) of the image :func:`input_crop` resizes a ``size`` = (width, height) image to, before
    cropping: the short side to ``pre.resize``, the long side in proportion (torchvision's rule for an int size),
    or ``pre.input_size`` when ``pre.resize`` is None. Costs nothing: servers check it before resizing (a 1x20000
    image would become 256 x 5,120,000)."""
    if pre.resize is None:
        h, w = pre.input_size
        return (w, h)
    iw, ih = size
    short, long = (iw, ih) if iw <= ih else (ih, iw)
    new_short, new_long = pre.resize, int(pre.resize * long / short)
    return (new_short, new_long) if iw <= ih else (new_long, new_short)


def _center_crop(img: Image.Image, h: int, w: int) -> Image.Image:
    iw, ih = img.size
    if iw < w or ih < h:  # torchvision pads with zeros first
        canvas = Image.new(img.mode, (max(iw, w), max(ih, h)))
        canvas.paste(img, ((max(iw, w) - iw) // 2, (max(ih, h) - ih) // 2))
        img, (iw, ih) = canvas, canvas.size
    top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
    return img.crop((left, top, left + w, top + h))


def to_array(img: Image.Image, pre) -> np.ndarray:
    """(3, H, W) float32, normalised, from an already cropped RGB image."""
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))
