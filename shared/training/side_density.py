"""Refit the hyperprior's side-information density (the factorized prior of ``z``) to the ``z`` it codes.

A ladder trained for a short budget leaves that density far from the histogram of its ``z``: on the
CamVid deep split the coded ``z`` took about twice the bits of its per-channel empirical entropy, and
``z`` was 80-90% of every message (measured; docs/segmentation.md). Refitting it is cheap, needs no
backbone pass, and changes nothing else: the medians (the offsets ``z`` is rounded against) stay where
they are, so every ``z`` symbol, every ``y`` index and mean and every decoded feature is bit-identical
to before; only the CDF tables of ``z``, hence its bits, change.
"""

from __future__ import annotations

import math
import time
from typing import Dict, Optional

import torch

from ..codec import Bottleneck
from ..codec.compressai_adapter import likelihood, medians
from .migrate import latents
from .schedule import warmup_cosine_lr

__all__ = ["refit_side_density"]

# shares of a bounded refit: computing z may take up to VALUES_SHARE of it (fewer images), the density fit runs
# until FIT_SHARE, the tail fit gets the rest
VALUES_SHARE, FIT_SHARE = 0.4, 0.8


def _side_values(net: Bottleneck, features: torch.Tensor, deadline: Optional[float] = None,
                 chunk: int = 8) -> torch.Tensor:
    """(C, 1, M): every z symbol of ``features`` plus its channel's median, as the density sees them; a chunk at a
    time, and no new chunk after ``deadline`` (a ``time.monotonic()`` value; the first chunk always runs)."""
    zs = []
    for i in range(0, len(features), chunk):
        if zs and deadline is not None and time.monotonic() > deadline:
            break
        zs.append(latents(net, features[i : i + chunk])[1])  # N, C, h, w
    z = torch.cat(zs)
    return z.transpose(0, 1).reshape(z.shape[1], 1, -1) + medians(net.rate.entropy_bottleneck).detach()


def _bits_per_value(eb, values: torch.Tensor) -> torch.Tensor:
    lik = likelihood(eb, values)
    if eb.use_likelihood_bound:
        lik = eb.likelihood_lower_bound(lik)
    return -torch.log2(lik).mean()


def refit_side_density(net: Bottleneck, features: torch.Tensor, steps: int = 500, tail_steps: int = 1000,
                       lr: float = 1e-2, sample: int = 2048, max_images: int = 256, seed: int = 0,
                       seconds: float = math.inf) -> Dict:
    """Fit ``net``'s z density to the z symbols of ``features`` (split features, any batch; at most
    ``max_images`` of them, spread evenly); in place.

    The density is fitted by maximum likelihood on the integer symbols (Adam, cosine decay, ``sample``
    values per channel and step); then its tail quantiles, which bound the CDF tables, are fitted to the
    new density with the medians pinned. Returns the mean bits per z value before and after, under the
    model (the coder's tables add a little), and the steps, tail steps and seconds it took.

    ``seconds`` bounds it (a time budget's share; each part runs at least once): z of fewer images when computing
    it reaches ``VALUES_SHARE`` of it, and the fit's cosine schedule follows whichever of its step count and its
    clock is further along, as a rung's does."""
    if net.cfg.rate_model not in ("hyperprior", "vr-hyperprior"):  # z does not depend on the level
        raise ValueError(f"refit_side_density needs a hyperprior rate model, not {net.cfg.rate_model!r}")
    t0 = time.monotonic()
    bounded = math.isfinite(seconds)
    net = net.eval().requires_grad_(False)
    eb = net.rate.entropy_bottleneck
    if len(features) > max_images:
        features = features[torch.linspace(0, len(features) - 1, max_images).long()]
    values = _side_values(net, features, t0 + VALUES_SHARE * seconds if bounded else None)
    pinned = medians(eb).detach().clone()
    density = [p for n, p in eb.named_parameters() if n != "quantiles"]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = float(_bits_per_value(eb, values))
    for p in density:
        p.requires_grad_(True)
    opt = torch.optim.Adam(density, lr=lr)
    m = values.shape[-1]
    fit_start, fit_end, done = time.monotonic(), t0 + FIT_SHARE * seconds, 0
    for step in range(steps):
        frac = step / steps
        if bounded:
            frac = max(frac, (time.monotonic() - fit_start) / max(fit_end - fit_start, 1e-9))
            if frac >= 1.0 and step:
                break
        done += 1
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(min(frac, 1.0), lr, warmup=0.0, floor=0.02)
        v = values[..., torch.randint(m, (min(sample, m),), generator=gen)] if m > sample else values
        loss = _bits_per_value(eb, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in density:
        p.requires_grad_(False)
    # the tails (1e-9 quantiles) bound the tables; the medians stay, so the symbols stay
    eb.quantiles.requires_grad_(True)
    qopt = torch.optim.Adam([eb.quantiles], lr=0.05)
    tails = 0
    for _ in range(tail_steps):
        if tails and bounded and time.monotonic() > t0 + seconds:
            break
        tails += 1
        aux = eb.loss()
        qopt.zero_grad(set_to_none=True)
        aux.backward()
        qopt.step()
        with torch.no_grad():
            eb.quantiles[:, :, 1:2] = pinned
    eb.quantiles.requires_grad_(False)
    with torch.no_grad():
        after = float(_bits_per_value(eb, values))
    return {"z_values": int(values.numel()), "bits_per_z_before": before, "bits_per_z_after": after,
            "steps": done, "tail_steps": tails, "seconds": round(time.monotonic() - t0, 2)}
