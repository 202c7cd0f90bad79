"""Integer hyper-synthesis: entropy-coder parameters as an exact function of integers.

Both sides of a hyperprior codec recompute ``h_s(z_hat)`` to find each latent's entropy-coder
table. In floating point a last-bit difference between two devices (another thread count, a fused
kernel, TF32 convolutions on a GPU) moves a scale across a table boundary and the decoder silently
desynchronises. Following Balle et al., "Integer networks for data compression" (ICLR 2019), this
``h_s`` is an integer network at inference:

- integer weights (8 bits per value, per output channel a step), integer activations (8 bits,
  ``[0, 255]`` on a grid of 1/16: a clipped ReLU), integer biases;
- each layer computes an integer sum ``acc``, then rescales it with an integer multiplier and a
  power-of-two shift (``floor((mult * acc + bias + 2**(K-1)) / 2**K)``), in int64;
- the last layer gives, per latent, a table *index* directly (no scale, no search) and a mean in
  fixed point (1/256).

The sums run in ``float64`` (``conv_dtype``) and are rounded to the nearest integer: every product
and partial sum is an integer far below 2**53, so any summation order or algorithm gives the same
integer (``export`` checks the bound). The requantisation is int64. Hence the indexes and means are
identical on every device that has IEEE doubles and int64, which is every CPU and GPU we target.

Training uses the same arithmetic simulated in float32 ("fake quantisation" with straight-through
rounding), so the network learns with its integer grid in the loop.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IntConv2d", "IntHyperSynthesis", "ConvFn", "conv_reference", "W_MAX", "ACT_MAX"]

# the grid constants: one definition for this path and the numpy one the edge runs (integer_numpy.py)
from .integer_numpy import ACT_FRAC, ACT_MAX, IN_MAX, OUT_FRAC, SHIFT, W_MAX  # noqa: E402

_EXACT_LIMIT = 2**52  # every intermediate integer must stay below this (float64 is exact to 2**53)

ConvFn = Callable[[Tensor, Tensor, int], Tensor]


def conv_reference(x: Tensor, w: Tensor, padding: int) -> Tensor:
    return F.conv2d(x, w, padding=padding)


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


class IntConv2d(nn.Module):
    """A convolution with a float training path (fake-quantised) and an exact integer path.

    Real values: the input is ``x_int * 2**-f_in``, the output ``out_int * 2**-f_out``, clipped to
    ``[lo, hi]`` (in output integer units) when given.
    """

    def __init__(self, c_in: int, c_out: int, k: int, f_in: int, f_out: int,
                 lo: Optional[int] = None, hi: Optional[int] = None):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
        self.f_in, self.f_out, self.lo, self.hi, self.pad = f_in, f_out, lo, hi, k // 2
        # the integer form, written by export() and stored in the bundle; loading never recomputes it
        self.register_buffer("w_int", torch.zeros(c_out, c_in, k, k, dtype=torch.int8))
        self.register_buffer("mult", torch.zeros(c_out, dtype=torch.int64))
        self.register_buffer("bias_int", torch.zeros(c_out, dtype=torch.int64))

    # -- shared by the training path and export: the quantisation grid of the weights
    def _mult_shift(self) -> int:
        return SHIFT + self.f_out - self.f_in

    def _steps(self) -> Tensor:
        """Per output channel, the weight step, itself rounded to the multiplier's grid."""
        w = self.conv.weight.detach()
        step = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / W_MAX
        g = 2.0 ** self._mult_shift()
        return torch.round(step * g).clamp_min(1) / g

    def _clip(self, v: Tensor) -> Tensor:
        if self.lo is None and self.hi is None:
            return v
        return v.clamp(self.lo, self.hi)

    def forward(self, x: Tensor) -> Tensor:
        """Training path: real-valued input on the input grid -> real-valued output on the output grid."""
        step = self._steps().view(-1, 1, 1, 1)
        w = _round_ste(self.conv.weight / step).clamp(-W_MAX, W_MAX) * step
        out = F.conv2d(x, w, self.conv.bias, padding=self.pad)
        g = 2.0**self.f_out
        return self._clip(_round_ste(out * g)) / g

    def float_forward(self, x: Tensor, conv: ConvFn = conv_reference) -> Tensor:
        """The same layer in plain floating point (no grids): what a float hyper-decoder would do."""
        out = conv(x, self.conv.weight, self.pad) + self.conv.bias.view(1, -1, 1, 1)
        return self._clip(out * 2.0**self.f_out) / 2.0**self.f_out

    @torch.no_grad()
    def export(self, in_max: int) -> int:
        """Write the integer form; returns the largest magnitude the output can take (integer units).

        Raises if any intermediate value could leave the range where float64 sums are exact.
        """
        step = self._steps()
        w_int = torch.round(self.conv.weight.detach() / step.view(-1, 1, 1, 1)).clamp(-W_MAX, W_MAX)
        mult = torch.round(step.double() * 2.0 ** self._mult_shift())
        bias = torch.round(self.conv.bias.detach().double() * 2.0 ** (SHIFT + self.f_out))
        acc_max = w_int.double().abs().sum(dim=(1, 2, 3)) * in_max
        worst = (mult * acc_max + bias.abs() + 2.0**SHIFT).max().item()
        if worst >= _EXACT_LIMIT:
            raise ValueError(f"integer layer range {worst:.3g} exceeds 2**52; float64 sums would not be exact")
        self.w_int.copy_(w_int.to(torch.int8))
        self.mult.copy_(mult.to(torch.int64))
        self.bias_int.copy_(bias.to(torch.int64))
        out_max = math.floor(worst / 2.0**SHIFT) + 1
        return out_max if self.hi is None else min(out_max, max(abs(self.lo or 0), abs(self.hi)))

    def exact(self, x_int: Tensor, conv: ConvFn = conv_reference, conv_dtype=torch.float64) -> Tensor:
        """Integer path: int64 input -> int64 output, identical on every device (see module doc)."""
        acc = torch.round(conv(x_int.to(conv_dtype), self.w_int.to(conv_dtype), self.pad)).to(torch.int64)
        v = acc * self.mult.view(1, -1, 1, 1) + self.bias_int.view(1, -1, 1, 1) + (1 << (SHIFT - 1))
        return self._clip(torch.div(v, 1 << SHIFT, rounding_mode="floor"))


