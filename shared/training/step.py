"""One training step of a bottleneck at a split point: what ``train_ladder`` runs and what
``benchmarks/train_throughput.py`` times, written once.

A step draws a batch of cached views, runs the bottleneck (at a quality level for a variable-rate network),
the frozen tail when the logit or tail-feature loss needs it, and updates the bottleneck and, with its own
optimizer, the rate model's quantiles.

How a step runs on the hardware is :class:`StepSpeed`: bfloat16 autocast for the convolutions of ``g_a``,
``g_s`` and the frozen tail (never for the rate model: see ``Bottleneck.forward``), and channels-last memory
for those convolutions. Both change only rounding, never what is optimised; ``benchmarks/train_throughput.py``
measures what each buys per split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from ..codec.bottleneck import maybe_autocast
from ..codec.variable_rate import lambda_at
from .objectives import Objective, bpp_from_likelihoods, tail_feature_mse
from .views import capture

__all__ = ["StepSpeed", "TrainStep", "bf16_supported"]


def bf16_supported(device: str) -> bool:
    """bfloat16 autocast pays on CUDA and on CPUs with native bfloat16 dot products (AVX512-BF16, AMX); elsewhere
    it is emulated and slower than float32."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@dataclass(frozen=True)
class StepSpeed:
    """``precision``: "fp32", "bf16" (autocast) or "auto" (bf16 where :func:`bf16_supported`);
    ``channels_last``: the cached features and the convolutions in NHWC memory order; ``compile``:
    ``torch.compile`` of ``g_a``, ``g_s`` and the frozen tail (in place: parameter names do not change)."""

    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False

    def amp(self, device: str) -> Optional[torch.dtype]:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.precision == "bf16" or (self.precision == "auto" and bf16_supported(device)):
            return torch.bfloat16
        return None

    def describe(self, device: str) -> str:
        amp = self.amp(device)
        return (f"{'bf16 autocast' if amp else 'fp32'}{', channels-last' if self.channels_last else ''}"
                f"{', torch.compile' if self.compile else ''}")


class TrainStep:
    """The loss of one step, and the update. Holds what every step shares: the objective, the feature and
    target statistics, the tapped tail modules, the optimizers."""

    def __init__(self, model, net, objective: Objective, feat_var: Tensor, n_pixels: int, input_hw,
                 taps: Dict[str, torch.nn.Module], target_var: Dict[str, Tensor], tail_feature_weight: float,
                 speed: StepSpeed, device: str, ddp=None):
        self.model, self.net, self.ddp = model, net, ddp if ddp is not None else net
        self.params, self.aux_params = net.net_parameters(), net.aux_parameters()
        assert not set(map(id, self.params)) & set(map(id, self.aux_params))
        self.objective, self.feat_var, self.n_pixels = objective, feat_var, n_pixels
        self.taps, self.target_var, self.tail_feature_weight = taps, target_var, tail_feature_weight
        self.amp = speed.amp(device)
        self.memory = torch.channels_last if speed.channels_last else torch.contiguous_format
        self.input_meta = torch.empty((1, 3, *input_hw), device="meta")
        if speed.channels_last:
            net.to(memory_format=torch.channels_last)
            model.to(memory_format=torch.channels_last)
        if speed.compile:  # Module.compile keeps the state-dict keys (torch.compile(m) would wrap them)
            for m in (net.g_a, net.g_s, model.tail):
                m.compile()

    def loss(self, feat: Tensor, teacher: Tensor, labels: Tensor, lam: float, use_tail: bool,
             targets: Optional[Dict[str, Tensor]] = None, level: Optional[int] = None) -> Dict[str, Tensor]:
        """``loss = bpp + lam * distortion`` and its parts; the tail runs only when ``use_tail``."""
        feat = feat.contiguous(memory_format=self.memory)
        o = self.ddp(feat, amp=self.amp, **({} if level is None else {"level": level}))
        student, tail_mse = None, None
        if use_tail:
            meta = self.input_meta.expand(feat.shape[0], -1, -1, -1)
            with capture(self.taps if targets else {}) as acts, maybe_autocast(feat, self.amp):
                student = self.model.tail(o["feat_hat"], meta)
            student = student.float()
            if targets:
                tail_mse = tail_feature_mse(acts, targets, self.target_var)
        d = self.objective.distortion(student, teacher, labels, o["feat_hat"].float(), feat, self.feat_var)
        if tail_mse is not None:
            d["tail_mse"] = tail_mse
            d["distortion"] = d["distortion"] + self.tail_feature_weight * tail_mse
        d["bpp"] = bpp_from_likelihoods(o["likelihoods"], self.n_pixels)
        d["loss"] = d["bpp"] + lam * d["distortion"]
        return d

    def update(self, loss: Tensor, opt, aux_opt, average_aux=None) -> Tensor:
        """One step of ``opt`` on ``loss`` (gradient norm clipped to 1), then one of ``aux_opt`` on the rate model's
        quantile loss, which trains apart (disjoint parameters). ``average_aux(params)``: averages the aux gradients
        across processes (DDP does not see that loss). Returns the aux loss."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        opt.step()
        aux = self.net.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        if average_aux is not None:
            average_aux(self.aux_params)
        aux_opt.step()
        return aux


def level_and_lambda(levels, lambdas, gen: torch.Generator):
    """A variable-rate step's quality level, drawn uniformly, and the lambda that goes with it."""
    q = int(torch.randint(levels[0], levels[1] + 1, (1,), generator=gen))
    return q, lambda_at(q, levels, lambdas)
