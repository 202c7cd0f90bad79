"""The torch-free edge: ONNX Runtime for the head and the bottleneck encoder, numpy for the rest.

::

    image ─► resize/crop/normalise ─► head.onnx ─► rung-K.onnx ─► y, z          (ONNX Runtime, float32)
    z ─► z symbols ─► rANS ─────────────────────────────────────────► z payload   (C or Python: shared.codec.rans)
    z symbols ─► integer h_s ─► (table indexes, means)                           (numpy: exact, bit for bit)
    y, means ─► y symbols ─► rANS ──────────────────────────────────► y payload
    payloads ─► versioned header + CRCs ─► bytes                                 (shared.bitstream)

It writes the bitstreams :class:`shared.pipeline.LadderCodec` writes, so the cloud cannot tell the two edges
apart (``tests/test_edge_runtime.py``). Imports: numpy, onnxruntime, PIL, safetensors.numpy, ``shared``'s
torch-free modules; never torch or compressai (a subprocess test checks it).

Threads: ``threads`` (default ``$SPLITINFER_EDGE_THREADS``, else 1) sets ONNX Runtime's intra-op threads. One
thread measured fastest per frame on a busy 2-core CPU (``benchmarks/edge_runtime.py``), and it keeps an
edge from stealing the cores the camera pipeline needs; raise it on an idle multi-core board.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from shared.bitstream import Header, pack, split_tag, symbols_crc
from shared.bundle import BundleError
from shared.codec.integer_numpy import int_hyper_synthesis, layers_from_arrays
from shared.codec.rans import RansTables, encode_with_indexes
from shared.frame import EncodedFrame, ImageLike
from shared.imageprep import input_crop, load_image, to_array
from shared.codec.levels import LevelCoder, level_message
from shared.rate import BitrateHint, OperatingPoint, RateChoice, StreamRateController, choose_level

from .package import EdgePackage, find_package

__all__ = ["EncodedFrame", "OnnxEdgeEncoder", "ImageLike", "default_threads"]


def default_threads() -> int:
    v = os.environ.get("SPLITINFER_EDGE_THREADS")
    try:
        n = int(v) if v else 1
    except ValueError:
        raise ValueError(f"SPLITINFER_EDGE_THREADS must be a whole number, not {v!r}") from None
    if n < 1:
        raise ValueError(f"SPLITINFER_EDGE_THREADS must be >= 1, not {n}")
    return n


class _Preprocess:
    def __init__(self, d: Dict):
        self.input_size = tuple(d["input_size"])
        self.resize = d["resize"]
        self.mean, self.std = tuple(d["mean"]), tuple(d["std"])


def _session(graph: bytes, threads: int, where: Union[str, Path] = "a graph"):
    """An ONNX Runtime session of a graph the package checked (``EdgePackage.graph``: the bytes checked are the
    bytes run); a graph ONNX Runtime refuses is a one-line :class:`BundleError`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spin-waiting between frames: spinning workers keep burning the cores the camera pipeline (and, measured
    # here, the next frame's other session) needs; at batch 1 they save microseconds
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's Fail / InvalidGraph / ... share no public base but Exception
        raise BundleError(f"{where}: ONNX Runtime cannot load it: {str(e).splitlines()[0][:200]}") from None


def _tables(arrays, prefix: str) -> RansTables:
    return RansTables(arrays[f"{prefix}.cdf"], arrays[f"{prefix}.cdf_length"], arrays[f"{prefix}.offset"])


class _Rung:
    """One rung's encoder: its ONNX graph (feature -> y[, z]) and the arrays that code y."""

    def __init__(self, pkg: EdgePackage, spec: Dict, threads: int):
        self.spec, self.kind = spec, spec["rate_model"]
        self.session = _session(pkg.graph(spec["onnx"]), threads, pkg.root / spec["onnx"])
        a = pkg.arrays(spec["index"])
        self.y_tables = _tables(a, "y")
        if self.kind in ("hyperprior", "vr-hyperprior"):
            self.z_tables = _tables(a, "z")
            self.z_medians = a["z.medians"].astype(np.float32).reshape(1, -1, 1, 1)
            self.h_s = layers_from_arrays(a, spec["h_s"], "h_s.")
        else:
            self.y_medians = a["y.medians"].astype(np.float32).reshape(1, -1, 1, 1)

    @property
    def variable(self) -> bool:
        return self.kind == "vr-hyperprior"

    def _side(self, y: np.ndarray, z: np.ndarray):
        z_sym = np.rint(z - self.z_medians).astype(np.int64)  # torch.round: half to even, as np.rint
        z_idx = np.broadcast_to(np.arange(z.shape[1]).reshape(1, -1, 1, 1), z_sym.shape)
        z_str = encode_with_indexes(z_sym, z_idx, self.z_tables)
        idx, means = int_hyper_synthesis(self.h_s, z_sym, self.spec["levels"], self.spec["means"], tuple(y.shape[-2:]))
        return z_sym, z_str, idx, means

    def level_coder(self, feature: np.ndarray) -> Tuple[LevelCoder, bytes, np.ndarray, Tuple[int, int], Tuple[int, int]]:
        """A variable-rate rung: (coder for every level, z payload, z symbols, y_hw, side_hw) of one image."""
        y, z = self.session.run(None, {"feature": feature})
        z_sym, z_str, idx, means = self._side(y, z)
        coder = LevelCoder(y[0], means[0], idx[0], self.y_tables, self.spec["log_ratio"],
                           tuple(self.spec["quality_levels"]))
        return coder, z_str, z_sym, tuple(y.shape[-2:]), tuple(z.shape[-2:])

    def code(self, feature: np.ndarray) -> Tuple[List[bytes], int, Tuple[int, int], Tuple[int, int]]:
        """(payloads, symbols CRC, y_hw, side_hw) of one image's feature (1, C, h, w); a ladder rung's."""
        if self.variable:
            raise ValueError("a variable-rate rung codes at a quality level: use level_coder / encode_variable")
        outs = self.session.run(None, {"feature": feature})
        y = outs[0]
        y_hw = tuple(y.shape[-2:])
        if self.kind == "hyperprior":
            z = outs[1]
            z_sym, z_str, idx, means = self._side(y, z)
            y_sym = np.rint(y - means if means is not None else y).astype(np.int64)
            y_str = encode_with_indexes(y_sym, idx, self.y_tables)
            return [y_str, z_str], symbols_crc(y_sym[0], z_sym[0]), y_hw, tuple(z.shape[-2:])
        if self.kind == "factorized":
            sym = np.rint(y - self.y_medians).astype(np.int64)
            idx = np.broadcast_to(np.arange(y.shape[1]).reshape(1, -1, 1, 1), sym.shape)
        else:  # static: one table for every element, y / qp
            b, c, h, w = y.shape
            v = (y / np.float32(self.spec["qp"])).reshape(b, 1, c * h, w)
            sym = np.rint(v - self.y_medians).astype(np.int64)
            idx = np.zeros_like(sym)
        return [encode_with_indexes(sym, idx, self.y_tables)], symbols_crc(sym[0]), y_hw, (0, 0)


class OnnxEdgeEncoder:
    """Image -> bitstream on the edge, without torch. Same interface as :class:`edge_client.EdgeEncoder`.

    ``package``: an edge package folder, a bundle folder (its cached export), an :class:`EdgePackage`, or None
    (the embedded ladder). ``weights``: backbone weights for exporting a bundle (default: pretrained).
    """

    def __init__(self, package: Union[str, Path, EdgePackage, None] = None, threads: Optional[int] = None,
                 weights: Optional[str] = None):
        self.package = find_package(package, weights)
        self.bundle = self.package.bundle
        self.threads = default_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, not {self.threads}")
        m = self.package.manifest
        self.preprocess_spec = _Preprocess(m["preprocess"])
        self.num_classes = int(m["num_classes"])
        self.labels = m.get("labels")  # the label set of the classes (older packages: None, the class count picks)
        self.tag = split_tag(m["model"], m["split"])
        self.head = _session(self.package.graph(m["head"]), self.threads, self.package.root / m["head"])
        self._specs = {r["index"]: r for r in m["rungs"]}
        self._rungs: Dict[int, _Rung] = {}
        self._lock = threading.Lock()

    def rung(self, index: int) -> _Rung:
        r = self._rungs.get(index)
        if r is None:
            if index not in self._specs:
                raise ValueError(f"bundle {self.bundle.bundle_id} has rungs 0..{len(self._specs) - 1}, not {index}")
            with self._lock:
                r = self._rungs.get(index) or _Rung(self.package, self._specs[index], self.threads)
                self._rungs[index] = r
        return r

    def preload(self) -> None:
        for i in self._specs:
            self.rung(i)

    def select(self, bitrate_bpp: Optional[float]) -> int:
        return self.bundle.select(bitrate_bpp)

    def preprocess(self, image: ImageLike) -> np.ndarray:
        img = image if isinstance(image, Image.Image) else load_image(image)
        return to_array(input_crop(img.convert("RGB"), self.preprocess_spec), self.preprocess_spec)[None]

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.head.run(None, {"image": x})[0]

    @property
    def scheme(self):
        """The bundle's rate scheme (``shared.rate``): hint -> operating point, and each message's outcome."""
        return self.bundle.scheme

    @property
    def levels(self) -> Optional[Tuple[int, int]]:
        """The quality levels of a variable-rate bundle; None for a ladder."""
        return self.scheme.levels

    def encode_array(self, x: np.ndarray, rung: int) -> bytes:
        """A preprocessed image (1, 3, H, W) float32 -> one message (a ladder rung)."""
        feature = self.features(x)
        payloads, crc, y_hw, side = self.rung(rung).code(feature)
        hw = tuple(x.shape[-2:])
        return pack(Header(self.bundle.id_bytes, self.tag, rung, hw, y_hw, side, crc), payloads)

    def encode_variable(self, x: np.ndarray, **how) -> RateChoice:
        """A preprocessed image -> a variable-rate bundle's message; ``how``: see ``shared.rate.choose_level``."""
        coder, z_str, z_sym, y_hw, side = self.rung(0).level_coder(self.features(x))
        message = level_message(self.bundle.id_bytes, self.tag, x.shape[-2:], y_hw, side, z_str, z_sym[0])
        return choose_level(coder, message, **how)

    def encode(self, image: ImageLike, bitrate: Optional[float] = None, rung: Optional[int] = None,
               level: Optional[int] = None, controller: Optional[StreamRateController] = None,
               point: Optional[OperatingPoint] = None) -> EncodedFrame:
        """Encode one image at the operating ``point`` of the bundle's rate scheme, or the one the other arguments
        give (``self.scheme.point``). A ladder: at the rung given, or the rung the bitrate hint (bpp) selects. A
        variable-rate bundle: at the quality ``level`` given, within the hint (each message at most ``bitrate``
        bpp), under a stream ``controller``, or at the finest level. The frame's ``hint`` says whether the message
        met the hint."""
        if point is None:
            point = self.scheme.point(BitrateHint(target_bpp=bitrate), rung=rung, level=level, controller=controller)
        t0 = time.perf_counter()
        x = self.preprocess(image)
        hw = tuple(x.shape[-2:])
        if point.variable:
            c = self.encode_variable(x, **point.how())
            frame = EncodedFrame(c.message, 0, hw, 0.0, c.level, c.trials)
        else:
            frame = EncodedFrame(self.encode_array(x, point.rung), point.rung, hw)
        frame.encode_ms = 1e3 * (time.perf_counter() - t0)
        frame.hint = self.scheme.outcome(point, frame.n_bytes, hw, frame.level)
        return frame
