"""Copy the training images of ../shared/data into .gpu/data, shrunk (shorter side 256, JPEG q90),
so that a GPU machine without ../shared can train a ladder. Held-out images never leave."""

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.data import is_heldout, scan_images  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "shared" / "data"
DST = Path(__file__).resolve().parents[1] / ".gpu" / "data"


def shrink(src: Path, dst: Path, side: int = 256, keep_name: bool = False) -> None:
    im = Image.open(src).convert("RGB")
    s = side / min(im.size)
    if s < 1:
        im = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # keep_name: the held-out rule reads the file name, so labelled images keep theirs exactly
    im.save(dst if keep_name else dst.with_suffix(".jpg"), format="JPEG", quality=90)


def main() -> None:
    # labelled ImageNet val: only the part the held-out rule leaves for training
    for p, _ in scan_images(SRC / "imagenet_val"):
        if not is_heldout(p):
            shrink(p, DST / "imagenet_val_train" / p.name, keep_name=True)
    # unlabelled extra images: never used for evaluation of the classification ladder
    for sub in ["imagenet_sample100_fullres/images", "kodak", "camvid/train", "camvid/val"]:
        for p, _ in scan_images(SRC / sub, labels=False):
            shrink(p, DST / "extra" / sub.replace("/", "_") / p.name)
    n = sum(1 for f in DST.rglob("*") if f.is_file())
    print(f"{n} images in {DST}")


if __name__ == "__main__":
    main()
