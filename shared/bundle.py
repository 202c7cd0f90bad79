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
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .codec.config import BottleneckConfig
from .errors import UserError
from .rate.scheme import RateScheme, scheme_of, select_rung

if TYPE_CHECKING:
    from .codec.bottleneck import Bottleneck
    from .models.split import SplitModel

# torch (safetensors.torch, the Bottleneck) loads only where rung weights do: reading a manifest, picking a rung
# and checking ids stay torch-free for the edge runtime

__all__ = ["Rung", "Bundle", "Manifest", "save_bundle", "load_bundle", "select_rung", "record_measurement", "BundleError", "FORMAT",
           "feature_stride", "split_fields"]

FORMAT = "splitinfer-bundle/2"
LEGACY_FORMATS = ("splitinfer-bundle/1",)  # float hyper-decoder: loads only for migration/comparison


class BundleError(UserError):
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


# ------------------------------------------------------------------------------------------------ manifest
def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _ints(v: Any, n: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(_is_int(x) and x > 0 for x in v)


@dataclass
class Manifest:
    """``manifest.json``, typed. Written by :func:`save_bundle`, checked field by field on load: a bad field is a
    one-line :class:`BundleError` naming it. Keys this version does not know are kept (``extra``) and written
    back unchanged, so a newer bundle still loads; ``variable_rate`` (variable-rate bundles) is passed through
    untouched."""

    format: str
    bundle_id: str
    model: str  # the backbone's registry name (shared.models)
    split: str
    config: Dict  # BottleneckConfig.to_dict()
    rungs: List[Dict]  # Rung fields
    task: str = "classification"  # bundles from before segmentation record none
    feature_shape: Optional[Tuple[int, int, int]] = None  # (C, H, W) of the split feature at the input size
    feature_stride: Optional[int] = None  # s with ceil(input / s) == feature on both axes
    preprocess: Dict = field(default_factory=dict)  # input_size [H, W], resize, mean, std
    backbone_weights: Dict[str, str] = field(default_factory=dict)  # {"head": fingerprint, "tail": fingerprint}
    transforms_dtype: str = "float32"  # g_a/g_s weights as stored (float16 halves a deep rung)
    training: Dict = field(default_factory=dict)  # provenance: recipe, data, command, ...
    evaluation: Dict = field(default_factory=dict)  # where the rungs' metrics were measured, the unsplit reference
    variable_rate: Optional[Dict] = None  # variable-rate bundles: {"levels": [lo, hi], "curve": [...]}, untouched
    verdict: Optional[Dict] = None  # {"judged", "weak", "reason", ...}: shared.training.verdict, written by train
    extra: Dict = field(default_factory=dict)  # any other key, as written

    @classmethod
    def parse(cls, m: Any, where: str = "manifest.json") -> "Manifest":
        """Check every known field of the dict ``m``; ``where`` names the file in the error."""

        def need(name: str, ok: bool, want: str) -> None:
            if not ok:
                raise BundleError(f"{where}: field {name!r} must be {want}, got {_short(value)}")

        if not isinstance(m, dict):
            raise BundleError(f"{where}: must hold a JSON object, got {_short(m)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        for name in ("format", "bundle_id", "model", "split", "config", "rungs"):
            if name not in m:
                raise BundleError(f"{where}: field {name!r} is missing")
        for name in known & set(m):
            value = m[name]
            if name in ("format", "model", "split", "task"):
                need(name, isinstance(value, str) and value != "", "a non-empty string")
            elif name == "bundle_id":
                need(name, isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value),
                     "16 hex digits")
            elif name in ("config", "preprocess", "training", "evaluation"):
                need(name, isinstance(value, dict), "an object")
            elif name in ("variable_rate", "verdict"):
                need(name, value is None or isinstance(value, dict), "an object")
            elif name == "rungs":
                need(name, isinstance(value, list) and len(value) > 0, "a non-empty list")
            elif name == "feature_shape":
                need(name, value is None or _ints(value, 3), "[C, H, W] (positive integers)")
            elif name == "feature_stride":
                need(name, value is None or (_is_int(value) and value > 0), "a positive integer")
            elif name == "backbone_weights":
                need(name, value is None or (isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items())), "{part: fingerprint}")
            elif name == "transforms_dtype":
                need(name, value in ("float32", "float16"), "'float32' or 'float16'")
        pre = m.get("preprocess") or {}
        for key, ok, want in (("input_size", lambda v: _ints(v, 2), "[H, W] (positive integers)"),
                              ("resize", lambda v: v is None or (_is_int(v) and v > 0), "a positive integer or null"),
                              ("mean", lambda v: isinstance(v, list) and len(v) == 3 and all(map(_is_num, v)),
                               "3 numbers"),
                              ("std", lambda v: isinstance(v, list) and len(v) == 3 and all(map(_is_num, v)),
                               "3 numbers")):
            if key in pre:
                value = pre[key]
                need(f"preprocess.{key}", ok(value), want)
        rung_fields = {f.name for f in fields(Rung)}
        for i, r in enumerate(m["rungs"]):
            value = r
            need(f"rungs[{i}]", isinstance(r, dict), "an object")
            unknown = sorted(set(r) - rung_fields)
            if unknown:
                raise BundleError(f"{where}: field 'rungs[{i}]' has unknown keys {unknown}")
            for key, ok, want in (("index", lambda v: _is_int(v) and v == i, f"{i} (rungs in order)"),
                                  ("lam", _is_num, "a number"), ("file", lambda v: isinstance(v, str) and v, "a file name"),
                                  ("sha256", lambda v: isinstance(v, str) and len(v) == 64, "64 hex digits"),
                                  ("metrics", lambda v: isinstance(v, dict), "an object")):
                if key not in r and key == "metrics":
                    continue
                if key not in r:
                    raise BundleError(f"{where}: field 'rungs[{i}].{key}' is missing")
                value = r[key]
                need(f"rungs[{i}].{key}", bool(ok(value)), want)
        typed = {k: m[k] for k in known & set(m) if m[k] is not None or k == "variable_rate"}
        if typed.get("feature_shape") is not None:
            typed["feature_shape"] = tuple(typed["feature_shape"])
        return cls(**typed, extra={k: v for k, v in m.items() if k not in known})


