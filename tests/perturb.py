"""Test support: ways another device's arithmetic differs from ours, as drop-in float perturbations of a
convolution (formerly ``shared/codec/arithmetic.py``; nothing here codes anything, so it does not ship).

Used by the determinism tests (``tests/test_determinism.py``) to show what they do to the
hyper-decoder's table indexes: a float ``h_s`` changes its indexes under them (and the decoder
desynchronises); the integer ``h_s`` (``integer.py``) does not.

Each perturbation is a ``conv(x, w, padding)`` with the signature of ``integer.conv_reference``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from shared.codec.integer import ConvFn, conv_reference

__all__ = ["round_mantissa", "PERTURBATIONS", "num_threads"]


def round_mantissa(t: Tensor, bits: int = 10) -> Tensor:
    """Round float32 values to ``bits`` explicit mantissa bits, to nearest even: what a GPU's TF32
    tensor cores do to a convolution's inputs (10 bits)."""
    drop = 23 - bits
    i = t.float().contiguous().view(torch.int32)
    lsb = (i >> drop) & 1
    i = (i + (1 << (drop - 1)) - 1 + lsb) & ~((1 << drop) - 1)
    return i.view(torch.float32)


@contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _float64(x: Tensor, w: Tensor, padding: int) -> Tensor:
    return F.conv2d(x.double(), w.double(), padding=padding).to(x.dtype)


def _tf32(x: Tensor, w: Tensor, padding: int) -> Tensor:
    # integers are exactly representable when small (the integer h_s's are), so this is the identity for them
    return F.conv2d(round_mantissa(x), round_mantissa(w), padding=padding).to(x.dtype)


def _threads(x: Tensor, w: Tensor, padding: int) -> Tensor:
    with num_threads(1 if torch.get_num_threads() > 1 else 4):
        return F.conv2d(x, w, padding=padding)


def _float32(x: Tensor, w: Tensor, padding: int) -> Tensor:
    return F.conv2d(x.float(), w.float(), padding=padding).to(x.dtype)


def _channels_last(x: Tensor, w: Tensor, padding: int) -> Tensor:
    # another memory layout selects other kernels (another blocking and summation order)
    return F.conv2d(x.contiguous(memory_format=torch.channels_last),
                    w.contiguous(memory_format=torch.channels_last), padding=padding).contiguous()


PERTURBATIONS: Dict[str, ConvFn] = {
    "reference": conv_reference,
    "float64": _float64,
    "float32": _float32,
    "tf32": _tf32,
    "threads": _threads,
    "channels_last": _channels_last,
}


@torch.no_grad()
def index_drift(rate, y: Tensor, names=tuple(PERTURBATIONS)) -> Dict[str, Dict[str, Dict[str, int]]]:
    """Code one image's latent ``y`` (1, C, h, w) with the reference arithmetic, then recompute the
    decoder's table indexes under each perturbation and decode the real rANS payload with them.

    Two paths of the same trained integer ``h_s`` (a ``HyperpriorRate``): ``float`` runs its float
    weights in plain floating point (what any float hyper-decoder does), ``integer`` its exported
    integer form. Returns ``{path: {perturbation: {"indexes": n_differing, "broken": 0|1}}}``, where
    broken means the decoded symbols differ from the encoded ones.
    """
    from shared.codec.compressai_adapter import rans_decode, rans_encode

    hs, gc = rate.h_s, rate.gaussian_conditional
    hw = y.shape[-2:]
    z_sym = rate.side_symbols(y)

    def params(path: str, conv: ConvFn):
        if path == "integer":
            idx, means = hs.exact(z_sym, conv)
        else:
            t, means = hs.float_forward(z_sym, conv)
            idx = torch.round(t).clamp(0, hs.levels - 1)
        return idx[..., : hw[0], : hw[1]].int(), (means[..., : hw[0], : hw[1]] if means is not None else None)

    out: Dict[str, Dict[str, Dict[str, int]]] = {}
    for path in ("float", "integer"):
        idx0, means0 = params(path, conv_reference)
        sym = gc.quantize(y, "symbols", means0)
        payload = rans_encode(gc, rate._gc_tables, sym, idx0)
        out[path] = {}
        for name in names:
            idx, _ = params(path, PERTURBATIONS[name])
            decoded = rans_decode(gc, rate._gc_tables, payload, idx)
            out[path][name] = {"indexes": int((idx != idx0).sum()), "broken": int(not torch.equal(decoded, sym))}
    return out
