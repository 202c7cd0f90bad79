"""Image-codec baselines: compress the network's input crop, decode it, run the whole model in the cloud.

The fair comparison for split inference: the same images, the same model, the same crop (so the
same number of pixels), and bpp = 8 x bytes / pixels of that crop.
"""

from __future__ import annotations

import io
from typing import Callable, Dict, List, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from .data import Item, input_crop, load_image, to_model_input
from .models.split import SplitModel

__all__ = ["CODECS", "codec_roundtrip", "evaluate_codec"]

# PIL format name and the quality sweep used by default (low to high)
CODECS: Dict[str, tuple] = {
    "jpeg": ("JPEG", (5, 10, 20, 30, 50, 75, 90)),
    "webp": ("WEBP", (1, 5, 10, 20, 35, 50, 75, 90)),
    "avif": ("AVIF", (5, 15, 25, 40, 55, 70, 85)),
}


def codec_roundtrip(img: Image.Image, codec: str, quality: int) -> tuple[Image.Image, int]:
    fmt, _ = CODECS[codec]
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality)
    n = buf.tell()
    buf.seek(0)
    return Image.open(buf).convert("RGB"), n


@torch.no_grad()
def evaluate_codec(
    model: SplitModel,
    items: Sequence[Item],
    codec: str,
    qualities: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> List[Dict]:
    """One point per quality: mean bpp of the compressed crop and top-1/top-5 of the unsplit model on it."""
    pre = model.spec.preprocess
    n_pix = pre.input_size[0] * pre.input_size[1]
    qualities = list(qualities or CODECS[codec][1])
    crops = [(input_crop(load_image(p), pre), y) for p, y in items]
    points = []
    for q in tqdm(qualities, desc=f"{codec} sweep", disable=not progress, unit="quality"):
        total_bytes, top1, top5, n_lab = 0, 0, 0, 0
        for i in range(0, len(crops), batch_size):
            chunk = crops[i : i + batch_size]
            decoded = [codec_roundtrip(img, codec, q) for img, _ in chunk]
            total_bytes += sum(n for _, n in decoded)
            x = torch.stack([to_model_input(img, pre) for img, _ in decoded])
            y = torch.tensor([-1 if lab is None else lab for _, lab in chunk])
            logits = model(x)
            logits = logits["out"] if isinstance(logits, dict) else logits
            lab = y >= 0
            top = logits.topk(5, dim=1).indices
            top1 += int((top[lab, 0] == y[lab]).sum())
            top5 += int((top[lab] == y[lab, None]).any(1).sum())
            n_lab += int(lab.sum())
        pt = {"method": codec, "setting": f"q={q}", "quality": q, "bpp": 8.0 * total_bytes / n_pix / len(crops),
              "n_images": len(crops)}
        if n_lab:
            pt.update(top1=top1 / n_lab, top5=top5 / n_lab)
        points.append(pt)
    return points


CodecFn = Callable[[Image.Image, int], tuple]
