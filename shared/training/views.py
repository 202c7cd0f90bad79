"""A view store: many consistent views of many images, computed once and reused by every rung and run.

"A good teacher is patient and consistent" (Beyer et al., CVPR 2022): teacher and student must see the *same*
augmented view, and as many different views as possible. On a GPU that means running the frozen parts on the
fly; on a 2-core CPU a full forward pass costs ~40 ms per view, so a training step (a few ms at a deep split)
would wait on it. The store runs that pass once per view and keeps, per view, every tensor any split's
training reads from the frozen network:

- the output of each *tap* module (``BackboneSpec.feature_taps``): the split features of the shallow and deep
  splits, and the later stages the tail-feature loss matches (Entropic Student stage 1, Matsubara et al. 2022);
- the teacher's logits, the image's index and label (-1 when unlabelled), and whether the view is a CutMix
  of two images (``mix`` rounds; the teacher scores the mixed image, so the target stays consistent).

Views come in *rounds*: round r holds one view of every image, drawn with a seed fixed by (seed, r), as one
safetensors file (fp16). Rounds are built one at a time, so an interrupted build resumes at its next round,
and a later run that asks for more rounds extends the store. A run selects images, rounds and taps; nothing
else is recomputed. Classification only; segmentation trains from ``cache.build_cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data import Item, load_image, train_transform
from ..models.split import SplitModel
from ..tasks import get_task
from .cache import FeatureCache

__all__ = ["ViewStore", "capture", "tap_modules", "build_view_store", "open_view_store", "tail_taps", "STORE_VERSION"]

STORE_VERSION = 1
LOGITS = "logits"


@contextmanager
def capture(modules: Dict[str, torch.nn.Module]) -> Iterator[Dict[str, torch.Tensor]]:
    """Collect the outputs of ``modules`` (name -> module) during the forward passes run inside the block.
    Head and tail GraphModules share the backbone's modules, so one hook serves both."""
    acts: Dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: acts.__setitem__(name, out))
               for name, m in modules.items()]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def tap_modules(model: SplitModel, names: Sequence[str]) -> Dict[str, torch.nn.Module]:
    out = {}
    for n in names:
        for part in (model.head, model.tail):
            try:
                out[n] = part.get_submodule(n)
                break
            except AttributeError:
                continue
        else:
            raise KeyError(f"{model.spec.name}: no module {n!r} in the head or the tail")
    return out


def backbone_fingerprint(model: SplitModel) -> str:
    """A hash of the whole backbone's weights, the same at every split (head and tail keep the original names)."""
    from ..models.split import weights_fingerprint

    whole = torch.nn.Module()
    for i, (name, t) in enumerate(sorted({**model.head.state_dict(), **model.tail.state_dict()}.items())):
        whole.register_buffer(f"b{i}", t)  # names and order fixed by the sort
    return weights_fingerprint(whole) + f"-{len(whole._buffers)}"


def tail_taps(model: SplitModel) -> List[str]:
    """The spec's feature taps that run in the tail (after the split): what the tail-feature loss matches."""
    called = {n.target for n in model.tail.graph.nodes if n.op == "call_module"}
    return [t for t in model.spec.feature_taps if t in called and t != model.split.node]


def _store_taps(model: SplitModel) -> List[str]:
    taps = list(model.spec.feature_taps)
    return taps if model.split.node in taps else [model.split.node] + taps


class _Views(Dataset):
    """One view of every image (and, in a mix round, of its CutMix partner)."""

    def __init__(self, items: Sequence[Item], transform, partner: Optional[torch.Tensor]):
        self.items, self.transform, self.partner = list(items), transform, partner

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        p, y = self.items[i]
        x = self.transform(load_image(p))
        label = -1 if y is None or int(y) < 0 else int(y)
        if self.partner is None:
            return x, x, i, label
        return x, self.transform(load_image(self.items[int(self.partner[i])][0])), i, label


