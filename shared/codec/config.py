"""The bottleneck's configuration (torch-free: bundles and edge packages read it without torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Dict, Optional, Tuple

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
    # quality levels (lo, hi) of a variable-rate bottleneck (rate_model "vr-hyperprior", variable_rate.py): one
    # network for every rate, the quantiser step r**-q picked per image; None for a fixed-rate rung
    levels: Optional[Tuple[int, int]] = None

    @property
    def variable_rate(self) -> bool:
        return self.levels is not None

    @classmethod
    def for_split(cls, depth: str, in_channels: int, *, latent: Optional[int] = None, hidden: Optional[int] = None,
                  dec_hidden: Optional[int] = None, stride: Optional[int] = None, hyper_stride: Optional[int] = None,
                  rate_model: str = "hyperprior", qp: float = 1.0, hyper_decoder: str = "integer",
                  gain: bool = False, levels: Optional[Tuple[int, int]] = None) -> "BottleneckConfig":
        """The default sizing for a split of ``depth`` (a ``SplitPoint.depth``) whose feature has ``in_channels``
        channels; a size given (not None) wins. Shallow features are large and fine: a narrow encoder and a
        stride-2 latent. Deep ones are small and semantic: wider transforms scaled with the channels, no further
        down-sampling of y and a finer side stride."""
        deep = depth == "deep"
        return cls(
            in_channels=in_channels,
            latent=latent or 32,
            hidden=hidden or (max(64, in_channels // 2) if deep else 48),
            dec_hidden=dec_hidden or (max(128, in_channels) if deep else 64),
            stride=stride or (1 if deep else 2),
            rate_model="vr-hyperprior" if levels else (rate_model or "hyperprior"),
            hyper=32,
            hyper_stride=hyper_stride or (2 if deep else 4),
            qp=qp or 1.0,
            hyper_decoder=hyper_decoder or "integer",
            gain=bool(gain),
            levels=tuple(levels) if levels else None,
        )

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "BottleneckConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown bottleneck config keys {sorted(unknown)}")
        d = dict(d)
        if d.get("levels") is not None:  # JSON gives a list
            d["levels"] = tuple(int(v) for v in d["levels"])
        return cls(**d)
