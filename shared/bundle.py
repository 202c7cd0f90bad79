"""Bundles: one ladder of bottlenecks for one model and split point, never the backbone.

A bundle is a folder::

    manifest.json          model, split, preprocessing, codec config, rungs (lambda, measured bpp/accuracy),
                           training provenance, and the bundle id (a content hash)
    rung-00.safetensors    bottleneck + rate-model weights *with their entropy-coder tables*
    rung-01.safetensors    ...

Following CompressAI's "finish, then freeze" recipe, ``update()`` runs once at export and the CDF
tables travel in the weights; loading never recomputes them, so edge and cloud code with identical tables.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from .codec.config import BottleneckConfig

if TYPE_CHECKING:
    from .codec.bottleneck import Bottleneck

# torch (safetensors.torch, the Bottleneck) loads only where rung weights do: reading a manifest, picking a rung
# and checking ids stay torch-free for the edge runtime

__all__ = ["Rung", "Bundle", "save_bundle", "load_bundle", "select_rung", "BundleError", "FORMAT"]

FORMAT = "splitinfer-bundle/2"
LEGACY_FORMATS = ("splitinfer-bundle/1",)  # float hyper-decoder: loads only for migration/comparison


class BundleError(ValueError):
    """A bundle folder that is missing, malformed, or fails its integrity check."""


@dataclass
class Rung:
    index: int
    lam: float
    file: str
    sha256: str
    metrics: Dict = field(default_factory=dict)  # bpp, top1, top5, n_images ... measured on held-out images

    @property
    def bpp(self) -> Optional[float]:
        return self.metrics.get("bpp")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundle_id(model: str, split: str, config: Dict, rung_hashes: Sequence[str]) -> str:
    key = json.dumps({"model": model, "split": split, "config": config, "rungs": list(rung_hashes)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Bundle:
    root: Path
    manifest: Dict
    config: BottleneckConfig
    rungs: List[Rung]

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def split(self) -> str:
        return self.manifest["split"]

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def id_bytes(self) -> bytes:
        return bytes.fromhex(self.bundle_id)[:4]

    def load_rung(self, index: int, device: str = "cpu") -> "Bottleneck":
        if not 0 <= index < len(self.rungs):
            raise BundleError(f"bundle {self.bundle_id} has rungs 0..{len(self.rungs) - 1}, not {index}")
        rung = self.rungs[index]
        path = self.root / rung.file
        if _sha256(path) != rung.sha256:
            raise BundleError(f"{path} does not match the hash in manifest.json (corrupted or replaced)")
        from safetensors.torch import load_file

        from .codec.bottleneck import Bottleneck

        net = Bottleneck(self.config)
        net.load_state_dict(load_file(str(path), device=device))
        return net.to(device).eval()

    def select(self, bitrate_bpp: Optional[float]) -> int:
        return select_rung(self.rungs, bitrate_bpp)

    def check_backbone(self, model, parts: Sequence[str] = ("head", "tail")) -> None:
        """Refuse backbone weights other than those the ladder was trained against: its bottlenecks fit one
        head's features and one tail's expectations (e.g. a re-trained segmentation teacher does not fit).
        ``backbone_weights`` is recorded by ``splitinfer train``; bundles without it are not checked."""
        want = self.manifest.get("backbone_weights") or {}
        if not want:
            return
        have = model.fingerprints()
        bad = [p for p in parts if p in want and want[p] != have[p]]
        if bad:
            raise BundleError(
                f"bundle {self.bundle_id} was trained against other {self.model} weights than the ones loaded "
                f"({', '.join(f'{p}: trained {want[p]}, loaded {have[p]}' for p in bad)}); its rates and accuracy "
                "hold only with those weights. Load the weights it was trained with (--weights, or the model's "
                "default location), or train a ladder for these weights with `splitinfer train`."
            )


def select_rung(rungs: Sequence[Rung], bitrate_bpp: Optional[float]) -> int:
    """The one rule that maps a bitrate hint to a rung, shared by edge and cloud.

    Picks the most accurate rung whose measured bpp fits the hint; if none fits, the cheapest rung.
    No hint means the top rung. Rungs are ordered from highest to lowest rate, so an unmeasured
    rung counts as costlier than every rung below it.
    """
    if bitrate_bpp is None:
        return 0
    if not bitrate_bpp > 0:
        raise ValueError(f"bitrate hint must be a positive bpp, got {bitrate_bpp}")
    fitting = [r.index for r in rungs if r.bpp is not None and r.bpp <= bitrate_bpp]
    return min(fitting) if fitting else len(rungs) - 1


def save_bundle(
    root: Path | str,
    model: str,
    split: str,
    config: BottleneckConfig,
    nets: Sequence["Bottleneck"],
    lambdas: Sequence[float],
    metrics: Optional[Sequence[Dict]] = None,
    extra: Optional[Dict] = None,
    sort: bool = True,
    transforms_dtype: str = "float32",
) -> Bundle:
    """Freeze (``update()``) and write every rung. Rungs are sorted from highest to lowest lambda,
    or kept in the order given with ``sort=False`` (rung 0 must be the highest rate).

    ``transforms_dtype="float16"`` stores the weights of ``g_a`` and ``g_s`` (most of a deep split's rung) in
    half precision; loading casts them back to float32. Edge and cloud read the same rounded weights, and
    the entropy model, its tables and the integer ``h_s`` stay exact, so decoding stays bit-exact; the
    rounding moves accuracy a little, so a ladder exported this way is measured again."""
    from safetensors.torch import save_file

    if transforms_dtype not in ("float32", "float16"):
        raise ValueError(f"transforms_dtype must be float32 or float16, not {transforms_dtype!r}")
    half = transforms_dtype == "float16"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    metrics = list(metrics) if metrics is not None else [{} for _ in nets]
    order = sorted(range(len(nets)), key=lambda i: -lambdas[i]) if sort else list(range(len(nets)))
    rungs: List[Rung] = []
    for idx, i in enumerate(order):
        net = nets[i].to("cpu").eval()
        net.update(force=True)
        fname = f"rung-{idx:02d}.safetensors"
        state = {k: (v.half() if half and k.split(".")[0] in ("g_a", "g_s") and v.is_floating_point() else v)
                 .detach().contiguous().clone() for k, v in net.state_dict().items()}
        # one metadata entry: safetensors writes its metadata map in arbitrary order, and two keys would
        # make the same weights hash differently from one export to the next (the bundle id would drift)
        meta = json.dumps({"format": FORMAT, "lambda": float(lambdas[i])}, sort_keys=True)
        save_file(state, str(root / fname), metadata={"splitinfer": meta})
        os.chmod(root / fname, 0o644)  # safetensors writes 0600; bundles are read by other users (containers)
        rungs.append(Rung(idx, float(lambdas[i]), fname, _sha256(root / fname), dict(metrics[i])))
    cfg = config.to_dict()
    manifest = {
        "format": FORMAT,
        "bundle_id": _bundle_id(model, split, cfg, [r.sha256 for r in rungs]),
        "model": model,
        "split": split,
        "config": cfg,
        "rungs": [r.__dict__ for r in rungs],
        **(extra or {}),
        **({"transforms_dtype": transforms_dtype} if half else {}),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return load_bundle(root, allow_float_hyper=True)


def update_metrics(bundle: Bundle, metrics: Sequence[Dict], extra: Optional[Dict] = None) -> Bundle:
    """Record measured metrics per rung (does not change weights or the bundle id)."""
    m = dict(bundle.manifest)
    for r, new in zip(m["rungs"], metrics):
        r["metrics"] = {**r.get("metrics", {}), **new}
    m.update(extra or {})
    (bundle.root / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    return load_bundle(bundle.root, allow_float_hyper=True)


def load_bundle(root: Path | str, allow_float_hyper: bool = False) -> Bundle:
    """Read and check a bundle. A hyperprior ladder whose ``h_s`` runs in floating point (every
    ``splitinfer-bundle/1``) decodes correctly only where the edge's arithmetic matches the cloud's,
    so it is refused unless ``allow_float_hyper`` (migration, comparisons); ``splitinfer migrate``
    converts it."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise BundleError(f"no manifest.json in {root}: not a splitinfer bundle")
    try:
        m = json.loads(path.read_text())
        fmt = m.get("format")
        if fmt not in (FORMAT, *LEGACY_FORMATS):
            raise BundleError(f"{path}: format {fmt!r}, expected {FORMAT!r}")
        cfg = dict(m["config"])
        if fmt in LEGACY_FORMATS:
            cfg.setdefault("hyper_decoder", "float")
        config = BottleneckConfig.from_dict(cfg)
        rungs = [Rung(**r) for r in m["rungs"]]
        model, split, bid = m["model"], m["split"], m["bundle_id"]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{path} is malformed: {e}") from e
    if bid != _bundle_id(model, split, m["config"], [r.sha256 for r in rungs]):
        raise BundleError(f"{path}: bundle_id does not match its content")
    if not rungs:
        raise BundleError(f"{path}: no rungs")
    if config.rate_model == "hyperprior" and config.hyper_decoder == "float" and not allow_float_hyper:
        raise BundleError(
            f"{root} uses a floating-point hyper-decoder ({fmt}): its bitstreams decode correctly only on "
            f"devices with the same arithmetic as the encoder. Convert it to the bit-exact integer "
            f"hyper-decoder with: splitinfer migrate --bundle {root} --data IMAGES --out NEW_BUNDLE"
        )
    return Bundle(root, m, config, rungs)



DEFAULT_BUNDLE = "efficientnet_lite0-block1"
# served together when no bundle is named: the shallow ladder (edge runs 13% of the FLOPs) and the deep one (87%)
EMBEDDED_BUNDLES = (DEFAULT_BUNDLE, "efficientnet_lite0-block14")


def default_bundle_path() -> Path:
    """The ladder embedded in the package (used when no bundle is named)."""
    from importlib import resources

    return Path(str(resources.files("shared").joinpath("assets", "bundles", DEFAULT_BUNDLE)))


def embedded_bundle_paths() -> List[Path]:
    """Every ladder embedded in the package, shallow first (``splitinfer serve`` and ``demo`` with no bundle)."""
    root = default_bundle_path().parent
    return [root / name for name in EMBEDDED_BUNDLES if (root / name / "manifest.json").is_file()]


def resolve_bundle(bundle: "Bundle | Path | str | None") -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    return load_bundle(default_bundle_path() if bundle is None else bundle)


def merge_bundles(root: Path | str, picks: Sequence[tuple], extra: Optional[Dict] = None,
                  transforms_dtype: Optional[str] = None) -> Bundle:
    """Assemble a ladder from rungs of compatible bundles (same model, split and codec config).

    ``picks``: ``(bundle, rung_index)`` pairs. A ladder is one bottleneck per operating point, so rungs
    trained in different runs (e.g. a feature-distillation stage and a logit-distillation stage) can
    share a ladder; each rung keeps its source bundle id and training record. Rungs are ordered by
    measured bpp (highest first). Rungs are re-exported (their CDF tables rebuilt), so the merged
    ladder must be measured again. ``transforms_dtype``: see :func:`save_bundle` (default: the first source's).
    """
    root = Path(root)
    if not picks:
        raise BundleError("nothing to merge")
    first = picks[0][0]
    for b, _ in picks:
        if b.manifest.get("backbone_weights") != first.manifest.get("backbone_weights"):
            raise BundleError(f"bundle {b.bundle_id} was trained against other backbone weights than {first.bundle_id}")
        if (b.model, b.split, b.config) != (first.model, first.split, first.config):
            raise BundleError(f"bundle {b.bundle_id} is not compatible with {first.bundle_id} (model/split/config)")
    chosen = sorted(picks, key=lambda p: -(p[0].rungs[p[1]].bpp or float("inf")))
    # re-export: weights kept, tables rebuilt by this version's update() (e.g. a new scale table)
    nets = [b.load_rung(i) for b, i in chosen]
    metrics = [{"source": {"bundle_id": b.bundle_id, "rung": i, "metrics": b.rungs[i].metrics,
                           "training": b.manifest.get("training", {})}} for b, i in chosen]
    keep = {k: v for k, v in first.manifest.items()
            if k not in ("format", "bundle_id", "model", "split", "rungs", "training", "config", "evaluation",
                         "transforms_dtype")}
    extra = {**keep, "training": {"merged_from": sorted({b.bundle_id for b, _ in picks})}, **(extra or {})}
    return save_bundle(root, first.model, first.split, first.config, nets,
                       [b.rungs[i].lam for b, i in chosen], metrics, extra, sort=False,
                       transforms_dtype=transforms_dtype or first.manifest.get("transforms_dtype", "float32"))
