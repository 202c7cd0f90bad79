"""The torch-free cloud: a cloud package (``splitinfer export-cloud``) decoded with numpy and run in ONNX Runtime.

::

    bytes ─► header checks (shared.bitstream) ─► z payload ─► rANS ─► z symbols       (C or Python: shared.codec.rans)
    z symbols ─► integer h_s ─► (table indexes, means) [+ the level, variable rate]   (numpy or C: exact, bit for bit)
    y payload ─► rANS ─► y symbols ─► y_hat = symbols x step + means                  (numpy)
    y_hat ─► rung-K.onnx (g_s) ─► crop ─► batch ─► tail.onnx ─► answer               (ONNX Runtime, float32)

:class:`OnnxCloudDecoder` has the interface the data plane uses of :class:`cloud_server.decoder.CloudDecoder`
(``codec.parse`` / ``codec.decode``, ``run_tail``, ``answer``, ``task``, ``model.spec.num_classes``), with numpy
arrays where that one has tensors, so the repository serves either (``cloud_server.repository.cloud_runtime``).
The symbols and their checksum are the ones the PyTorch decoder recovers; the answers equal its answers
(``tests/test_cloud_onnx.py``). Imports: numpy, onnxruntime, safetensors.numpy and ``shared``'s torch-free modules;
never torch or compressai (``tests/test_structure.py``).

Threads: ``$SPLITINFER_CLOUD_THREADS`` (default: ONNX Runtime's, one per core) intra-op threads per session;
workers do not spin between requests (a busy server's cores go to the requests, not to waiting).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from shared.bitstream import BitstreamError, Header, bits_per_pixel, level_symbols_crc, split_tag, symbols_crc, unpack
from shared.bundle import Bundle, BundleError, load_bundle
from shared.codec.integer_numpy import int_hyper_synthesis, layers_from_arrays
from shared.codec.rans import RansTables, decode_with_indexes

__all__ = ["CLOUD_FORMAT", "CLOUD_JSON", "CloudPackage", "OnnxCodec", "OnnxCloudDecoder", "is_cloud_package",
           "THREADS_ENV"]

CLOUD_FORMAT = "splitinfer-cloud/1"  # = shared.cloud_export.CLOUD_FORMAT (that module needs torch)
CLOUD_JSON = "cloud.json"
META_BUNDLE, META_TAIL, META_RUNG = "splitinfer.bundle_id", "splitinfer.tail_weights", "splitinfer.rung"
THREADS_ENV = "SPLITINFER_CLOUD_THREADS"
HYPER = ("hyperprior", "vr-hyperprior")


def is_cloud_package(path) -> bool:
    return path is not None and (Path(path) / CLOUD_JSON).is_file()


def _package_id(files: Dict[str, str], bundle_id: str) -> str:
    """= ``shared.edge_export.package_id`` (the same content hash; that module needs torch)."""
    key = json.dumps({"bundle_id": bundle_id, "files": files}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class CloudPackage:
    """A cloud package folder, checked on load: its format, every file's SHA-256, the package id, and that its
    bundle manifest is the bundle it names. Graph bytes are read once and the bytes checked are the bytes run."""

    def __init__(self, root):
        self.root = Path(root)
        try:
            self.manifest = m = json.loads((self.root / CLOUD_JSON).read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{self.root}: not a cloud package ({CLOUD_JSON}: {e})") from None
        if m.get("format") != CLOUD_FORMAT:
            raise BundleError(f"{self.root}: cloud package format {m.get('format')!r}, expected {CLOUD_FORMAT!r}")
        files = m.get("files") or {}
        for name, digest in files.items():
            p = self.root / name
            if Path(name).name != name or not p.is_file():
                raise BundleError(f"{self.root}: cloud package file {name!r} is missing")
            if hashlib.sha256(p.read_bytes()).hexdigest() != digest:
                raise BundleError(f"{p}: its SHA-256 does not match {CLOUD_JSON}; export the package again")
        if _package_id(files, m.get("bundle_id", "")) != m.get("package_id"):
            raise BundleError(f"{self.root}: package id does not match its content")
        self.bundle: Bundle = load_bundle(self.root)
        if self.bundle.bundle_id != m["bundle_id"]:
            raise BundleError(f"{self.root}: the package is for bundle {m['bundle_id']}, its manifest is "
                              f"{self.bundle.bundle_id}")
        want = (self.bundle.backbone_weights or {}).get("tail")
        if want and want != m.get("tail_weights"):
            raise BundleError(f"{self.root}: the tail was exported from weights {m.get('tail_weights')}, the bundle "
                              f"was trained against {want}")
        self.package_id, self.bundle_id = m["package_id"], m["bundle_id"]

    def graph(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def arrays(self, name: str) -> Dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        return load_file(str(self.root / name))


def _threads() -> int:
    v = os.environ.get(THREADS_ENV)
    try:
        n = int(v) if v else 0
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a whole number, not {v!r}") from None
    if n < 0:
        raise ValueError(f"{THREADS_ENV} must be >= 0 (0: one per core), not {n}")
    return n


def _session(graph: bytes, where, props: Dict[str, str], device: str = "cpu"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        s = ort.InferenceSession(graph, sess_options=so, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors share no public base but Exception
        raise BundleError(f"{where}: ONNX Runtime cannot load it: {str(e).splitlines()[0][:200]}") from None
    meta = s.get_modelmeta().custom_metadata_map
    for key, value in props.items():
        if meta.get(key) != value:
            raise BundleError(f"{where}: the graph is bound to {key}={meta.get(key)!r}, the package says {value!r}")
    return s


def _tables(a: Dict[str, np.ndarray], prefix: str) -> RansTables:
    return RansTables(a[f"{prefix}.cdf"], a[f"{prefix}.cdf_length"], a[f"{prefix}.offset"])


def _channel_indexes(shape) -> np.ndarray:
    return np.broadcast_to(np.arange(shape[1], dtype=np.int64).reshape(1, -1, 1, 1), shape)


def _side_shape(y_hw: Tuple[int, int], stride: int) -> Tuple[int, int]:
    h, w = y_hw
    for _ in range(int(np.log2(stride))):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


class OnnxRung:
    """One rung's decoder: the arrays that entropy-decode y (numpy) and its g_s graph (ONNX Runtime)."""

    def __init__(self, pkg: CloudPackage, spec: Dict, device: str = "cpu"):
        self.spec, self.kind = spec, spec["rate_model"]
        self.index, self.latent = int(spec["index"]), int(spec["latent"])
        self.session = _session(pkg.graph(spec["onnx"]), pkg.root / spec["onnx"],
                                {META_BUNDLE: pkg.bundle_id, META_RUNG: str(self.index)}, device)
        a = pkg.arrays(spec["arrays"])
        self.y_tables = _tables(a, "y")
        if self.kind in HYPER:
            self.z_tables = _tables(a, "z")
            self.h_s = layers_from_arrays(a, spec["h_s"], "h_s.")
            self.hyper, self.hyper_stride = int(spec["hyper"]), int(spec["hyper_stride"])
        else:
            self.y_medians = a["y.medians"].astype(np.float32).reshape(1, -1, 1, 1)

    # the rate model's shapes, as ``shared.codec.rate_models`` has them (header checks)
    @property
    def n_payloads(self) -> int:
        return 2 if self.kind in HYPER else 1

    def side_shape(self, y_hw: Tuple[int, int]) -> Optional[Tuple[int, int]]:
        return _side_shape(y_hw, self.hyper_stride) if self.kind in HYPER else None

    def decode_symbols(self, payloads: Sequence[bytes], y_hw: Tuple[int, int], level: Optional[int] = None):
        """(y_hat (1, latent, h, w) float32, symbols CRC, y symbols, z symbols or None): the rate model's
        ``decompress`` without g_s."""
        if self.kind in HYPER:
            y_str, z_str = payloads
            z_shape = (1, self.hyper, *_side_shape(y_hw, self.hyper_stride))
            z_sym = decode_with_indexes(z_str, _channel_indexes(z_shape), self.z_tables)
            idx, means = int_hyper_synthesis(self.h_s, z_sym, self.spec["levels"], self.spec["means"], tuple(y_hw))
            if self.kind == "vr-hyperprior":
                q = int(level)
                idx = np.clip(idx + q, 0, int(self.spec["levels"]) - 1)
                y_sym = decode_with_indexes(y_str, idx, self.y_tables)
                step = np.float32(np.exp(-q * float(self.spec["log_ratio"])))
                y_hat = y_sym.astype(np.float32) * step + means
                return y_hat, level_symbols_crc(q, y_sym[0], z_sym[0]), y_sym, z_sym
            y_sym = decode_with_indexes(y_str, idx, self.y_tables)
            y_hat = y_sym.astype(np.float32) + means if means is not None else y_sym.astype(np.float32)
            return y_hat, symbols_crc(y_sym[0], z_sym[0]), y_sym, z_sym
        (s,) = payloads
        if self.kind == "factorized":
            sym = decode_with_indexes(s, _channel_indexes((1, self.latent, *y_hw)), self.y_tables)
            return sym.astype(np.float32) + self.y_medians, symbols_crc(sym[0]), sym, None
        # static: one table for every element, (1, 1, C*h, w), times qp
        sym = decode_with_indexes(s, np.zeros((1, 1, self.latent * y_hw[0], y_hw[1]), np.int64), self.y_tables)
        v = (sym.astype(np.float32) + self.y_medians).reshape(1, self.latent, *y_hw)
        return v * np.float32(self.spec["qp"]), symbols_crc(sym[0]), sym, None

    def synthesis(self, y_hat: np.ndarray, feat_hw: Tuple[int, int]) -> np.ndarray:
        feat = self.session.run(None, {"y_hat": np.ascontiguousarray(y_hat, dtype=np.float32)})[0]
        return np.ascontiguousarray(feat[..., : feat_hw[0], : feat_hw[1]])


