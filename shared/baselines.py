"""Image-codec baselines: compress the network's input crop, decode it, run the whole model in the cloud.

The fair comparison for split inference: the same images, the same model, the same crop (so the
same number of pixels), and bpp = 8 x bytes / pixels of that crop.

Codecs: JPEG, WebP and AVIF through Pillow's own encoders (AVIF needs a Pillow built with libavif,
as the official wheels are since 11.3), and HEVC intra (a HEIF still image: one x265 intra frame, the
closest stand-in for BPG) through ``pillow-heif``. :func:`require_codec` checks an encoder before any
work and raises :class:`CodecUnavailable` naming the missing package.
"""

from __future__ import annotations

import io
from typing import Dict, List, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from .data import Item, input_crop, load_image, to_model_input
from .models.split import SplitModel
from .tasks import get_task

__all__ = ["CODECS", "CodecUnavailable", "codec_roundtrip", "equal_rate_quality", "evaluate_codec", "parse_codecs",
           "require_codec"]

# PIL format name and the quality sweep used by default (low to high). The HEVC sweep spans about
# 0.13-2.3 bpp on 224x224 ImageNet crops (quality 1 is x265's floor; above 60 the rate only grows).
CODECS: Dict[str, tuple] = {
    "jpeg": ("JPEG", (5, 10, 20, 30, 50, 75, 90)),
    "webp": ("WEBP", (1, 5, 10, 20, 35, 50, 75, 90)),
    "avif": ("AVIF", (5, 15, 25, 40, 55, 70, 85)),
    "hevc": ("HEIF", (1, 5, 10, 20, 30, 40, 50, 60)),
}

# what to install when a codec's encoder is missing
_PACKAGES = {
    "jpeg": "Pillow built with libjpeg",
    "webp": "Pillow built with libwebp",
    "avif": "Pillow >= 11.3 built with libavif (the official Pillow wheels include it)",
    "hevc": "pillow-heif (pip install pillow-heif==1.8.1)",
}
_FEATURES = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}


class CodecUnavailable(RuntimeError):
    """A codec is unknown, or its encoder is not installed; the message names what to install."""


def require_codec(codec: str) -> None:
    """Make sure ``codec`` can encode and decode here (registers pillow-heif's plugin for ``hevc``)."""
    if codec not in CODECS:
        raise CodecUnavailable(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    if codec == "hevc":
        try:
            import pillow_heif
        except ImportError as e:
            raise CodecUnavailable(f"codec 'hevc' needs {_PACKAGES['hevc']}: {e}") from None
        pillow_heif.register_heif_opener()
        if not pillow_heif.libheif_info().get("HEIF"):
            raise CodecUnavailable(f"codec 'hevc': this pillow-heif has no HEVC encoder; install {_PACKAGES['hevc']}")
        return
    from PIL import features

    if not features.check(_FEATURES[codec]):
        raise CodecUnavailable(f"codec {codec!r} is not available: needs {_PACKAGES[codec]}")


def parse_codecs(spec: str) -> List[str]:
    """``"jpeg, webp,hevc"`` -> ``["jpeg", "webp", "hevc"]``, each checked by :func:`require_codec`."""
    names = [c.strip().lower() for c in spec.split(",") if c.strip()]
    for c in names:
        require_codec(c)
    return names


def codec_roundtrip(img: Image.Image, codec: str, quality: int) -> tuple[Image.Image, int]:
    """Encode ``img`` at ``quality``, decode it: (decoded RGB image, bytes of the file, headers included)."""
    fmt, _ = CODECS[codec]
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    n = buf.tell()
    buf.seek(0)
    return Image.open(buf).convert("RGB"), n


def equal_rate_quality(img: Image.Image, codec: str, max_bytes: int, lo: int = 1, hi: int = 95) -> int:
    """The highest quality in [lo, hi] whose file of ``img`` is at most ``max_bytes`` (``lo`` when none is):
    a binary search, the file size growing with the quality."""
    best = lo
    while lo <= hi:
        q = (lo + hi) // 2
        if codec_roundtrip(img, codec, q)[1] <= max_bytes:
            best, lo = q, q + 1
        else:
            hi = q - 1
    return best


@torch.no_grad()
def evaluate_codec(
    model: SplitModel,
    items: Sequence[Item],
    codec: str,
    qualities: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> List[Dict]:
    """One point per quality: mean bpp of the compressed crop and the unsplit model's accuracy on it (top-1/top-5,
    or mIoU/pixel accuracy for segmentation: the task's ``scores``), and ``per_image``: each image's bytes and
    figures in the order of ``items`` (as :func:`shared.evaluation.evaluate_ladder` gives them, for intervals)."""
    spec = model.spec
    task = get_task(spec)
    pre = spec.preprocess
    n_pix = pre.input_size[0] * pre.input_size[1]
    require_codec(codec)
    qualities = list(qualities or CODECS[codec][1])
    labels = task.item_labels(items, pre)
    crops = [input_crop(load_image(p), pre) for p, _ in items]
    points = []
    for q in tqdm(qualities, desc=f"{codec} sweep", disable=not progress, unit="quality"):
        sizes, scores = [], task.scores(spec.num_classes)
        for i in range(0, len(crops), batch_size):
            decoded = [codec_roundtrip(img, codec, q) for img in crops[i : i + batch_size]]
            sizes += [n for _, n in decoded]
            x = torch.stack([to_model_input(img, pre) for img, _ in decoded])
            scores.add(model(x), torch.stack(labels[i : i + batch_size]))
        pt = {"method": codec, "setting": f"q={q}", "quality": q, "bpp": 8.0 * sum(sizes) / n_pix / len(crops),
              "n_images": len(crops), **scores.result(), "per_image": {"bytes": sizes, **scores.per_image()}}
        points.append(pt)
    return points

