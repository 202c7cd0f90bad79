"""Export a bundle's cloud half for a torch-free server: ONNX graphs + plain arrays (``splitinfer export-cloud``).

The mirror image of :mod:`shared.edge_export`. A cloud package is a folder::

    manifest.json          the bundle's manifest, unchanged (``load_bundle`` reads the folder as the bundle)
    cloud.json             format, package id (content hash), bundle id, tail weights fingerprint, task, class
                           names, per rung: rate model, files, integer h_s layer specs; every file's SHA-256
    tail.onnx              decoded split feature (N, C, h, w) -> the tail's output (N, classes[, H, W]) at the
                           bundle's input size; its metadata binds it to the bundle id and the tail's weights
    rung-00.onnx           y_hat (N, latent, h, w) -> split feature (uncropped): g_s with the latent gain and the
                           feature statistics folded in; float; bound to the bundle id and its rung
    rung-00.safetensors    what entropy decoding needs, as plain arrays: the same ones the edge package holds (CDF
                           tables, z medians, the integer h_s's weights, multipliers and biases)

A variable-rate bundle is one rung: its ``g_s`` does not depend on the level (the level shifts the integer table
indexes and scales the symbols, both in numpy), so one graph serves every level.

:class:`cloud_server.onnx_runtime.OnnxCloudDecoder` runs it with ONNX Runtime, numpy and the project's rANS
decoder: a serving install needs neither torch nor compressai (``tests/test_cloud_onnx.py`` checks it gives the
symbols and answers of the PyTorch decoder).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .bundle import Bundle, resolve_bundle
from .codec.bottleneck import Bottleneck
from .codec.variable_rate import VariableRateHyperprior
# one exporter's way of freezing GDN, of making the rate model's arrays, of hashing files and packages
from .edge_export import OPSET, _bind, _onnx, _plain, _rung_arrays, _sha256, package_id

__all__ = ["CLOUD_FORMAT", "export_cloud", "META_BUNDLE", "META_TAIL", "META_RUNG"]

CLOUD_FORMAT = "splitinfer-cloud/1"
CLOUD_JSON = "cloud.json"
META_BUNDLE, META_TAIL, META_RUNG = "splitinfer.bundle_id", "splitinfer.tail_weights", "splitinfer.rung"


class _SynthesisGraph(nn.Module):
    """y_hat -> split feature: ``Bottleneck._synthesis`` without the crop (the runtime crops: the crop and the
    per-channel affine commute)."""

    def __init__(self, net: Bottleneck):
        super().__init__()
        self.g_s = _plain(net.g_s)
        self.register_buffer("feat_mean", net.feat_mean.detach().clone())
        self.register_buffer("feat_std", net.feat_std.detach().clone())
        self.inv_gain = (-net.latent_gain).detach().exp().clone() if net.cfg.gain else None

    def forward(self, y_hat: Tensor) -> Tensor:
        if self.inv_gain is not None:
            y_hat = y_hat * self.inv_gain
        return self.g_s(y_hat) * self.feat_std + self.feat_mean


class _TailGraph(nn.Module):
    """Split feature -> output for inputs of one size (the size only shapes the tail: ``SplitModel.run_tail``)."""

    def __init__(self, model, input_hw):
        super().__init__()
        self.tail, self.input_hw = model.tail, tuple(int(v) for v in input_hw)

    def forward(self, feature: Tensor) -> Tensor:
        return self.tail(feature, feature.new_zeros(feature.shape[0], 3, *self.input_hw))


def _export(module: nn.Module, example: Tensor, path: Path, inp: str, out: str, spatial_out: bool,
            props: Dict[str, str]) -> None:
    """ONNX export with a dynamic batch (and spatial axes where the graph keeps them), bound by ``props``."""
    axes = {inp: {0: "batch", 2: "height", 3: "width"}, out: {0: "batch", 2: "height", 3: "width"} if spatial_out
            else {0: "batch"}}
    _onnx(module, example, path, [inp], [out], axes)
    _bind(path, props)


def export_cloud(bundle, out: Path | str, weights: Optional[str] = None, model=None, progress=None) -> Path:
    """Write the cloud package of ``bundle`` (a Bundle, folder, or None: the embedded ladder) to ``out``.

    ``model``: an already loaded :class:`SplitModel` for the bundle (default: built from ``weights``).
    ``progress``: a callable taking a line of text (default: silent)."""
    from .models import load_split_model
    from .tasks import get_task

    say = progress or (lambda _msg: None)
    b: Bundle = resolve_bundle(bundle)
    if model is None:
        model = load_split_model(b.model, b.split, weights)
    b.check_backbone(model, ("tail",))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec, input_hw = model.spec, tuple(b.input_size)
    task = get_task(spec)
    tmp = Path(tempfile.mkdtemp(prefix=".cloud-", dir=out.parent))
    try:
        tail_weights = model.fingerprints()["tail"]
        with torch.no_grad():
            feature = model.head(torch.zeros(1, 3, *input_hw))
        say(f"tail {b.model}/{b.split} -> tail.onnx")
        _export(_TailGraph(model, input_hw), feature, tmp / "tail.onnx", "feature", "output", task.dense,
                {META_BUNDLE: b.bundle_id, META_TAIL: tail_weights})
        rungs: List[Dict] = []
        for r in b.rungs:
            net = b.load_rung(r.index)
            arrays, rate = _rung_arrays(net)
            stem = f"rung-{r.index:02d}"
            say(f"rung {r.index} (lambda {r.lam:g}) -> {stem}.onnx, {stem}.safetensors")
            y_hw = net.latent_shape(tuple(feature.shape[-2:]))
            _export(_SynthesisGraph(net), torch.zeros(1, b.config.latent, *y_hw), tmp / f"{stem}.onnx", "y_hat",
                    "feature", True, {META_BUNDLE: b.bundle_id, META_RUNG: str(r.index)})
            save_file(arrays, str(tmp / f"{stem}.safetensors"))
            rungs.append({"index": r.index, "onnx": f"{stem}.onnx", "arrays": f"{stem}.safetensors",
                          "stride": b.config.stride, "latent": b.config.latent,
                          "variable": isinstance(net.rate, VariableRateHyperprior), **rate})
        shutil.copy(b.root / "manifest.json", tmp / "manifest.json")
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        manifest = {
            "format": CLOUD_FORMAT,
            "package_id": package_id(files, b.bundle_id),
            "bundle_id": b.bundle_id,
            "model": b.model,
            "split": b.split,
            "tail_weights": tail_weights,
            "head_weights": model.fingerprints()["head"],  # what the server's metadata tells edges (no head here)
            "task": task.name,
            "num_classes": spec.num_classes,
            "class_names": list(task.class_names(spec)),
            "input_size": list(input_hw),
            "feature_stride": b.feature_stride,
            "feature_shape": list(feature.shape[1:]),
            "opset": OPSET,
            "exported_with": {"torch": torch.__version__},
            "tail": "tail.onnx",
            "rungs": rungs,
            "files": files,
        }
        (tmp / CLOUD_JSON).write_text(json.dumps(manifest, indent=2) + "\n")
        for p in tmp.iterdir():
            p.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        out.chmod(0o755)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