def _cutmix(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CutMix (Yun et al. 2019): paste a box of ``b`` into ``a``; area share ~ U(0, 1), one box per image."""
    out = a.clone()
    n, _, h, w = a.shape
    lam = torch.rand(n, generator=gen)
    for k in range(n):
        bh, bw = int(h * (1 - lam[k]).sqrt()), int(w * (1 - lam[k]).sqrt())
        cy, cx = int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen))
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        out[k, :, y0:y1, x0:x1] = b[k, :, y0:y1, x0:x1]
    return out


class ViewStore:
    """A folder: ``meta.json`` and one ``round-NNN.safetensors`` per round of views."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.meta = json.loads((self.root / "meta.json").read_text())
        self.images: List[str] = self.meta["images"]
        self.taps: List[str] = self.meta["taps"]

    def _round_path(self, r: int) -> Path:
        return self.root / f"round-{r:03d}.safetensors"

    def rounds(self, kind: str = "plain") -> List[int]:
        return [r for r, k in enumerate(self.meta["rounds"]) if k == kind and self._round_path(r).is_file()]

    def select(self, split_tap: str, targets: Sequence[str], images: Sequence[str], plain: int, mix: int = 0,
               labelled_only: bool = False) -> FeatureCache:
        """The training set of one run: ``plain`` + ``mix`` rounds of views of ``images`` (paths as stored),
        the split feature, the teacher's logits and the ``targets`` taps."""
        have_plain, have_mix = self.rounds("plain"), self.rounds("mix")
        if plain > len(have_plain) or mix > len(have_mix):
            raise ValueError(f"{self.root}: {len(have_plain)} plain and {len(have_mix)} mix rounds built, "
                             f"{plain} and {mix} asked for")
        index = {p: i for i, p in enumerate(self.images)}
        missing = [p for p in images if p not in index]
        if missing:
            raise ValueError(f"{self.root}: {len(missing)} images are not in this view store (e.g. {missing[0]})")
        keep = torch.zeros(len(self.images), dtype=torch.bool)
        keep[[index[p] for p in images]] = True
        parts: Dict[str, List[torch.Tensor]] = {}
        for r in tqdm(have_plain[:plain] + have_mix[:mix], desc="loading views", unit="round", mininterval=5.0):
            with safe_open(str(self._round_path(r)), framework="pt") as f:
                img = f.get_tensor("image").long()
                rows = keep[img]
                if labelled_only:
                    rows &= f.get_tensor("label") >= 0
                for key in [split_tap, LOGITS, "label", *targets]:
                    parts.setdefault(key, []).append(f.get_tensor(key)[rows])
        cat = {k: torch.cat(v) for k, v in parts.items()}
        return FeatureCache(cat.pop(split_tap), cat.pop(LOGITS), cat.pop("label"), self.meta["input_hw"],
                            targets={t: cat[t] for t in targets})


def _store_key(model: SplitModel, images: Sequence[str], seed: int, min_scale: float) -> str:
    h = hashlib.sha256(json.dumps([model.spec.name, backbone_fingerprint(model), sorted(model.spec.feature_taps),
                                   sorted(images), seed,
                                   min_scale, STORE_VERSION]).encode())
    return h.hexdigest()[:12]


def open_view_store(cache_dir: Path, model: SplitModel, images: Sequence[str], seed: int = 0) -> Optional[ViewStore]:
    """An existing store in ``cache_dir`` for this model and weights that holds every image and tap asked for
    (a larger store serves a subset: ablations on fewer images reuse the views of the full run)."""
    want, taps = set(images), set(_store_taps(model)) | set(tail_taps(model))
    for meta in sorted(Path(cache_dir).glob("views-*/meta.json")):
        m = json.loads(meta.read_text())
        if (m.get("version") == STORE_VERSION and m["model"] == model.spec.name and m["seed"] == seed
                and m["backbone_weights"] == backbone_fingerprint(model) and taps <= set(m["taps"])
                and want <= set(m["images"])):
            return ViewStore(meta.parent)
    return None


@torch.no_grad()
def build_view_store(model: SplitModel, items: Sequence[Item], cache_dir: Path, plain: int, mix: int = 0,
                     seed: int = 0, batch_size: int = 64, min_scale: float = 0.25, workers: int = 0,
                     progress: bool = True, deadline: Optional[float] = None) -> ViewStore:
    """Build (or extend, or reuse) the store for ``items`` with at least ``plain`` + ``mix`` rounds.
    ``deadline``: a ``time.monotonic()`` value by which the build ends (the caller's time budget): no round starts
    after it, nor one that would end after it at the speed of the round before."""
    import time

    if not get_task(model.spec).view_store:
        raise ValueError("the view store holds classification views; segmentation uses build_cache")
    images = [str(p) for p, _ in items]
    store = open_view_store(cache_dir, model, images, seed)
    if store is None:
        root = Path(cache_dir) / f"views-{_store_key(model, images, seed, min_scale)}"
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "meta.json").is_file():
            meta = {"version": STORE_VERSION, "model": model.spec.name, "backbone_weights": backbone_fingerprint(model),
                    "taps": _store_taps(model), "images": images,
                    "labels": [-1 if y is None or int(y) < 0 else int(y) for _, y in items],
                    "input_hw": list(model.spec.preprocess.input_size), "seed": seed, "min_scale": min_scale,
                    "rounds": [], "augment": f"RandomResizedCrop(scale=({min_scale}, 1)), flip; mix rounds: CutMix"}
            (root / "meta.json").write_text(json.dumps(meta))
        store = ViewStore(root)
    items = [(Path(p), y) for p, y in zip(store.images, store.meta["labels"])]
    todo = max(plain - len(store.rounds("plain")), 0), max(mix - len(store.rounds("mix")), 0)
    split_tap = model.split.node  # the head's output; the other taps are hooked (modules called as such)
    mods = tap_modules(model, [t for t in store.taps if t != split_tap])
    transform = train_transform(model.spec.preprocess, store.meta["min_scale"])
    last = 0.0  # seconds the last round took: a round that would end past the deadline is not started
    for kind, count in (("plain", todo[0]), ("mix", todo[1])):
        for _ in range(count):
            if deadline is not None and time.monotonic() + last > deadline:
                return store
            started = time.monotonic()
            r = len(store.meta["rounds"])
            gen = torch.Generator().manual_seed(store.meta["seed"] * 100_003 + r)
            torch.manual_seed(store.meta["seed"] * 100_003 + r)  # the transforms draw from the global generator
            partner = torch.randperm(len(items), generator=gen) if kind == "mix" else None
            loader = DataLoader(_Views(items, transform, partner), batch_size=batch_size, num_workers=workers)
            out: Dict[str, List[torch.Tensor]] = {}
            bar = tqdm(total=len(items), desc=f"view round {r} ({kind})", unit="view", disable=not progress,
                       mininterval=5.0)
            for a, b, idx, label in loader:
                x = _cutmix(a, b, gen) if kind == "mix" else a
                x = x.contiguous(memory_format=torch.channels_last)  # ~1.7x faster on a CPU
                with capture(mods) as acts:
                    acts[split_tap] = model.head(x)
                    logits = model.tail(acts[split_tap], x)
                for name in store.taps:
                    out.setdefault(name, []).append(acts[name].contiguous().half())
                out.setdefault(LOGITS, []).append(logits.half())
                out.setdefault("image", []).append(idx.int())
                out.setdefault("label", []).append(label.long())
                bar.update(len(idx))
            bar.close()
            tensors = {k: torch.cat(v).contiguous() for k, v in out.items()}
            tensors["mixed"] = torch.full((len(items),), int(kind == "mix"), dtype=torch.uint8)
            tmp = store._round_path(r).with_suffix(".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, store._round_path(r))
            store.meta["rounds"].append(kind)
            (store.root / "meta.json").write_text(json.dumps(store.meta))
            last = time.monotonic() - started
    return store
