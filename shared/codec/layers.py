"""Analysis / synthesis transforms of the bottleneck unit.

The encoder (``g_a``) runs on the edge next to the head, so it is deliberately light: one strided
3x3 conv + GDN per factor of 2, then a 1x1 projection to the latent channels. The decoder (``g_s``)
runs in the cloud next to a larger tail and may afford a little more: a residual block at the
latent's resolution, then sub-pixel up-sampling.
"""

from __future__ import annotations

import math

from .compressai_adapter import GDN
from torch import nn

__all__ = ["make_encoder", "make_decoder", "make_hyper_analysis", "make_hyper_synthesis", "n_down"]


def n_down(stride: int) -> int:
    k = int(round(math.log2(stride))) if stride > 0 else -1
    if stride < 1 or 2**k != stride:
        raise ValueError(f"stride must be a power of two >= 1, got {stride}")
    return k


def conv(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)


def make_encoder(c_in: int, hidden: int, latent: int, stride: int) -> nn.Sequential:
    """``g_a``: feature (c_in, H, W) -> y (latent, H/stride, W/stride)."""
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(max(n_down(stride), 1)):
        s = 2 if n_down(stride) > 0 else 1
        layers += [conv(c, hidden, 3, s), GDN(hidden)]
        c = hidden
    layers.append(conv(c, latent, 1))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv(c, c), nn.LeakyReLU(inplace=True), conv(c, c))

    def forward(self, x):
        return x + self.body(x)


def make_decoder(latent: int, hidden: int, c_out: int, stride: int) -> nn.Sequential:
    """``g_s``: y_hat (latent, h, w) -> feature (c_out, h*stride, w*stride).

    The work happens at the latent's resolution (a residual block), then sub-pixel up-sampling
    (1x1 conv + PixelShuffle: no checkerboard artefacts) and one 3x3 conv at the feature's
    resolution, so that the decoder costs a small fraction of the tail it feeds.
    """
    layers: list[nn.Module] = [conv(latent, hidden), GDN(hidden, inverse=True), ResBlock(hidden)]
    c = hidden
    for _ in range(n_down(stride)):
        up = max(c_out, c // 2)
        layers += [conv(c, up * 4, 1), nn.PixelShuffle(2), nn.LeakyReLU(inplace=True)]
        c = up
    layers.append(conv(c, c_out))
    return nn.Sequential(*layers)


def make_hyper_analysis(latent: int, hyper: int, stride: int) -> nn.Sequential:
    """``h_a``: y -> z. ReLU between stages; the first conv sees |y|-like magnitudes via the learned weights."""
    layers: list[nn.Module] = [conv(latent, hyper, 3), nn.LeakyReLU(inplace=True)]
    for i in range(n_down(stride)):
        layers.append(conv(hyper, hyper, 3, 2))
        if i < n_down(stride) - 1:
            layers.append(nn.LeakyReLU(inplace=True))
    return nn.Sequential(*layers)


def make_hyper_synthesis(hyper: int, out: int, stride: int) -> nn.Sequential:
    """``h_s``: z_hat -> Gaussian parameters of y (``out`` channels: scales, or scales and means)."""
    layers: list[nn.Module] = []
    for _ in range(n_down(stride)):
        layers += [conv(hyper, hyper * 4), nn.PixelShuffle(2), nn.LeakyReLU(inplace=True)]
    layers += [conv(hyper, hyper * 2, 3), nn.LeakyReLU(inplace=True), conv(hyper * 2, out, 1)]
    return nn.Sequential(*layers)
