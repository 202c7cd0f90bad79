"""Rate models: the entropy model that both estimates the rate during training and codes ``y`` for real.

Three interchangeable models share one interface, so that the ablation of the method is one flag:

``hyperprior`` (the method's neural rate estimator; Balle et al. 2018, with means as in Minnen et al. 2018)::

    y ──► h_a ──► z ──► Q ──► EntropyBottleneck ──► z_hat ──► h_s ──► (scales, means)
    y ──► Q ──────────────────► GaussianConditional(scales, means) ──► y_hat

``factorized`` (Entropic Student style): one learned density per channel of ``y``, no side information.

``static`` (the seed code's approach): a fixed quantiser step ``qp`` and a single static symbol table
shared by every latent element, no side information (coded with rANS instead of the seed's Huffman).

Training uses additive uniform noise for the likelihoods and a straight-through rounding for the
reconstruction that the decoder sees ("mixed" quantisation), so the tail trains on what it will get.
Every model exposes ``compress`` (per image: payloads + a CRC of the integer symbols) and
``decompress``; CompressAI's entropy models and rANS coder do the coding. Every model is a CompressAI
``CompressionModel`` (its ``load_state_dict``, which resizes the CDF buffers to the stored tables,
``update`` and ``aux_loss``); whatever CompressAI keeps private is read in ``compressai_adapter``.
"""

from __future__ import annotations

import abc
import inspect
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..bitstream import symbols_crc as _symbols_crc
from .compressai_adapter import (  # noqa: F401 (_Tables, _padded, rans_*, scale_indexes: re-exported)
    CompressionModel, EntropyBottleneck, GaussianConditional, _padded, _Tables, channel_indexes, medians,
    quantize_ste, rans_decode, rans_encode, scale_indexes,
)
from .integer import IntHyperSynthesis
from .layers import make_hyper_analysis, make_hyper_synthesis

__all__ = ["RateModel", "HyperpriorRate", "FactorizedRate", "StaticRate", "RATE_MODELS", "build_rate_model"]

HW = Tuple[int, int]


def symbols_crc(*symbols: Tensor, crc: int = 0) -> int:
    """CRC32 of integer symbols (``shared.bitstream.symbols_crc``, which the torch-free edge calls too)."""
    return _symbols_crc(*(s.detach().to("cpu", torch.int32).numpy() for s in symbols), crc=crc)


def scale_table(lo: float = 0.11, hi: float = 16.0, levels: int = 64) -> Tensor:
    """Scales of the Gaussian CDF tables. CompressAI's default reaches 256 in 13% steps; the scales
    our hyper-decoders predict stay below ~2 (measured on the shipped ladder), so a table up to 16 in
    8% steps fits them more closely, and its short CDFs make files smaller and coding faster.
    Larger scales use the top table: still decodable, just a few more bits."""
    return torch.exp(torch.linspace(np.log(lo), np.log(hi), levels))


def _crop(x: Tensor, hw: HW) -> Tensor:
    return x[..., : hw[0], : hw[1]]


class RateModel(CompressionModel, abc.ABC):
    """Common interface of the rate models: a CompressAI ``CompressionModel`` (forward / compress /
    decompress / update / aux_loss; ``load_state_dict`` resizes the CDF buffers to the stored tables)."""

    kind: ClassVar[str]
    n_payloads: ClassVar[int]

    @abc.abstractmethod
    def forward(self, y: Tensor) -> Dict:
        """Training path: ``{"y_hat": ..., "likelihoods": {"y": ..., ["z": ...]}}``."""

    def side_shape(self, y_hw: HW) -> Optional[HW]:
        """Spatial shape of the side information for a latent of shape ``y_hw`` (None if there is none)."""
        return None

    @abc.abstractmethod
    def compress(self, y: Tensor) -> List[Tuple[List[bytes], int]]:
        """Per image of the batch: ``(payloads, symbols_crc)``."""

    @abc.abstractmethod
    def decompress(self, payloads: List[bytes], y_hw: HW) -> Tuple[Tensor, int]:
        """One image: ``(y_hat [1, C, h, w], symbols_crc)``."""

    def entropy_models(self) -> List[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (EntropyBottleneck, GaussianConditional))]

    def update(self, force: bool = True, *, scale_table: Optional[Tensor] = None,
               update_quantiles: bool = False) -> bool:
        """Build the quantised CDF tables once, after training; they travel in the state dict.
        ``CompressionModel.update`` with our defaults: ``force`` and the model's own ``scale_table``."""
        if scale_table is None:
            scale_table = getattr(self, "scale_table", None)
        return super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)

    scale_table: Tensor  # set by models that use a GaussianConditional


