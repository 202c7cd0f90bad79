"""Images in, tensors out: dataset scanning (labelled or not), the fixed held-out rule, transforms."""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from .models.registry import Preprocess

__all__ = [
    "IMAGE_EXTS",
    "Item",
    "scan_images",
    "is_heldout",
    "split_items",
    "spread",
    "input_crop",
    "to_model_input",
    "eval_transform",
    "train_transform",
    "ImageDataset",
    "load_image",
]

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}
Item = Tuple[Path, Optional[int]]  # (image path, class index or None when unlabelled)


def load_image(path: Path | str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _read_csv(path: Path) -> List[Item]:
    base = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    items: List[Item] = []
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        cols = rows.fieldnames or []
        fcol = next((c for c in ("filename", "file", "path", "image") if c in cols), None)
        lcol = next((c for c in ("class_index", "label", "class") if c in cols), None)
        if fcol is None:
            raise ValueError(f"{path}: needs a 'filename' column (has {cols})")
        for row in rows:
            p = Path(row[fcol])
            p = p if p.is_absolute() else (base / p if (base / p).exists() else path.parent / p)
            items.append((p, int(row[lcol]) if lcol and row[lcol] != "" else None))
    return items


def scan_images(path: Path | str, labels: bool = True) -> List[Item]:
    """Images under ``path``, sorted by path.

    - a CSV file (``filename`` and optionally ``class_index``/``label`` columns; files beside it or in ``images/``);
    - a folder with ``labels.csv`` (read as above);
    - a folder of class sub-folders (ImageNet style; label = index of the sub-folder in sorted order);
    - any other folder: every image found recursively, unlabelled.
    ``labels=False`` drops labels (label-free training).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image file or folder: {path}")
    if path.is_file() and path.suffix.lower() == ".csv":
        items = _read_csv(path)
    elif path.is_file():
        items = [(path, None)]
    elif (path / "labels.csv").is_file():
        items = _read_csv(path / "labels.csv")
    else:
        subdirs = sorted(d for d in path.iterdir() if d.is_dir())
        direct = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS]
        if subdirs and not direct and all(any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir()) for d in subdirs):
            items = [(f, ci) for ci, d in enumerate(subdirs) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
        else:
            items = [(f, None) for f in sorted(path.rglob("*")) if f.suffix.lower() in IMAGE_EXTS]
    items = sorted(items, key=lambda it: str(it[0]))
    if not items:
        raise ValueError(f"no images found in {path}")
    return items if labels else [(p, None) for p, _ in items]


def is_heldout(path: Path | str) -> bool:
    """The fixed rule that keeps evaluation images out of training: CRC32 of the file name is odd.

    It depends on the file name alone, so every tool (train, eval, demo) agrees on which images of a
    folder are held out, whatever else is in the folder. About half of any folder is held out.
    """
    return zlib.crc32(Path(path).name.encode()) % 2 == 1


def split_items(items: Sequence[Item], part: str) -> List[Item]:
    """``part``: "train" (not held out), "heldout", or "all"."""
    if part == "all":
        return list(items)
    if part not in ("train", "heldout"):
        raise ValueError(f"part must be train, heldout or all, not {part!r}")
    want = part == "heldout"
    return [it for it in items if is_heldout(it[0]) == want]


def spread(items: Sequence[Item], limit: int) -> List[Item]:
    """At most ``limit`` items spread evenly over the (sorted) list, so that a limited evaluation of a
    class-folder tree still sees every class (the first N would be the first classes only)."""
    items = list(items)
    if not limit or limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def input_crop(img: Image.Image, pre: Preprocess) -> Image.Image:
    """The network's input crop as an image (what codec baselines compress): resize + centre crop."""
    h, w = pre.input_size
    if pre.resize is None:
        return img.resize((w, h), Image.BICUBIC) if img.size != (w, h) else img
    img = T.functional.resize(img, pre.resize, interpolation=T.InterpolationMode.BILINEAR)
    return T.functional.center_crop(img, [h, w])


def to_model_input(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """(3, H, W) normalised tensor from an already cropped image."""
    return T.functional.normalize(T.functional.to_tensor(img), pre.mean, pre.std)


def eval_transform(pre: Preprocess):
    return lambda img: to_model_input(input_crop(img, pre), pre)


def train_transform(pre: Preprocess, min_scale: float = 0.25):
    return T.Compose(
        [
            T.RandomResizedCrop(pre.input_size, scale=(min_scale, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


class ImageDataset(Dataset):
    """Items -> (tensor, label) with label -1 when unknown."""

    def __init__(self, items: Sequence[Item], transform):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        p, y = self.items[i]
        return self.transform(load_image(p)), (-1 if y is None else y)
