"""The bottleneck's configuration (torch-free: bundles and edge packages read it without torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Dict

__all__ = ["BottleneckConfig"]


@dataclass
class BottleneckConfig:
    in_channels: int
    latent: int = 32  # channels of y
    hidden: int = 48  # encoder width (edge: keep small)
    dec_hidden: int = 64  # decoder width (cloud)
    stride: int = 2  # spatial down-sampling of y against the split feature
    rate_model: str = "hyperprior"  # hyperprior | factorized | static
    hyper: int = 32  # channels of z
    hyper_stride: int = 4  # spatial down-sampling of z against y
    means: bool = True  # mean-scale hyperprior (else scale only)
    qp: float = 1.0  # quantiser step of the "static" model
    hyper_decoder: str = "integer"  # integer (bit-exact on every device) | float (legacy, device-dependent)
    # a learned per-channel gain on y (log-parameterised, its own 10x learning rate): y's scale sets how finely
    # the unit quantiser resolves it, and plain weights grow that scale only ~lr per step (see latent_gain)
    gain: bool = False

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "BottleneckConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown bottleneck config keys {sorted(unknown)}")
        return cls(**d)