def _median_offsets(eb: EntropyBottleneck) -> Tensor:
    """The medians as (1, C, 1, 1), detached: what the coded symbols are offsets from."""
    return medians(eb).detach().reshape(1, -1, 1, 1)


def _eb_symbols(eb: EntropyBottleneck, z: Tensor) -> Tensor:
    return torch.round(z - _median_offsets(eb)).int()


HYPER_DECODERS = ("integer", "float")


class HyperpriorRate(RateModel):
    """Mean-scale hyperprior: the method's neural rate estimator.

    ``hyper_decoder="integer"`` (the default) makes ``h_s`` an integer network whose table indexes and
    means are bit-identical on every device (``integer.py``); ``"float"`` is the classic float
    ``h_s`` + scale search, kept for comparison: its decoding depends on the device's arithmetic.
    """

    kind = "hyperprior"
    n_payloads = 2

    def __init__(self, latent: int, hyper: int = 32, hyper_stride: int = 4, means: bool = True,
                 hyper_decoder: str = "integer"):
        super().__init__()
        if hyper_decoder not in HYPER_DECODERS:
            raise ValueError(f"hyper_decoder must be one of {HYPER_DECODERS}, got {hyper_decoder!r}")
        self.latent, self.hyper, self.hyper_stride, self.means = latent, hyper, hyper_stride, means
        self.integer = hyper_decoder == "integer"
        self.h_a = make_hyper_analysis(latent, hyper, hyper_stride)
        self.register_buffer("scale_table", scale_table(), persistent=False)
        if self.integer:
            self.h_s = IntHyperSynthesis(hyper, latent, hyper_stride, means, levels=len(self.scale_table))
        else:
            self.h_s = make_hyper_synthesis(hyper, latent * (2 if means else 1), hyper_stride)
        self.entropy_bottleneck = EntropyBottleneck(hyper)
        self.gaussian_conditional = GaussianConditional(None)
        self._eb_tables, self._gc_tables = _Tables(), _Tables()

    def side_shape(self, y_hw: HW) -> HW:
        h, w = y_hw
        for _ in range(int(np.log2(self.hyper_stride))):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def _params(self, z_hat: Tensor, y_hw: HW) -> Tuple[Tensor, Optional[Tensor]]:
        p = _crop(self.h_s(z_hat), y_hw)
        if self.means:
            scales, means = p.chunk(2, 1)
            return scales, means
        return p, None

    def _table_scales(self, idx: Tensor) -> Tensor:
        """Scale of (real-valued, straight-through) table indexes: the table is log-spaced."""
        log_t = torch.log(self.scale_table)
        return torch.exp(log_t[0] + idx * (log_t[-1] - log_t[0]) / (len(log_t) - 1))

    def _int_params(self, z_sym: Tensor, y_hw: HW) -> Tuple[Tensor, Optional[Tensor]]:
        """Exact path: (table indexes, means) from the integer z symbols."""
        idx, means = self.h_s.exact(z_sym)
        return _crop(idx, y_hw).int(), (_crop(means, y_hw) if means is not None else None)

    def forward(self, y: Tensor) -> Dict:
        z = self.h_a(y)
        _, z_lik = self.entropy_bottleneck(z)
        z_med = medians(self.entropy_bottleneck)
        if self.integer and not self.training and self.h_s.exported():
            # evaluation of an exported model: exactly what coding uses (indexes and means of the integer path)
            idx, means = self._int_params(torch.round(z - z_med), y.shape[-2:])
            scales = self._table_scales(idx.to(y.dtype))
        elif self.integer:
            t, means = self.h_s(quantize_ste(z - z_med))
            t, means = _crop(t, y.shape[-2:]), (_crop(means, y.shape[-2:]) if means is not None else None)
            scales = self._table_scales(self.h_s.indexes_from_logits(t))
        else:
            scales, means = self._params(quantize_ste(z - z_med) + z_med, y.shape[-2:])
        _, y_lik = self.gaussian_conditional(y, scales, means=means)
        y_hat = quantize_ste(y - means) + means if means is not None else quantize_ste(y)
        return {"y_hat": y_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    def side_symbols(self, y: Tensor) -> Tensor:
        """The integer z symbols the encoder codes for latent ``y`` (and the decoder recovers)."""
        return _eb_symbols(self.entropy_bottleneck, self.h_a(y))

    def coding_params(self, z_sym: Tensor, y_hw: HW) -> Tuple[Tensor, Optional[Tensor]]:
        """(table indexes, means) of y from the z symbols: what both coder sides compute."""
        if self.integer:
            return self._int_params(z_sym, y_hw)
        z_med = _median_offsets(self.entropy_bottleneck)
        scales, means = self._params(z_sym.to(z_med.dtype) + z_med, y_hw)
        return scale_indexes(self.gaussian_conditional, scales), means

    def update(self, force: bool = True, *, scale_table: Optional[Tensor] = None,
               update_quantiles: bool = False) -> bool:
        updated = super().update(force=force, scale_table=scale_table, update_quantiles=update_quantiles)
        if self.integer:
            self.h_s.export()
        return updated

    def compress(self, y: Tensor) -> List[Tuple[List[bytes], int]]:
        # One image at a time: the decoder recomputes h_s(z_hat) for a single image, and a batched
        # convolution may round differently from a single one (a different kernel blocking), which
        # would move a scale to another table and desynchronise the decoder.
        return [self._compress_one(y[i : i + 1]) for i in range(y.shape[0])]

    def code_side(self, y: Tensor) -> Tuple[Tensor, bytes, Tensor, Optional[Tensor]]:
        """One image's side information: (z symbols, z payload, y's table indexes, y's means)."""
        z_sym = self.side_symbols(y)
        z_string = rans_encode(self.entropy_bottleneck, self._eb_tables, z_sym, channel_indexes(z_sym.shape))
        return (z_sym, z_string, *self.coding_params(z_sym, y.shape[-2:]))

    def _compress_one(self, y: Tensor) -> Tuple[List[bytes], int]:
        gc = self.gaussian_conditional
        z_sym, z_string, indexes, means = self.code_side(y)
        y_sym = gc.quantize(y, "symbols", means)
        y_string = rans_encode(gc, self._gc_tables, y_sym, indexes)
        return [y_string, z_string], symbols_crc(y_sym[0], z_sym[0])

    def decompress(self, payloads: List[bytes], y_hw: HW) -> Tuple[Tensor, int]:
        y_str, z_str = payloads
        gc, eb = self.gaussian_conditional, self.entropy_bottleneck
        z_hw = self.side_shape(y_hw)
        z_sym = rans_decode(eb, self._eb_tables, z_str, channel_indexes((1, self.hyper, *z_hw)))
        indexes, means = self.coding_params(z_sym, y_hw)
        y_sym = rans_decode(gc, self._gc_tables, y_str, indexes)
        y_hat = gc.dequantize(y_sym, means)
        return y_hat, symbols_crc(y_sym[0], z_sym[0])


class FactorizedRate(RateModel):
    """Factorized prior only (Entropic Student): one non-parametric density per latent channel."""

    kind = "factorized"
    n_payloads = 1

    def __init__(self, latent: int):
        super().__init__()
        self.latent = latent
        self.entropy_bottleneck = EntropyBottleneck(latent)
        self._tables = _Tables()

    def forward(self, y: Tensor) -> Dict:
        _, y_lik = self.entropy_bottleneck(y)
        med = medians(self.entropy_bottleneck)
        return {"y_hat": quantize_ste(y - med) + med, "likelihoods": {"y": y_lik}}

    def compress(self, y: Tensor) -> List[Tuple[List[bytes], int]]:
        eb = self.entropy_bottleneck
        sym = _eb_symbols(eb, y)
        idx = channel_indexes(sym[:1].shape)
        return [([rans_encode(eb, self._tables, sym[i], idx)], symbols_crc(sym[i])) for i in range(y.shape[0])]

    def decompress(self, payloads: List[bytes], y_hw: HW) -> Tuple[Tensor, int]:
        eb = self.entropy_bottleneck
        (s,) = payloads
        sym = rans_decode(eb, self._tables, s, channel_indexes((1, self.latent, *y_hw)))
        med = _median_offsets(eb)
        return sym.to(med.dtype) + med, symbols_crc(sym[0])


class StaticRate(RateModel):
    """The seed's approach: fixed step ``qp``, one static table for every symbol, no side information."""

    kind = "static"
    n_payloads = 1

    def __init__(self, latent: int, qp: float = 1.0):
        super().__init__()
        self.latent, self.qp = latent, float(qp)
        self.entropy_bottleneck = EntropyBottleneck(1)  # one table shared by all channels
        self._tables = _Tables()

    @staticmethod
    def _flat(v: Tensor) -> Tensor:  # (B, C, h, w) -> (B, 1, C*h, w): every element uses the same table
        b, c, h, w = v.shape
        return v.reshape(b, 1, c * h, w)

    def forward(self, y: Tensor) -> Dict:
        v = self._flat(y / self.qp)
        _, lik = self.entropy_bottleneck(v)
        med = medians(self.entropy_bottleneck)
        y_hat = (quantize_ste(y / self.qp - med) + med) * self.qp
        return {"y_hat": y_hat, "likelihoods": {"y": lik}}

    def compress(self, y: Tensor) -> List[Tuple[List[bytes], int]]:
        eb = self.entropy_bottleneck
        sym = _eb_symbols(eb, self._flat(y / self.qp))
        idx = channel_indexes(sym[:1].shape)
        return [([rans_encode(eb, self._tables, sym[i], idx)], symbols_crc(sym[i])) for i in range(y.shape[0])]

    def decompress(self, payloads: List[bytes], y_hw: HW) -> Tuple[Tensor, int]:
        eb = self.entropy_bottleneck
        (s,) = payloads
        sym = rans_decode(eb, self._tables, s, channel_indexes((1, 1, self.latent * y_hw[0], y_hw[1])))
        med = _median_offsets(eb)
        v_hat = sym.to(med.dtype) + med
        return v_hat.reshape(1, self.latent, *y_hw) * self.qp, symbols_crc(sym[0])


RATE_MODELS = {m.kind: m for m in (HyperpriorRate, FactorizedRate, StaticRate)}


def _options(cls) -> Tuple[List[str], bool]:
    """(keyword options of ``cls``'s constructor besides ``latent``, whether it takes ``**kwargs``)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, latent
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def build_rate_model(kind: str, latent: int, **options) -> RateModel:
    """The ``kind`` rate model with the ``options`` its constructor takes. ``options`` may hold every rate
    model's options (a ``BottleneckConfig`` has them all): those of other models are left out, and one that no
    registered model takes is an error."""
    try:
        cls = RATE_MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown rate model {kind!r}; choose from {sorted(RATE_MODELS)}") from None
    known = {n for m in RATE_MODELS.values() for n in _options(m)[0]}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"no rate model takes the option(s) {unknown}")
    names, takes_any = _options(cls)
    return cls(latent, **(options if takes_any else {k: v for k, v in options.items() if k in names}))
