"""The model repository: served ladders by name, each backbone loaded once.

A served model is one bundle (a ladder of bottlenecks for one backbone and split point). Its backbone is
shared with every other bundle of the same ``(backbone, split, weights)``, and so is the tail batcher; its
rungs load on first use (or all at start with ``preload``) and stay resident, so switching rungs per
request never touches the backbone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

from shared.bundle import Bundle, BundleError, default_bundle_path, embedded_bundle_paths, load_bundle

from .batching import TailBatcher
from .decoder import CloudDecoder
from .errors import NotFound
from .onnx_runtime import OnnxCloudDecoder, is_cloud_package
from .settings import BundleSpec, Settings

if TYPE_CHECKING:  # the PyTorch runtime imports them when it loads a backbone
    from shared.models import SplitModel
    from shared.pipeline import LadderCodec

__all__ = ["ServedModel", "ModelRepository", "default_names", "cloud_runtime", "RUNTIME_ENV", "RUNTIMES"]

log = logging.getLogger("splitinfer.server")
BackboneKey = Tuple[str, str, Optional[str]]


@dataclass
class ServedModel:
    name: str
    bundle: Bundle
    weights: Optional[str]
    decoder: Union[CloudDecoder, OnnxCloudDecoder]
    batcher: TailBatcher
    _encoder: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def codec(self) -> LadderCodec:
        return self.decoder.codec

    @property
    def input_hw(self) -> Tuple[int, int]:
        return self.bundle.input_size

    @property
    def backbone_loaded(self) -> bool:
        """Whether the backbone (head and tail) is in memory. The repository builds it when it adds the model and
        never drops it (a backbone that does not load stops the server from starting), so a served model answers
        True; its rungs load on first use instead (``RungMetadata.resident``)."""
        return self.decoder.model is not None

    def encoder(self):
        """The edge half on the server's own backbone (for clients that upload images)."""
        if self.decoder.runtime != "torch":
            from .errors import Unavailable

            raise Unavailable(f"model {self.name!r} is served from a cloud package (ONNX Runtime), which holds no head: "
                              "encode at the edge and send the bitstream")
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    from shared.encoder import EdgeEncoder

                    self._encoder = EdgeEncoder(self.bundle, model=self.decoder.model, codec=self.codec,
                                                device=self.decoder.device)
        return self._encoder


LADDER_SUFFIX, VR_SUFFIX = "-ladder", "-vr"
RUNTIME_ENV = "SPLITINFER_CLOUD_RUNTIME"
RUNTIMES = ("auto", "torch", "onnx")


def _torch_importable() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # blocked, or a broken install
        return False


def cloud_runtime(settings: Settings, path) -> str:
    """The runtime that serves the bundle at ``path``: ``"onnx"`` (``cloud_server.onnx_runtime``, a cloud package
    from ``splitinfer export-cloud``) or ``"torch"`` (``CloudDecoder``, a bundle). ``settings.runtime`` if the
    settings have one, else ``$SPLITINFER_CLOUD_RUNTIME``: ``torch``, ``onnx``, or ``auto`` (the default): ONNX
    Runtime for a cloud package or where torch cannot be imported, PyTorch otherwise."""
    want = (getattr(settings, "runtime", None) or os.environ.get(RUNTIME_ENV) or "auto").lower()
    if want not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV} must be one of {', '.join(RUNTIMES)}, not {want!r}")
    package = is_cloud_package(path)
    if want == "torch" and package:
        raise BundleError(f"{path} is a cloud package (ONNX graphs, no PyTorch weights): serve it with the onnx "
                          "runtime, or serve the bundle it was exported from with the torch one")
    if want == "auto":
        want = "onnx" if package or not _torch_importable() else "torch"
    if want == "onnx" and not package:
        raise BundleError(f"{path} is a bundle, not a cloud package: the onnx runtime serves what "
                          f"`splitinfer export-cloud --bundle {path} --out CLOUD_DIR` writes")
    return want