def feature_stride(input_hw: Sequence[int], feature_hw: Sequence[int]) -> int:
    """The stride s with ceil(input / s) == feature on both axes (the relation the bitstream checks):
    360x480 -> 23x30 is stride 16, which 360 // 23 is not."""
    for s in (1, 2, 4, 8, 16, 32, 64):
        if all(math.ceil(i / s) == f for i, f in zip(input_hw, feature_hw)):
            return s
    raise ValueError(f"a {feature_hw[0]}x{feature_hw[1]} feature of a {input_hw[0]}x{input_hw[1]} input has no "
                     "power-of-two stride with ceil rounding")


def split_fields(model: "SplitModel") -> Dict:
    """What a bundle records about the split model it was trained on, derived from the model itself: ``task``,
    ``feature_shape`` and ``feature_stride`` at the input size, ``preprocess`` and ``backbone_weights`` (the
    head's and the tail's fingerprints, which edge and cloud check: :meth:`Bundle.check_backbone`)."""
    pre = model.spec.preprocess
    c, fh, fw = (int(v) for v in model.feature_shape())
    return {
        "task": model.spec.task,
        "feature_shape": [c, fh, fw],
        "feature_stride": feature_stride(pre.input_size, (fh, fw)),
        "preprocess": {"input_size": [int(v) for v in pre.input_size], "resize": pre.resize, "mean": list(pre.mean),
                       "std": list(pre.std)},
        "backbone_weights": model.fingerprints(),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundle_id(model: str, split: str, config: Dict, rung_hashes: Sequence[str]) -> str:
    key = json.dumps({"model": model, "split": split, "config": config, "rungs": list(rung_hashes)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Bundle:
    root: Path
    manifest: Dict  # manifest.json as written (``meta``: the same, typed and checked)
    config: BottleneckConfig
    rungs: List[Rung]
    meta: Manifest = None  # type: ignore[assignment]  # parsed from ``manifest`` when not given

    def __post_init__(self) -> None:
        if self.meta is None:
            self.meta = Manifest.parse(self.manifest, str(self.root / "manifest.json"))

    @property
    def model(self) -> str:
        return self.meta.model

    backbone = model  # the backbone's registry name (shared.models.get_backbone)

    @property
    def split(self) -> str:
        return self.meta.split

    @property
    def bundle_id(self) -> str:
        return self.meta.bundle_id

    @property
    def id_bytes(self) -> bytes:
        return bytes.fromhex(self.bundle_id)[:4]

    @property
    def served_name(self) -> str:
        """The model name a server gives this bundle unless told otherwise: ``<backbone>-<split>``. Where a ladder
        and a variable-rate network of one split are served together, the variable-rate network keeps this name
        (it is the split's default model) and the ladder is ``<backbone>-<split>-ladder``
        (``cloud_server.repository.default_names``)."""
        return f"{self.model}-{self.split}"

    @property
    def task(self) -> str:
        return self.meta.task

    def _need(self, value, name: str):
        if value is None:
            raise BundleError(f"bundle {self.bundle_id} ({self.root}) records no {name}: re-export it with "
                              "save_bundle from its split model (splitinfer train / merge)")
        return value

    @property
    def input_size(self) -> Tuple[int, int]:
        """(H, W) of the network input the ladder was trained at; bpp counts these pixels."""
        h, w = self._need(self.meta.preprocess.get("input_size"), "preprocess.input_size")
        return int(h), int(w)

    @property
    def feature_stride(self) -> int:
        return int(self._need(self.meta.feature_stride, "feature_stride"))

    @property
    def feature_shape(self) -> Optional[Tuple[int, int, int]]:
        return self.meta.feature_shape

    @property
    def preprocess(self) -> Dict:
        return dict(self.meta.preprocess)

    @property
    def backbone_weights(self) -> Dict[str, str]:
        return dict(self.meta.backbone_weights)

    @property
    def transforms_dtype(self) -> str:
        return self.meta.transforms_dtype

    @property
    def training(self) -> Dict:
        return self.meta.training

    @property
    def evaluation(self) -> Dict:
        return self.meta.evaluation

    @property
    def reference(self) -> Dict:
        """The unsplit model's scores on the images the rungs were measured on ({} when unmeasured)."""
        return self.meta.evaluation.get("reference", {}) or {}

    @property
    def variable_rate(self) -> Optional[Dict]:
        return self.meta.variable_rate

    @property
    def verdict(self) -> Optional[Dict]:
        """What ``splitinfer train`` judged of the network on held-out images (None: trained before verdicts)."""
        return self.meta.verdict

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

    @property
    def scheme(self) -> RateScheme:
        """How this bundle turns a bitrate hint into an operating point (a ladder, or one variable-rate network)."""
        return scheme_of(self)

    def check_backbone(self, model, parts: Sequence[str] = ("head", "tail")) -> None:
        """Refuse backbone weights other than those the ladder was trained against: its bottlenecks fit one
        head's features and one tail's expectations (e.g. a re-trained segmentation teacher does not fit).
        ``backbone_weights`` is recorded by :func:`save_bundle`; bundles without it are not checked."""
        want = self.backbone_weights
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


def save_bundle(
    root: Path | str,
    model: "SplitModel | str",
    split: Optional[str],
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

    ``model``: the split model the ladder was trained on; the manifest's ``task``, ``feature_shape``,
    ``feature_stride``, ``preprocess`` and ``backbone_weights`` are derived from it (:func:`split_fields`;
    ``split`` may be None). A model *name* instead writes only what ``extra`` says (re-exports: merge, migrate,
    which copy those fields from their source manifest). ``extra``: further manifest fields (``training``,
    ``evaluation``, ``variable_rate``, ...); every field is checked (:class:`Manifest`) before anything is written.

    ``transforms_dtype="float16"`` stores the weights of ``g_a`` and ``g_s`` (most of a deep split's rung) in
    half precision; loading casts them back to float32. Edge and cloud read the same rounded weights, and
    the entropy model, its tables and the integer ``h_s`` stay exact, so decoding stays bit-exact; the
    rounding moves accuracy a little, so a ladder exported this way is measured again."""
    from safetensors.torch import save_file

    if transforms_dtype not in ("float32", "float16"):
        raise ValueError(f"transforms_dtype must be float32 or float16, not {transforms_dtype!r}")
    half = transforms_dtype == "float16"
    derived: Dict = {}
    if not isinstance(model, str):
        if split is not None and split != model.split.name:
            raise ValueError(f"split {split!r} given for a model split at {model.split.name!r}")
        derived, split, model = split_fields(model), model.split.name, model.spec.name
        clash = sorted(k for k in derived if k in (extra or {}) and (extra or {})[k] != derived[k])
        if clash:
            raise ValueError(f"extra sets {clash}, which differ from what the split model says")
    if split is None:
        raise ValueError("save_bundle needs a split name with a model name")
    cfg = config.to_dict()
    Manifest.parse({"format": FORMAT, "bundle_id": "0" * 16, "model": model, "split": split, "config": cfg,
                    "rungs": [{"index": 0, "lam": 0.0, "file": "-", "sha256": "0" * 64}], **derived, **(extra or {})},
                   f"the manifest for {root}")  # a bad field fails here, before any file is written
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
    manifest = {
        "format": FORMAT,
        "bundle_id": _bundle_id(model, split, cfg, [r.sha256 for r in rungs]),
        "model": model,
        "split": split,
        "config": cfg,
        "rungs": [r.__dict__ for r in rungs],
        **derived,
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


def record_measurement(bundle, res: Dict, evaluation: Dict):
    """Write an ``evaluate_ladder`` result into the bundle's manifest: per rung, or for a variable-rate bundle
    the measured rate-accuracy curve (``variable_rate.curve``, one entry per level) with its finest level's
    figures as the rung's. Per-image records (``per_image``: results.json's, for intervals) are left out."""
    drop = lambda d: {k: v for k, v in d.items() if k != "per_image"}  # noqa: E731
    extra = {"evaluation": {**evaluation, "reference": drop(res["reference"])}}
    points = [drop(p) for p in res["rungs"]]
    if bundle.scheme.variable:
        curve = sorted(points, key=lambda p: p["level"])
        extra["variable_rate"] = {**(bundle.manifest.get("variable_rate") or {}), "curve": curve}
        points = [curve[-1]]
    return update_metrics(bundle, points, extra)


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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not JSON: {e}") from e
    meta = Manifest.parse(m, str(path))
    fmt = meta.format
    if fmt not in (FORMAT, *LEGACY_FORMATS):
        raise BundleError(f"{path}: format {fmt!r}, expected {FORMAT!r}")
    cfg = dict(meta.config)
    if fmt in LEGACY_FORMATS:
        cfg.setdefault("hyper_decoder", "float")
    try:
        config = BottleneckConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: field 'config' is malformed: {e}") from e
    rungs = [Rung(**r) for r in meta.rungs]
    if meta.bundle_id != _bundle_id(meta.model, meta.split, meta.config, [r.sha256 for r in rungs]):
        raise BundleError(f"{path}: bundle_id does not match its content")
    if config.rate_model == "hyperprior" and config.hyper_decoder == "float" and not allow_float_hyper:
        raise BundleError(
            f"{root} uses a floating-point hyper-decoder ({fmt}): its bitstreams decode correctly only on "
            f"devices with the same arithmetic as the encoder. Convert it to the bit-exact integer "
            f"hyper-decoder with: splitinfer migrate --bundle {root} --data IMAGES --out NEW_BUNDLE"
        )
    return Bundle(root, m, config, rungs, meta)


DEFAULT_BUNDLE = "efficientnet_lite0-block1"
# the shallow ladder, the deep ladder, and one variable-rate network at the deep split (docs/variable-rate.md)
EMBEDDED_BUNDLES = (DEFAULT_BUNDLE, "efficientnet_lite0-block14", "efficientnet_lite0-block14-vr")


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
        if b.backbone_weights != first.backbone_weights:
            raise BundleError(f"bundle {b.bundle_id} was trained against other backbone weights than {first.bundle_id}")
        if (b.model, b.split, b.config) != (first.model, first.split, first.config):
            raise BundleError(f"bundle {b.bundle_id} is not compatible with {first.bundle_id} (model/split/config)")
    chosen = sorted(picks, key=lambda p: -(p[0].rungs[p[1]].bpp or float("inf")))
    # re-export: weights kept, tables rebuilt by this version's update() (e.g. a new scale table)
    nets = [b.load_rung(i) for b, i in chosen]
    metrics = [{"source": {"bundle_id": b.bundle_id, "rung": i, "metrics": b.rungs[i].metrics,
                           "training": b.training}} for b, i in chosen]
    keep = {k: v for k, v in first.manifest.items()
            if k not in ("format", "bundle_id", "model", "split", "rungs", "training", "config", "evaluation",
                         "transforms_dtype")}
    sources = sorted({b.bundle_id for b, _ in picks})
    # one source (a re-export, e.g. to float16): its training record stays, so training can continue from the
    # result (samples seen, recipe); several: each rung's record is in its metrics' source
    training = {**(first.training or {}), "merged_from": sources} if len(sources) == 1 else {"merged_from": sources}
    extra = {**keep, "training": training, **(extra or {})}
    return save_bundle(root, first.model, first.split, first.config, nets,
                       [b.rungs[i].lam for b, i in chosen], metrics, extra, sort=False,
                       transforms_dtype=transforms_dtype or first.transforms_dtype)
