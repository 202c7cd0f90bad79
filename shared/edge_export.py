"""Export a bundle's edge half for a torch-free runtime: ONNX graphs + plain arrays (``splitinfer export-edge``).

An edge package is a folder::

    manifest.json          the bundle's manifest, unchanged: bundle id, rungs, measured bpp (rung selection)
    edge.json              format, package id (content hash), bundle id, head weights fingerprint, preprocessing,
                           classes (number and label set: the colours the edge draws masks in),
                           per rung: rate model, files, integer h_s layer specs; every file's SHA-256
    head.onnx              image (N, 3, H, W) -> split feature, the frozen head of the backbone; its metadata
                           binds it to the bundle id and the head's weights fingerprint (``shared.edge_format``)
    rung-00.onnx           split feature -> y (and z for a hyperprior): g_a (+ h_a), float; bound to the bundle
                           id and its rung
    rung-00.safetensors    what coding needs, as plain arrays: CDF tables, z medians, the integer h_s's int8
                           weights, int64 multipliers and biases (``edge_client.package`` reads it with numpy)

The float parts run in ONNX Runtime; the integer ``h_s`` and the rANS encoder run in numpy
(``shared.codec.integer_numpy``, ``shared.codec.rans``), so the edge needs neither torch nor compressai and its
bitstreams are the ones :class:`shared.pipeline.LadderCodec` writes (``tests/test_edge_runtime.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .bundle import Bundle, resolve_bundle
from .edge_format import EDGE_FORMAT, META_BUNDLE, META_HEAD, META_RUNG, package_id
from .codec.compressai_adapter import GDN
from .codec.bottleneck import Bottleneck
from .codec.compressai_adapter import cdf_tables, medians
from .codec.integer import IntHyperSynthesis
from .codec.rate_models import FactorizedRate, HyperpriorRate, StaticRate
from .codec.variable_rate import VariableRateHyperprior

__all__ = ["EDGE_FORMAT", "export_edge", "package_id"]

OPSET = 17


class _PlainGDN(nn.Module):
    """GDN with its reparametrised beta and gamma frozen into constants: CompressAI's ``LowerBound`` autograd
    function has no ONNX form, and at inference the reparametrisation is a constant anyway."""

    def __init__(self, gdn: GDN):
        super().__init__()
        c = gdn.beta.numel()
        self.inverse = gdn.inverse
        self.register_buffer("beta", gdn.beta_reparam(gdn.beta).detach().clone())
        self.register_buffer("gamma", gdn.gamma_reparam(gdn.gamma).detach().reshape(c, c, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        norm = nn.functional.conv2d(x * x, self.gamma, self.beta)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))


def _plain(module: nn.Module) -> nn.Module:
    m = copy.deepcopy(module)
    for name, child in list(m.named_children()):
        setattr(m, name, _PlainGDN(child) if isinstance(child, GDN) else _plain(child))
    return m


class _RungGraph(nn.Module):
    """Split feature -> y (and z): the float part of one rung's encoder, as ``Bottleneck`` computes it."""

    def __init__(self, net: Bottleneck):
        super().__init__()
        self.g_a = _plain(net.g_a)
        self.register_buffer("feat_mean", net.feat_mean.detach().clone())
        self.register_buffer("feat_std", net.feat_std.detach().clone())
        self.gain = net.latent_gain.detach().exp().clone() if net.cfg.gain else None
        self.h_a = _plain(net.rate.h_a) if isinstance(net.rate, HyperpriorRate) else None

    def forward(self, feature: Tensor):
        y = self.g_a((feature - self.feat_mean) / self.feat_std)
        if self.gain is not None:
            y = y * self.gain
        return (y, self.h_a(y)) if self.h_a is not None else y


def _onnx(module: nn.Module, example: Tensor, path: Path, inputs: List[str], outputs: List[str],
          axes: Optional[Dict[str, Dict[int, str]]] = None) -> None:
    """Export ``module`` to ONNX; ``axes``: its dynamic axes (default: batch and spatial on every input and output)."""
    module = module.eval()
    axes = axes or {n: {0: "batch", 2: "height", 3: "width"} for n in inputs + outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False): it needs no onnxscript and takes the fx head as it is. torch
        # marks it deprecated, and notes Slice ops it cannot fold (harmless); move to dynamo=True when it goes.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _bind(path: Path, props: Dict[str, str]) -> None:
    """Write ``props`` into the graph's ``metadata_props``: what ties it to its bundle, head and rung
    (``shared.edge_format``), checked by the edge on load."""
    import onnx

    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _tables(prefix: str, em) -> Dict[str, Tensor]:
    cdf, lengths, offsets = cdf_tables(em)
    return {f"{prefix}.cdf": cdf, f"{prefix}.cdf_length": lengths, f"{prefix}.offset": offsets}


def _medians(em) -> Tensor:
    return medians(em).detach().reshape(-1).to(torch.float32)


