"""The bottleneck unit inserted at a split point: ``g_a`` (edge), a rate model, ``g_s`` (cloud).

::

    feature ──► g_a ──► y ──► rate model (Q + entropy coding) ──► y_hat ──► g_s ──► feature_hat ──► tail
             (edge)                                                        (cloud)

Only this module trains; the backbone around it is frozen. ``forward`` is the training path and
returns likelihoods for the rate term; ``compress`` / ``decompress`` code real bytes.

A CompressAI ``CompressionModel``: its ``load_state_dict`` resizes the rate model's CDF buffers to the
stored tables (whatever the rate model), and its ``aux_loss`` sums the entropy bottlenecks' losses;
``update`` is the rate model's (our scale table, the integer ``h_s`` export).
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .compressai_adapter import CompressionModel
from .config import BottleneckConfig
from .layers import make_decoder, make_encoder
from . import variable_rate  # noqa: F401  (registers the "vr-hyperprior" rate model)
from .rate_models import HW, build_rate_model

__all__ = ["BottleneckConfig", "Bottleneck", "maybe_autocast"]


def maybe_autocast(like: Tensor, dtype: Optional[torch.dtype]):
    """Autocast on ``like``'s device to ``dtype``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(like.device.type, dtype=dtype)


class Bottleneck(CompressionModel):
    def __init__(self, cfg: BottleneckConfig):
        super().__init__()
        self.cfg = cfg
        self.g_a = make_encoder(cfg.in_channels, cfg.hidden, cfg.latent, cfg.stride)
        self.rate = build_rate_model(
            cfg.rate_model, cfg.latent, hyper=cfg.hyper, hyper_stride=cfg.hyper_stride, means=cfg.means, qp=cfg.qp,
            hyper_decoder=cfg.hyper_decoder, **({"levels": cfg.levels} if cfg.levels is not None else {}),
        )
        self.g_s = make_decoder(cfg.latent, cfg.dec_hidden, cfg.in_channels, cfg.stride)
        # Per-channel statistics of the split feature, fixed before training and stored with the
        # weights: g_a sees standardised features and g_s predicts standardised ones, which makes
        # every split point look alike to the optimiser.
        self.register_buffer("feat_mean", torch.zeros(1, cfg.in_channels, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, cfg.in_channels, 1, 1))
        if cfg.gain:
            self.latent_gain = nn.Parameter(torch.zeros(1, cfg.latent, 1, 1))  # log of the gain; exp(0) = 1

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        self.feat_mean.copy_(mean.reshape(self.feat_mean.shape))
        self.feat_std.copy_(std.reshape(self.feat_std.shape).clamp_min(1e-6))

    def _analysis(self, feat: Tensor) -> Tensor:
        y = self.g_a((feat - self.feat_mean) / self.feat_std)
        return y * self.latent_gain.exp() if self.cfg.gain else y

    def _synthesis(self, y_hat: Tensor, feat_hw: HW) -> Tensor:
        if self.cfg.gain:  # float, like g_s: the symbols (edge) and table indexes (integer h_s) do not depend on it
            y_hat = y_hat * (-self.latent_gain).exp()
        return self.g_s(y_hat)[..., : feat_hw[0], : feat_hw[1]] * self.feat_std + self.feat_mean

    def latent_shape(self, feat_hw: HW) -> HW:
        h, w = feat_hw
        s = self.cfg.stride
        return (h + s - 1) // s, (w + s - 1) // s

    def forward(self, feat: Tensor, amp: Optional[torch.dtype] = None, **level) -> Dict:
        """``level=q`` for a variable-rate bottleneck (an int, or per image a (B, 1, 1, 1) tensor).

        ``amp`` (training only, e.g. ``torch.bfloat16``): ``g_a`` and ``g_s`` run under autocast to that type. The
        rate model (quantisation, hyperprior, likelihoods) always sees float32: a bfloat16 ``y`` would carry 8
        significant bits, too few for the rate term."""
        with maybe_autocast(feat, amp):
            y = self._analysis(feat)
        out = self.rate(y.float(), **level)
        with maybe_autocast(feat, amp):
            feat_hat = self._synthesis(out["y_hat"], feat.shape[-2:])
        return {"feat_hat": feat_hat, "likelihoods": out["likelihoods"], "y": y}

    def likelihoods(self, feat: Tensor, **level) -> Dict:
        """The rate model's likelihoods of ``feat``'s latent (the rate estimate without running ``g_s``)."""
        return self.rate(self._analysis(feat), **level)["likelihoods"]

    @torch.no_grad()
    def compress(self, feat: Tensor, **level) -> List[Tuple[List[bytes], int]]:
        """Per image: ``(payloads, symbols_crc)``. The latent shape follows from the feature's."""
        return self.rate.compress(self._analysis(feat), **level)

    @torch.no_grad()
    def decompress(self, payloads: List[bytes], feat_hw: HW, **level) -> Tuple[Tensor, int]:
        y_hat, crc = self.rate.decompress(payloads, self.latent_shape(feat_hw), **level)
        return self._synthesis(y_hat, feat_hw), crc

    def update(self, force: bool = True, *, scale_table: Optional[Tensor] = None,
               update_quantiles: bool = False) -> bool:
        """The rate model's ``update`` (not ``CompressionModel``'s, which knows neither our scale table nor
        the integer hyper-decoder's export)."""
        return self.rate.update(force=force, scale_table=scale_table, update_quantiles=update_quantiles)

    def net_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith(".quantiles")]

    def param_groups(self, lr: float) -> List[Dict]:
        """Optimizer groups of :meth:`net_parameters`: the latent gain learns 10x faster (``lr_scale``)."""
        gain = [self.latent_gain] if self.cfg.gain else []
        rest = [p for p in self.net_parameters() if all(p is not g for g in gain)]
        groups = [{"params": rest, "lr": lr, "lr_scale": 1.0}]
        return groups + ([{"params": gain, "lr": 10 * lr, "lr_scale": 10.0}] if gain else [])

    def aux_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.endswith(".quantiles")]
