"""Do two edges agree? The torch-free edge (ONNX Runtime + numpy) and the PyTorch edge encode the same images at
every rung (or measured quality level), the cloud decodes both: bytes, checksum failures, top-1 and bpp compared.

The figures ``benchmarks/edge_runtime.py`` reports, and what ``tests/test_edge_runtime.py`` holds them to on each
bundle; installed so that both import one definition. The encoders and the decoder come in as arguments (duck typed:
``preprocess``, ``encode_array`` / ``encode_variable``, ``codec`` + ``head``; ``decode``), so this module imports
no edge or cloud package.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["compare_edges"]


def compare_edges(bundle, images: Sequence[Path], onnx_encoder, torch_encoder, decoder,
                  rungs: Optional[Sequence[int]] = None, progress: bool = False) -> Dict:
    """Encode every (image, rung) with both edges, decode both on the cloud: the agreement figures. A
    variable-rate bundle: every (image, measured quality level) instead (``shared.evaluation.default_levels``)."""
    from shared.bitstream import BitstreamError

    scheme = bundle.scheme
    variable = scheme.variable
    # a ladder's points are (rung, None); a variable-rate network's (0, level), and "rungs" are levels there
    points = scheme.measure_points(levels=rungs) if variable else scheme.measure_points(rungs)
    rungs = [q if variable else r for r, q in points]
    n = same_bytes = crc_fail = agree = 0
    bpp_onnx: Dict[int, List[float]] = {r: [] for r in rungs}
    bpp_torch: Dict[int, List[float]] = {r: [] for r in rungs}
    it = [(p, r) for p in images for r in rungs]
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"agreement {bundle.model}/{bundle.split}", unit="pair", leave=False)
    xs = {}
    for path, r in it:
        if path not in xs:
            xs = {path: (onnx_encoder.preprocess(path), torch_encoder.preprocess(path))}
        x_onnx, x_torch = xs[path]
        if variable:
            a = onnx_encoder.encode_variable(x_onnx, level=r).message
            with _no_grad():
                (b,) = torch_encoder.codec.encode(torch_encoder.head(x_torch), tuple(x_torch.shape[-2:]), level=r)
        else:
            a = onnx_encoder.encode_array(x_onnx, r)
            with _no_grad():
                (b,) = torch_encoder.codec.encode(torch_encoder.head(x_torch), tuple(x_torch.shape[-2:]), r)
        n += 1
        same_bytes += a == b
        try:
            pa = decoder.decode(a)
        except BitstreamError:
            crc_fail += 1
            continue
        pb = decoder.decode(b)
        agree += pa.label == pb.label
        bpp_onnx[r].append(pa.bpp)
        bpp_torch[r].append(pb.bpp)
    mean = lambda v: statistics.fmean(v) if v else float("nan")  # noqa: E731
    per_rung = {r: {"bpp_onnx": mean(bpp_onnx[r]), "bpp_torch": mean(bpp_torch[r])} for r in rungs}
    worst = max(abs(v["bpp_onnx"] / v["bpp_torch"] - 1) for v in per_rung.values())
    return {"pairs": n, "same_bytes": same_bytes, "crc_failures": crc_fail, "top1_agree": agree / max(n, 1),
            "bpp_rel_diff_max": worst, "per_rung": per_rung}


def _no_grad():
    import torch

    return torch.no_grad()