def _int_layers(h_s: IntHyperSynthesis, prefix: str):
    arrays, specs = {}, []
    for i, (conv, up) in enumerate(zip(h_s.convs, h_s.ups)):
        arrays[f"{prefix}{i}.w"] = conv.w_int.clone()
        arrays[f"{prefix}{i}.mult"] = conv.mult.clone()
        arrays[f"{prefix}{i}.bias"] = conv.bias_int.clone()
        specs.append({"lo": conv.lo, "hi": conv.hi, "up": int(up)})
    return arrays, specs


def _rung_arrays(net: Bottleneck):
    """(arrays, spec) of everything the edge needs to code ``y`` besides the ONNX graph."""
    rate = net.rate
    if isinstance(rate, HyperpriorRate):
        if not rate.integer:
            raise ValueError("a floating-point hyper-decoder cannot run bit-exactly on another runtime; convert the "
                             "bundle with `splitinfer migrate` first")
        arrays = {**_tables("y", rate.gaussian_conditional), **_tables("z", rate.entropy_bottleneck),
                  "z.medians": _medians(rate.entropy_bottleneck)}
        layers, specs = _int_layers(rate.h_s, "h_s.")
        arrays.update(layers)
        spec = {"rate_model": "hyperprior", "hyper": rate.hyper, "hyper_stride": rate.hyper_stride,
                "means": rate.means, "levels": rate.h_s.levels, "h_s": specs}
        if isinstance(rate, VariableRateHyperprior):  # the same arrays; the edge shifts indexes by the level
            spec.update(rate_model=rate.kind, quality_levels=list(rate.levels), log_ratio=rate.log_ratio)
    elif isinstance(rate, FactorizedRate):
        arrays = {**_tables("y", rate.entropy_bottleneck), "y.medians": _medians(rate.entropy_bottleneck)}
        spec = {"rate_model": "factorized"}
    elif isinstance(rate, StaticRate):
        arrays = {**_tables("y", rate.entropy_bottleneck), "y.medians": _medians(rate.entropy_bottleneck)}
        spec = {"rate_model": "static", "qp": rate.qp}
    else:
        raise ValueError(f"no edge export for rate model {type(rate).__name__}")
    return {k: v.detach().contiguous() for k, v in arrays.items()}, spec


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_edge(bundle, out: Path | str, weights: Optional[str] = None, model=None, progress=None) -> Path:
    """Write the edge package of ``bundle`` (a Bundle, folder, or None: the embedded ladder) to ``out``.

    ``model``: an already loaded :class:`SplitModel` for the bundle (default: built from ``weights``).
    ``progress``: a callable taking a line of text (default: silent)."""
    from .models import load_split_model

    say = progress or (lambda _msg: None)
    b: Bundle = resolve_bundle(bundle)
    if model is None:
        model = load_split_model(b.model, b.split, weights)
    b.check_backbone(model, ("head",))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pre = model.spec.preprocess
    h, w = pre.input_size
    tmp = Path(tempfile.mkdtemp(prefix=".edge-", dir=out.parent))
    try:
        image = torch.zeros(1, 3, h, w)
        say(f"head {b.model}/{b.split} -> head.onnx")
        _onnx(model.head, image, tmp / "head.onnx", ["image"], ["feature"])
        head_weights = model.fingerprints()["head"]
        _bind(tmp / "head.onnx", {META_BUNDLE: b.bundle_id, META_HEAD: head_weights})
        with torch.no_grad():
            feature = model.head(image)
        rungs = []
        for r in b.rungs:
            net = b.load_rung(r.index)
            arrays, spec = _rung_arrays(net)
            stem = f"rung-{r.index:02d}"
            say(f"rung {r.index} (lambda {r.lam:g}) -> {stem}.onnx, {stem}.safetensors")
            hyper = spec["rate_model"] in ("hyperprior", VariableRateHyperprior.kind)
            _onnx(_RungGraph(net), feature, tmp / f"{stem}.onnx", ["feature"], ["y", "z"] if hyper else ["y"])
            _bind(tmp / f"{stem}.onnx", {META_BUNDLE: b.bundle_id, META_RUNG: str(r.index)})
            save_file(arrays, str(tmp / f"{stem}.safetensors"))
            rungs.append({"index": r.index, "onnx": f"{stem}.onnx", "arrays": f"{stem}.safetensors",
                          "stride": b.config.stride, "latent": b.config.latent, **spec})
        shutil.copy(b.root / "manifest.json", tmp / "manifest.json")
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        manifest = {
            "format": EDGE_FORMAT,
            "package_id": package_id(files, b.bundle_id),
            "bundle_id": b.bundle_id,
            "model": b.model,
            "split": b.split,
            "head_weights": head_weights,
            "num_classes": model.spec.num_classes,
            "labels": model.spec.labels,  # the label set: the torch-free edge draws masks in its colours
            "feature_stride": b.feature_stride,
            "preprocess": {"input_size": list(pre.input_size), "resize": pre.resize, "mean": list(pre.mean),
                           "std": list(pre.std)},
            "opset": OPSET,
            "exported_with": {"torch": torch.__version__},
            "head": "head.onnx",
            "rungs": rungs,
            "files": files,
        }
        (tmp / "edge.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for p in tmp.iterdir():
            p.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        out.chmod(0o755)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
