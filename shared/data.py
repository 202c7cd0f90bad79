"""Images in, tensors out: dataset scanning (labelled or not), the fixed held-out rule, transforms.

A label is a class index (classification) or the path of a mask image (segmentation: one class index per
pixel; values >= the model's number of classes are void and ignored, as CamVid's 11). Which dataset a model
trains or evaluates on is its task's choice: ``shared.tasks.get_task(spec).make_dataset``.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from .imageprep import IMAGE_EXTS, input_crop, load_image, to_array
from .models.registry import Preprocess

__all__ = [
    "IMAGE_EXTS",
    "Item",
    "scan_images",
    "is_heldout",
    "split_items",
    "heldout_part",
    "PARTS",
    "spread",
    "input_crop",
    "to_model_input",
    "eval_transform",
    "train_transform",
    "ImageDataset",
    "load_image",
    "VOID",
    "mask_folder",
    "load_mask",
    "mask_crop",
    "seg_eval_transform",
    "seg_train_transform",
    "SegmentationDataset",
]

Item = Tuple[Path, Optional[Union[int, Path]]]  # (image, class index | mask file | None when unlabelled)
VOID = 255  # mask value of pixels without a label (crop padding, unlabelled images)
MASK_FOLDER_SUFFIX = "annot"  # SegNet's layout: masks of train/x.png in trainannot/x.png


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


def mask_folder(path: Path | str) -> Optional[Path]:
    """The mask folder of an image folder in SegNet's layout (``camvid/train`` -> ``camvid/trainannot``)."""
    p = Path(path)
    masks = p.parent / (p.name + MASK_FOLDER_SUFFIX)
    return masks if p.is_dir() and masks.is_dir() else None


def _with_masks(items: List[Item], images: Path, masks: Path) -> List[Item]:
    out, missing = [], []
    for p, _ in items:
        m = (masks / p.relative_to(images)).with_suffix(".png")
        (out if m.is_file() else missing).append((p, m))
    if missing:
        raise ValueError(f"{len(missing)} images of {images} have no mask in {masks} (e.g. {missing[0][1].name})")
    return out


def scan_images(path: Path | str, labels: bool = True) -> List[Item]:
    """Images under ``path``, sorted by path.

    - a CSV file (``filename`` and optionally ``class_index``/``label`` columns; files beside it or in ``images/``);
    - a folder with ``labels.csv`` (read as above);
    - a folder of class sub-folders (ImageNet style; label = index of the sub-folder in sorted order);
    - a folder ``X`` beside a folder ``Xannot`` (SegNet/CamVid layout): every image, labelled with the PNG mask
      of the same name in ``Xannot``;
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
            masks = mask_folder(path)
            if masks is not None and labels:
                items = _with_masks(items, path, masks)
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


PARTS = ("train", "heldout", "selection", "test", "all")


def heldout_part(path: Path | str) -> str:
    """Which half of the held-out images ``path`` is in: "selection" (recipes, level ranges and checkpoints are
    chosen on it) or "test" (reported figures, never chosen on). The next bit of the same CRC32, so the halves
    are fixed by the file name like the held-out rule itself."""
    return "selection" if (zlib.crc32(Path(path).name.encode()) >> 1) % 2 == 0 else "test"


def split_items(items: Sequence[Item], part: str) -> List[Item]:
    """``part``: "train" (not held out), "heldout" (both halves below), "selection" or "test" (the halves of the
    held-out images: :func:`heldout_part`), or "all"."""
    if part == "all":
        return list(items)
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    if part in ("selection", "test"):
        return [it for it in items if is_heldout(it[0]) and heldout_part(it[0]) == part]
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


def to_model_input(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """(3, H, W) normalised tensor from an already cropped image (``shared.imageprep.to_array``)."""
    return torch.from_numpy(to_array(img, pre))


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


# ------------------------------------------------------------------------------------------ segmentation
def load_mask(path: Path | str) -> Image.Image:
    """A mask image as 8-bit class indexes ("L"; a palette image keeps its indexes, not its colours)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path}: a mask must be a single-channel image of class indexes, not mode {im.mode}")
        return im.copy() if im.mode == "L" else Image.fromarray(np.asarray(im))


def _mask_tensor(mask: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(mask, dtype=np.uint8))


def mask_crop(mask: Optional[Image.Image], pre: Preprocess) -> torch.Tensor:
    """(H, W) uint8 class indexes of the network's input crop; all ``VOID`` when there is no mask."""
    if mask is None:
        return torch.full(tuple(pre.input_size), VOID, dtype=torch.uint8)
    return _mask_tensor(input_crop(mask, pre, nearest=True))


def seg_eval_transform(pre: Preprocess):
    """(image, mask or None) -> (input tensor, mask tensor): the input crop, nothing random."""
    return lambda img, mask: (to_model_input(input_crop(img, pre), pre), mask_crop(mask, pre))


def seg_train_transform(pre: Preprocess, scale: Tuple[float, float] = (0.5, 2.0),
                        crop: Optional[Tuple[int, int]] = None):
    """(image, mask or None) -> (input, mask): the input crop rescaled by a random factor in ``scale``, a random
    ``crop`` (default: the input size; padded with the mean colour and ``VOID`` where the image is smaller) and a
    random horizontal flip. Randomness comes from torch's generator (seeded runs repeat)."""
    ch, cw = crop or pre.input_size

    def transform(img: Image.Image, mask: Optional[Image.Image]):
        x, m = to_model_input(input_crop(img, pre), pre), mask_crop(mask, pre)
        s = scale[0] + (scale[1] - scale[0]) * float(torch.rand(()))
        h, w = max(1, round(x.shape[1] * s)), max(1, round(x.shape[2] * s))
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        m = F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0].to(torch.uint8)
        ph, pw = max(0, ch - h), max(0, cw - w)
        if ph or pw:  # normalised zeros = the mean colour
            x = F.pad(x, (0, pw, 0, ph))
            m = F.pad(m, (0, pw, 0, ph), value=VOID)
        top = int(torch.randint(x.shape[1] - ch + 1, ()))
        left = int(torch.randint(x.shape[2] - cw + 1, ()))
        x, m = x[:, top : top + ch, left : left + cw], m[top : top + ch, left : left + cw]
        if torch.rand(()) < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        return x.contiguous(), m.contiguous()

    return transform


class SegmentationDataset(Dataset):
    """Items -> (input tensor, (H, W) uint8 mask); an unlabelled image gets an all-``VOID`` mask."""

    def __init__(self, items: Sequence[Item], transform):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        p, m = self.items[i]
        if m is not None and not isinstance(m, Path):
            raise ValueError(f"{p}: a segmentation label must be a mask file, not {m!r}")
        return self.transform(load_image(p), None if m is None else load_mask(m))