class OnnxCodec:
    """The cloud half of :class:`shared.pipeline.LadderCodec` on a cloud package: header checks, entropy decoding,
    g_s. Rungs load on first use and stay resident."""

    def __init__(self, package: CloudPackage, device: str = "cpu"):
        self.package, self.bundle, self.device = package, package.bundle, device
        self.tag = split_tag(self.bundle.model, self.bundle.split)
        self.feature_stride = self.bundle.feature_stride
        self._specs = {int(r["index"]): r for r in package.manifest["rungs"]}
        self._rungs: Dict[int, OnnxRung] = {}
        self._lock = threading.Lock()

    def rung(self, index: int) -> OnnxRung:
        r = self._rungs.get(index)
        if r is None:
            with self._lock:
                r = self._rungs.get(index)
                if r is None:
                    r = self._rungs[index] = OnnxRung(self.package, self._specs[index], self.device)
        return r

    def preload(self) -> None:
        for i in self._specs:
            self.rung(i)

    @property
    def resident(self) -> list:
        return sorted(self._rungs)

    @property
    def input_size(self) -> Tuple[int, int]:
        return self.bundle.input_size

    def allowed_inputs(self) -> list:
        return [self.input_size]

    def feature_hw(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        s = self.feature_stride
        return -(-input_hw[0] // s), -(-input_hw[1] // s)

    @property
    def scheme(self):
        return self.bundle.scheme

    @property
    def levels(self) -> Optional[Tuple[int, int]]:
        return self.scheme.levels

    def parse(self, data: bytes) -> Tuple[Header, list]:
        """``LadderCodec.parse``: the header checks that need no decoding, with the same messages."""
        hdr, payloads = unpack(data)
        b = self.bundle
        if hdr.bundle_id != b.id_bytes:
            raise BitstreamError(
                f"bitstream was made for bundle {hdr.bundle_id.hex()}…, this decoder holds {b.bundle_id[:8]}… "
                f"({b.model}/{b.split}); the edge and the cloud must use the same bundle")
        if hdr.split_tag != self.tag:
            raise BitstreamError("bitstream was made for another split point")
        if not 0 <= hdr.rung < len(b.rungs):
            raise BitstreamError(f"rung {hdr.rung} is not in this bundle (rungs 0..{len(b.rungs) - 1})")
        problem = self.scheme.header_problem(hdr.level)
        if problem:
            raise BitstreamError(problem)
        if hdr.input_hw not in self.allowed_inputs():
            raise BitstreamError(
                f"input size {hdr.input_hw[0]}x{hdr.input_hw[1]} is not one this bundle encodes "
                f"(expected {self.input_size[0]}x{self.input_size[1]})")
        rung = self.rung(hdr.rung)
        fh, fw = self.feature_hw(hdr.input_hw)
        s = b.config.stride
        want_y = ((fh + s - 1) // s, (fw + s - 1) // s)
        want_side = rung.side_shape(want_y) or (0, 0)
        if hdr.y_hw != want_y or hdr.side_hw != want_side or len(payloads) != rung.n_payloads:
            raise BitstreamError(
                f"latent shapes y={hdr.y_hw} side={hdr.side_hw} with {len(payloads)} payloads cannot come from a "
                f"{hdr.input_hw[0]}x{hdr.input_hw[1]} input with this bundle (expected y={want_y} side={want_side})")
        return hdr, payloads

    def decode_symbols(self, data: bytes):
        """(header, y_hat, y symbols, z symbols) of one message, checksum verified (tests compare symbols)."""
        hdr, payloads = self.parse(data)
        try:
            y_hat, crc, y_sym, z_sym = self.rung(hdr.rung).decode_symbols(payloads, hdr.y_hw, hdr.level)
        except (RuntimeError, ValueError, OverflowError) as e:  # the coder's own complaints
            raise BitstreamError(f"entropy decoding failed: {e}") from e
        if crc != hdr.symbols_crc:
            raise BitstreamError(
                "decoded symbols do not match the encoder's checksum: the entropy decoder desynchronised "
                "(edge and cloud computed different probability tables) or the stream was altered")
        return hdr, y_hat, y_sym, z_sym

    def decode(self, data: bytes) -> Tuple[np.ndarray, Header]:
        """One message -> (feature_hat (1, C, h, w) float32, header). Raises BitstreamError on any bad input."""
        hdr, y_hat, _, _ = self.decode_symbols(data)
        return self.rung(hdr.rung).synthesis(y_hat, self.feature_hw(hdr.input_hw)), hdr

    def rate_bpp(self, data: bytes) -> float:
        hdr, _ = unpack(data)
        return bits_per_pixel(len(data), hdr.input_hw)


@dataclass(frozen=True)
class _Spec:
    """What the data plane reads of a backbone spec (``decoder.model.spec``)."""

    name: str
    num_classes: int
    task: str


class _Backbone:
    """Stands in for the SplitModel the data plane asks about: its spec and its halves' weights fingerprints (the
    head's as recorded at export, else the bundle's); the tail is an ONNX graph."""

    def __init__(self, spec: _Spec, fingerprints: Dict[str, Optional[str]]):
        self.spec, self._fingerprints = spec, dict(fingerprints)

    def fingerprints(self) -> Dict[str, Optional[str]]:
        return dict(self._fingerprints)


class OnnxCloudDecoder:
    """The cloud half of one bundle from its cloud package, without torch (see the module docstring)."""

    runtime = "onnx"

    def __init__(self, package, device: str = "cpu", preload: bool = False):
        self.package = package if isinstance(package, CloudPackage) else CloudPackage(package)
        m = self.package.manifest
        self.bundle = self.package.bundle
        self.device = device
        self.codec = OnnxCodec(self.package, device)
        self.names: List[str] = list(m["class_names"])
        head = m.get("head_weights") or (self.bundle.backbone_weights or {}).get("head")
        self.model = _Backbone(_Spec(m["model"], int(m["num_classes"]), m["task"]),
                               {"head": head, "tail": m["tail_weights"]})
        self.tail = _session(self.package.graph(m["tail"]), self.package.root / m["tail"],
                             {META_BUNDLE: self.package.bundle_id, META_TAIL: m["tail_weights"]}, device)
        self._task = None
        if preload:
            self.codec.preload()

    @property
    def task(self):
        """The model's :class:`shared.tasks.Task` (its name, figures and wire outputs)."""
        if self._task is None:
            from shared.tasks import get_task

            self._task = get_task(self.model.spec.task)
        return self._task

    def run_tail(self, features: np.ndarray, input_hw: Sequence[int]) -> np.ndarray:
        """Tail on a batch of decoded features (N, C, h, w) -> (N, classes[, H, W])."""
        if tuple(input_hw) != tuple(self.bundle.input_size):
            raise ValueError(f"the exported tail takes {self.bundle.input_size} inputs, not {tuple(input_hw)}")
        return self.tail.run(None, {"feature": np.ascontiguousarray(features, dtype=np.float32)})[0]

    def answer(self, out: np.ndarray, topk: int = 5):
        """One image's tail output (1, classes[, H, W]) -> its answer, as the model's task makes it (the same code
        as the PyTorch decoder's)."""
        return self.task.answer(out, self.names, topk)

    def decode_output(self, data: bytes):
        import time

        t0 = time.perf_counter()
        feat, hdr = self.codec.decode(data)
        t1 = time.perf_counter()
        out = self.run_tail(feat, hdr.input_hw)
        return out, hdr, {"decode": 1e3 * (t1 - t0), "tail": 1e3 * (time.perf_counter() - t1)}

    def decode(self, data: bytes, topk: int = 5):
        from .decoder import Prediction

        out, hdr, timings = self.decode_output(data)
        ans = self.answer(out, topk)
        return Prediction(hdr.rung, len(data), hdr.input_hw, ans.topk, timings, ans.outputs)
