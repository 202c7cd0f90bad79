"""One hyperprior for every rate: a quantiser step chosen per image by an integer quality level.

A ladder trains one bottleneck per lambda. Here one set of weights serves a continuous range of rates
(Kamisli et al., DCC 2024, shipped in CompressAI 1.2.8 as ``models/vbr.py``): the latent is quantised with a
step ``delta`` instead of 1, and the entropy model sees ``y / delta``::

    symbols = round((y - mu) / delta)        y_hat = symbols * delta + mu        scale = sigma / delta

What we do differently from CompressAI's VBR models, and why: their step is a learned float and their table
index is searched from the float ``sigma / delta``, so a last-bit difference between two devices can pick
another CDF table and desynchronise the decoder. Here ``delta = r ** -q`` where ``r`` is the ratio between
neighbouring scales of the (log-spaced) CDF table and ``q`` an integer *quality level*. Dividing a scale by
``delta`` is then exactly a shift of its table index by ``q``: the integer hyper-decoder's index plus ``q``,
clamped to the table. Indexes stay integers computed from integers, bit-identical on every device; ``delta``
and ``mu`` (floats) only touch the symbols the encoder picks and the values the decoder reconstructs.

The level travels in the bitstream (format 2). Higher ``q``: a finer step, more bits.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor

from .compressai_adapter import cdf_tables, channel_indexes, medians, quantize_ste, rans_decode, rans_encode
from ..bitstream import level_symbols_crc
from .rate_models import RATE_MODELS, HW, HyperpriorRate, _crop

__all__ = ["VariableRateHyperprior", "Level", "lambda_at"]

Level = Union[int, Tensor]  # an int, or per image a (B, 1, 1, 1) tensor of integer values (training)


def lambda_at(q: float, levels: Tuple[int, int], lambdas: Tuple[float, float]) -> float:
    """The lambda level ``q`` trains with: log-linear from ``min(lambdas)`` at the coarsest level to ``max(lambdas)``
    at the finest (training draws levels with it; evaluation reports it)."""
    lo, hi = levels
    lam_lo, lam_hi = min(lambdas), max(lambdas)
    return lam_lo * (lam_hi / lam_lo) ** ((q - lo) / max(1, hi - lo))


class VariableRateHyperprior(HyperpriorRate):
    """The mean-scale hyperprior with the integer hyper-decoder, quantised with step ``r ** -q``.

    ``levels = (lo, hi)``: the quality levels the network was trained on and serves. ``forward``, ``compress``
    and ``decompress`` take ``level=q``."""

    kind = "vr-hyperprior"

    def __init__(self, latent: int, hyper: int = 32, hyper_stride: int = 4, means: bool = True,
                 hyper_decoder: str = "integer", levels: Tuple[int, int] = (0, 40)):
        if hyper_decoder != "integer":
            raise ValueError("the variable-rate hyperprior needs the integer hyper-decoder (its levels shift integer "
                             "table indexes)")
        if not means:
            raise ValueError("the variable-rate hyperprior needs means (symbols are centred before the step)")
        super().__init__(latent, hyper=hyper, hyper_stride=hyper_stride, means=means, hyper_decoder=hyper_decoder)
        lo, hi = (int(v) for v in levels)
        if lo > hi:
            raise ValueError(f"levels must be (lo, hi) with lo <= hi, got {levels}")
        self.levels = (lo, hi)
        t = self.scale_table.double()
        self.log_ratio = float((t[-1].log() - t[0].log()) / (len(t) - 1))  # log r: one table step

    # -- the level ----------------------------------------------------------------------------------
    def check_level(self, q: int) -> int:
        q = int(q)
        if not self.levels[0] <= q <= self.levels[1]:
            raise ValueError(f"quality level {q} is outside this network's range {self.levels[0]}..{self.levels[1]}")
        return q

    def step(self, q: Level) -> Union[float, Tensor]:
        """The quantiser step ``r ** -q`` (float64 arithmetic, for an int ``q``)."""
        if isinstance(q, Tensor):
            return torch.exp(-q * self.log_ratio)
        return math.exp(-int(q) * self.log_ratio)

    def shifted(self, idx: Tensor, q: Level) -> Tensor:
        """Table indexes of ``sigma / delta``: the index shifted by ``q``, clamped to the table."""
        return (idx + q).clamp(0, len(self.scale_table) - 1)

    # -- training / evaluation ------------------------------------------------------------------------
    def forward(self, y: Tensor, level: Level = 0) -> Dict:
        z = self.h_a(y)
        _, z_lik = self.entropy_bottleneck(z)
        z_med = medians(self.entropy_bottleneck)
        if not self.training and self.h_s.exported():
            idx, means = self._int_params(torch.round(z - z_med), y.shape[-2:])
            idx = idx.to(y.dtype)
        else:
            t, means = self.h_s(quantize_ste(z - z_med))
            t, means = _crop(t, y.shape[-2:]), _crop(means, y.shape[-2:])
            idx = self.h_s.indexes_from_logits(t)
        q = level.to(y) if isinstance(level, Tensor) else float(level)
        delta = self.step(level.to(y) if isinstance(level, Tensor) else int(level))
        scales = self._table_scales(self.shifted(idx, q))
        _, y_lik = self.gaussian_conditional(y / delta, scales, means=means / delta)
        y_hat = quantize_ste((y - means) / delta) * delta + means
        return {"y_hat": y_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    # -- coding -----------------------------------------------------------------------------------------
    def symbols(self, y: Tensor, means: Tensor, q: int) -> Tensor:
        """The integer symbols of ``y`` at level ``q`` (what the torch-free edge computes in numpy too)."""
        return torch.round((y - means) / self.step(q)).int()

    def compress(self, y: Tensor, level: int = 0) -> List[Tuple[List[bytes], int]]:
        q = self.check_level(level)
        return [self._compress_level(y[i : i + 1], q) for i in range(y.shape[0])]

    def _compress_level(self, y: Tensor, q: int) -> Tuple[List[bytes], int]:
        z_sym, z_string, indexes, means = self.code_side(y)
        y_sym = self.symbols(y, means, q)
        y_string = rans_encode(self.gaussian_conditional, self._gc_tables, y_sym, self.shifted(indexes, q))
        return [y_string, z_string], level_symbols_crc(q, y_sym[0].numpy(), z_sym[0].numpy())

    def level_coder(self, y: Tensor):
        """One image's latent (1, C, h, w) ready for rate control at every level (``shared.rate``):
        (LevelCoder, z payload, z symbols). The y payload it writes equals :meth:`compress`'s at that level."""
        from .levels import LevelCoder
        from .rans import RansTables

        z_sym, z_string, idx, means = self.code_side(y)
        cdf, lengths, offsets = cdf_tables(self.gaussian_conditional)
        if getattr(self, "_np_key", None) != cdf.data_ptr():  # the y tables as numpy, converted once
            self._np_tables = RansTables(cdf.numpy(), lengths.numpy(), offsets.numpy())
            self._np_key = cdf.data_ptr()
        coder = LevelCoder(y[0].numpy(), means[0].numpy(), idx[0].numpy(), self._np_tables, self.log_ratio, self.levels)
        return coder, z_string, z_sym[0].numpy()

    def decompress(self, payloads: List[bytes], y_hw: HW, level: int = 0) -> Tuple[Tensor, int]:
        q = self.check_level(level)
        y_str, z_str = payloads
        gc, eb = self.gaussian_conditional, self.entropy_bottleneck
        z_hw = self.side_shape(y_hw)
        z_sym = rans_decode(eb, self._eb_tables, z_str, channel_indexes((1, self.hyper, *z_hw)))
        indexes, means = self.coding_params(z_sym, y_hw)
        y_sym = rans_decode(gc, self._gc_tables, y_str, self.shifted(indexes, q))
        y_hat = y_sym.to(means.dtype) * self.step(q) + means
        return y_hat, level_symbols_crc(q, y_sym[0].numpy(), z_sym[0].numpy())


RATE_MODELS[VariableRateHyperprior.kind] = VariableRateHyperprior
