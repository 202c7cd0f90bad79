"""Cache what is frozen: the head's output and the teacher's logits for several augmented views.

The backbone never changes, so for each training image and augmentation the split feature and the
teacher's output are fixed. Computing them once turns every later step into bottleneck + tail
work only, which is what makes ladder training feasible on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data import ImageDataset, Item, train_transform
from ..models.split import SplitModel

__all__ = ["FeatureCache", "build_cache"]


class FeatureCache(Dataset):
    """(feature fp16, teacher output fp16, label) triples, one per (image, view)."""

    def __init__(self, features: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, input_hw):
        self.features, self.teacher, self.labels = features, teacher, labels
        self.input_hw = tuple(int(v) for v in input_hw)

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i):
        return self.features[i].float(), self.teacher[i].float(), self.labels[i]

    def to(self, device: str) -> "FeatureCache":
        """Move the cache (fp16) to ``device``; on a GPU this removes every host-to-device copy."""
        return FeatureCache(self.features.to(device), self.teacher.to(device), self.labels.to(device), self.input_hw)

    def batch(self, idx: torch.Tensor, device: str):
        idx = idx.to(self.features.device)
        return (self.features[idx].to(device).float(), self.teacher[idx].to(device).float(),
                self.labels[idx].to(device))

    def save(self, path: Path) -> None:
        save_file(
            {"features": self.features, "teacher": self.teacher, "labels": self.labels,
             "input_hw": torch.tensor(self.input_hw)},
            str(path),
        )

    @classmethod
    def load(cls, path: Path) -> "FeatureCache":
        d = load_file(str(path))
        return cls(d["features"], d["teacher"], d["labels"], d["input_hw"].tolist())

    def feature_stats(self):
        """Per-channel mean and variance (1, C, 1, 1) of the split feature (first 512 samples)."""
        f = self.features[: min(len(self), 512)].float()
        return f.mean(dim=(0, 2, 3), keepdim=True), f.var(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)


@torch.no_grad()
def build_cache(
    model: SplitModel,
    items: Sequence[Item],
    views: int,
    batch_size: int = 32,
    device: str = "cpu",
    seed: int = 0,
    workers: int = 0,
    path: Optional[Path] = None,
    desc: str = "caching head features",
) -> FeatureCache:
    if path is not None and Path(path).is_file():
        return FeatureCache.load(Path(path))
    torch.manual_seed(seed)
    ds = ImageDataset(items, train_transform(model.spec.preprocess))
    feats, teach, labels = [], [], []
    total = len(ds) * views
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for _ in range(views):
            for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers):
                x = x.to(device)
                f = model.head(x)
                t = model.tail(f, x)
                feats.append(f.half().cpu())
                teach.append(t.half().cpu())
                labels.append(y)
                bar.update(len(x))
    cache = FeatureCache(torch.cat(feats), torch.cat(teach), torch.cat(labels), model.spec.preprocess.input_size)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        cache.save(Path(path))
    return cache
