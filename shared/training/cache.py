"""Cache what is frozen: the head's output and the teacher's logits for several augmented views.

The backbone never changes, so for each training image and augmentation the split feature and the
teacher's output are fixed. Computing them once turns every later step into bottleneck + tail
work only, which is what makes ladder training feasible on a 2-core CPU.

What is kept of the teacher's output and of the labels is the task's choice (``Task.cache_output``,
``Task.cache_labels``): classification keeps the logits and class indexes as they are; segmentation keeps the
per-pixel logits average-pooled to 1/``DENSE_STRIDE`` of the input (full size would be 11x360x480 values per
view for CamVid; the objective pools the student's logits the same way), and the masks (uint8, full size) when
the items have them, else -1 per view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data import Item
from ..models.split import SplitModel
from ..tasks import get_task
from ..tasks.segmentation import DENSE_STRIDE

__all__ = ["FeatureCache", "build_cache", "DENSE_STRIDE"]


class FeatureCache(Dataset):
    """(feature fp16, teacher output fp16, label) triples, one per (image, view); for segmentation the label is
    a uint8 mask and the teacher output is pooled (see the module's note)."""

    def __init__(self, features: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, input_hw,
                 targets: Optional[Dict[str, torch.Tensor]] = None):
        self.features, self.teacher, self.labels = features, teacher, labels
        self.input_hw = tuple(int(v) for v in input_hw)
        # teacher activations at later stages of the tail (view store only): the tail-feature loss's targets
        self.targets: Dict[str, torch.Tensor] = dict(targets or {})

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i):
        return self.features[i].float(), self.teacher[i].float(), self.labels[i]

    def to(self, device: str) -> "FeatureCache":
        """Move the cache (fp16) to ``device``; on a GPU this removes every host-to-device copy."""
        return FeatureCache(self.features.to(device), self.teacher.to(device), self.labels.to(device), self.input_hw,
                            {k: v.to(device) for k, v in self.targets.items()})

    def batch(self, idx: torch.Tensor, device: str):
        idx = idx.to(self.features.device)
        return (self.features[idx].to(device).float(), self.teacher[idx].to(device).float(),
                self.labels[idx].to(device))

    def target_batch(self, idx: torch.Tensor, device: str) -> Dict[str, torch.Tensor]:
        idx = idx.to(self.features.device)
        return {k: v[idx].to(device).float() for k, v in self.targets.items()}

    def target_stats(self) -> Dict[str, torch.Tensor]:
        """Per-channel variance (1, C, ...) of each target (first 512 samples): the tail-feature loss divides by
        it, so every stage weighs the same whatever its scale."""
        out = {}
        for k, v in self.targets.items():
            t = v[: min(len(self), 512)].float()
            dims = [0] + list(range(2, t.dim()))
            out[k] = t.var(dim=dims, keepdim=True).clamp_min(1e-6)
        return out

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
    spec = model.spec
    task = get_task(spec)
    ds = task.make_dataset(items, spec.preprocess, train=True)
    keep_masks = any(isinstance(lab, Path) for _, lab in items)  # label-free runs need no masks
    feats, teach, labels = [], [], []
    total = len(ds) * views
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for _ in range(views):
            for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers):
                x = x.to(device)
                f = model.head(x)
                t = task.cache_output(model.tail(f, x), x.shape[-2:])
                y = task.cache_labels(y, keep_masks)
                feats.append(f.half().cpu())
                teach.append(t.half().cpu())
                labels.append(y)
                bar.update(len(x))
    cache = FeatureCache(torch.cat(feats), torch.cat(teach), torch.cat(labels), model.spec.preprocess.input_size)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        cache.save(Path(path))
    return cache