class IntHyperSynthesis(nn.Module):
    """``h_s`` for the mean-scale hyperprior, as an integer network.

    z symbols (hyper, h, w) -> per latent element a table index in ``[0, levels)`` and a mean.
    The layout is the float ``h_s``'s (``layers.make_hyper_synthesis``): 3x3 conv + PixelShuffle per
    factor of 2, a 3x3 and a 1x1 conv at the latent's resolution, with a clipped ReLU as the
    activation. (A lighter variant predicting 2x2 blocks from the half resolution cost 1/3 of the MACs
    but 25-45% more bits on ``y``, measured on the shipped ladder's lowest rung.)
    """

    def __init__(self, hyper: int, latent: int, stride: int, means: bool = True, levels: int = 64):
        super().__init__()
        n_up = int(round(math.log2(stride)))
        if 2**n_up != stride:
            raise ValueError(f"hyper_stride must be a power of two, got {stride}")
        self.latent, self.means, self.levels = latent, means, levels
        out = latent * (2 if means else 1)
        act = dict(lo=0, hi=ACT_MAX)
        lim = 2**23  # outputs stay exact float32 values after the 2**-8 scaling
        layers: List[Tuple[IntConv2d, int]] = []  # (conv, pixel-shuffle factor after it)
        f_in = 0
        for _ in range(n_up):
            layers.append((IntConv2d(hyper, hyper * 4, 3, f_in, ACT_FRAC, **act), 2))
            f_in = ACT_FRAC
        layers.append((IntConv2d(hyper, hyper * 2, 3, f_in, ACT_FRAC, **act), 1))
        layers.append((IntConv2d(hyper * 2, out, 1, ACT_FRAC, OUT_FRAC, lo=-lim, hi=lim), 1))
        self.convs = nn.ModuleList(c for c, _ in layers)
        self.ups = [u for _, u in layers]
        with torch.no_grad():  # start the index logits mid-table (scale ~0.5) so every index gets gradients
            self.convs[-1].conv.bias[:latent].fill_(20.0)

    # -- the three paths: training (fake-quantised), plain float (for comparison), exact integer
    def _run(self, x: Tensor, step) -> Tensor:
        for conv, up in zip(self.convs, self.ups):
            x = step(conv, x)
            if up > 1:
                x = F.pixel_shuffle(x, up)
        return x

    def forward(self, z_sym: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Training: (index logits t, means), real-valued; the table index is ``round(t)`` clipped."""
        out = self._run(z_sym.clamp(-IN_MAX, IN_MAX), lambda c, x: c(x))
        return self._split(out)

    def float_forward(self, z_sym: Tensor, conv: ConvFn = conv_reference) -> Tuple[Tensor, Optional[Tensor]]:
        out = self._run(z_sym.float().clamp(-IN_MAX, IN_MAX), lambda c, x: c.float_forward(x, conv))
        return self._split(out)

    def exact(self, z_sym: Tensor, conv: ConvFn = conv_reference, conv_dtype=torch.float64) -> Tuple[Tensor, Optional[Tensor]]:
        """Inference: (int64 table indexes, float32 means on the 2**-8 grid), bit-identical everywhere."""
        x = z_sym.to(torch.int64).clamp(-IN_MAX, IN_MAX)
        out = self._run(x, lambda c, v: c.exact(v, conv, conv_dtype))
        t, means = out.chunk(2, 1) if self.means else (out, None)
        half = 1 << (OUT_FRAC - 1)
        idx = torch.div(t + half, 1 << OUT_FRAC, rounding_mode="floor").clamp(0, self.levels - 1)
        return idx, (means.to(torch.float32) / 2**OUT_FRAC if means is not None else None)

    def _split(self, out: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        return out.chunk(2, 1) if self.means else (out, None)

    def indexes_from_logits(self, t: Tensor) -> Tensor:
        """Table index of real-valued logits (float path); straight-through in training."""
        return _round_ste(t).clamp(0, self.levels - 1)

    @torch.no_grad()
    def export(self) -> None:
        bound = IN_MAX
        for conv in self.convs:
            bound = conv.export(bound)

    def exported(self) -> bool:
        return bool(self.convs[0].mult.abs().sum() > 0)