def default_names(specs: Sequence[BundleSpec], bundles: Sequence[Bundle]) -> List[str]:
    """The served name of each bundle: its spec's name, else ``<backbone>-<split>``. A variable-rate network is the
    default model of its split: where a ladder of the same backbone and split is served beside it, the ladder
    becomes ``<backbone>-<split>-ladder`` (ladders stay supported, under that name). Earlier versions served the
    variable-rate network as ``<backbone>-<split>-vr``; :meth:`ModelRepository.get` still answers to it."""
    names = [s.name or b.served_name for s, b in zip(specs, bundles)]
    vr_bases = {n for s, b, n in zip(specs, bundles, names) if not s.name and b.config.variable_rate}
    return [n + LADDER_SUFFIX if not s.name and not b.config.variable_rate and n in vr_bases else n
            for s, b, n in zip(specs, bundles, names)]


class ModelRepository:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: Dict[str, ServedModel] = {}
        self._backbones: Dict[BackboneKey, SplitModel] = {}
        self._batchers: Dict[BackboneKey, TailBatcher] = {}
        self.on_batch = None  # set by the data plane (metrics)

    # -- loading -------------------------------------------------------------------------------------
    def load(self) -> "ModelRepository":
        # no bundle named: every embedded ladder (shallow and deep split), on one backbone each
        specs = self.settings.bundles or [BundleSpec(path=p) for p in embedded_bundle_paths()]
        bundles = [load_bundle(s.path if s.path is not None else default_bundle_path()) for s in specs]
        for spec, bundle, name in zip(specs, bundles, default_names(specs, bundles)):
            self.add(spec, bundle, name)
        return self

    def add(self, spec: BundleSpec, bundle: Optional[Bundle] = None, name: Optional[str] = None) -> ServedModel:
        if bundle is None:
            bundle = load_bundle(spec.path if spec.path is not None else default_bundle_path())
        name = name or spec.name or bundle.served_name
        if name in self._models:
            raise ValueError(f"two bundles are named {name!r}; name them (BundleSpec.name / --bundle NAME=DIR)")
        weights = spec.weights if spec.weights is not None else self.settings.weights
        runtime = cloud_runtime(self.settings, bundle.root)
        if runtime == "onnx":  # a cloud package: its own tail graph, one batcher per package
            key: BackboneKey = (bundle.model, bundle.split, f"onnx:{bundle.root.resolve()}")
            decoder = OnnxCloudDecoder(bundle.root, device=self.settings.device, preload=self.settings.preload)
            self._backbones.setdefault(key, decoder.model)
        else:
            key = (bundle.model, bundle.split,
                   str(Path(weights).resolve()) if weights and Path(weights).exists() else weights)
            model = self._backbones.get(key)
            if model is None:
                from shared.models import load_split_model

                log.info("loading backbone %s/%s (weights: %s)", bundle.model, bundle.split, weights or "pretrained")
                model = self._backbones[key] = load_split_model(bundle.model, bundle.split, weights)
            decoder = CloudDecoder(bundle, device=self.settings.device, model=model, preload=self.settings.preload)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = TailBatcher(
                decoder.run_tail, self.settings.batch_max_size, self.settings.batch_max_wait_ms / 1e3,
                name=f"{bundle.model}/{bundle.split}", on_batch=self._batch_done(key))
        served = self._models[name] = ServedModel(name, bundle, weights, decoder, batcher)
        log.info("serving %s: bundle %s, %d rungs%s (%s runtime)", name, bundle.bundle_id, len(bundle.rungs),
                 " (preloaded)" if self.settings.preload else "", runtime)
        if (bundle.verdict or {}).get("weak"):  # `splitinfer train --allow-weak` kept it; the operator must know
            log.warning("serving %s: bundle %s was judged WEAK when trained: %s", name, bundle.bundle_id,
                        bundle.verdict.get("reason"))
        return served

    def _batch_done(self, key: BackboneKey):
        def record(n: int) -> None:
            if self.on_batch is not None:
                self.on_batch(f"{key[0]}/{key[1]}", n)

        return record

    # -- lookup --------------------------------------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            if name.endswith(VR_SUFFIX):  # the name earlier versions gave a variable-rate network
                served = self._models.get(name[: -len(VR_SUFFIX)])
                if served is not None and served.bundle.config.variable_rate:
                    return served
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model {name!r} is not served here (models: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def models(self) -> List[ServedModel]:
        return list(self._models.values())

    @property
    def n_backbones(self) -> int:
        return len(self._backbones)

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
