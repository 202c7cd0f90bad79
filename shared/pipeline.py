"""Feature <-> bytes for one bundle: the codec half that edge and cloud share.

``LadderCodec.encode`` (edge) runs ``g_a``, entropy-codes ``y`` (and ``z``) and wraps the payloads in
the versioned header of :mod:`shared.bitstream`; ``LadderCodec.decode`` (cloud) checks the header
against the bundle, entropy-decodes, verifies the symbol checksum, and runs ``g_s``. Rungs load on
first use and stay resident; the backbone is never involved here.
"""

from __future__ import annotations

import math
import threading
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .bitstream import BitstreamError, Header, bits_per_pixel, pack, split_tag, unpack
from .bundle import Bundle
from .codec import Bottleneck

__all__ = ["LadderCodec", "bits_per_pixel"]


class LadderCodec:
    def __init__(self, bundle: Bundle, device: str = "cpu"):
        self.bundle, self.device = bundle, device
        self.tag = split_tag(bundle.model, bundle.split)
        self.feature_stride = bundle.feature_stride
        self._rungs: Dict[int, Bottleneck] = {}
        self._lock = threading.Lock()

    # -- rungs -----------------------------------------------------------------------------------
    def rung(self, index: int) -> Bottleneck:
        net = self._rungs.get(index)
        if net is None:
            with self._lock:
                net = self._rungs.get(index)
                if net is None:
                    net = self._rungs[index] = self.bundle.load_rung(index, self.device)
        return net

    def preload(self) -> None:
        for r in self.bundle.rungs:
            self.rung(r.index)

    @property
    def resident(self) -> list:
        return sorted(self._rungs)

    @property
    def input_size(self) -> Tuple[int, int]:
        return self.bundle.input_size

    def allowed_inputs(self) -> list:
        """Input sizes a stream may claim. Classification crops to one fixed size, so anything else is
        forged or foreign; refusing it before decoding bounds the work a header can ask for."""
        return [self.input_size]

    def feature_hw(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        s = self.feature_stride
        return math.ceil(input_hw[0] / s), math.ceil(input_hw[1] / s)

    # -- edge --------------------------------------------------------------------------------------
    @property
    def scheme(self):
        """The bundle's rate scheme (``shared.rate``): a ladder of rungs, or one variable-rate network."""
        return self.bundle.scheme

    @property
    def levels(self) -> Optional[Tuple[int, int]]:
        """The quality levels of a variable-rate bundle (one network, shared/codec/variable_rate.py); None for a ladder."""
        return self.scheme.levels

    @torch.no_grad()
    def encode(self, feature: Tensor, input_hw: Tuple[int, int], rung: int = 0, level: Optional[int] = None) -> list[bytes]:
        """Features of a batch (N, C, h, w) -> one message per image (``level``: variable-rate bundles only)."""
        kw = self.scheme.level_kw(level)
        net = self.rung(rung)
        y_hw = net.latent_shape(tuple(feature.shape[-2:]))
        side = net.rate.side_shape(y_hw) or (0, 0)
        out = []
        for payloads, crc in net.compress(feature.to(self.device), **kw):
            hdr = Header(self.bundle.id_bytes, self.tag, rung, tuple(input_hw), y_hw, side, crc, level=kw.get("level"))
            out.append(pack(hdr, payloads))
        return out

    @torch.no_grad()
    def encode_variable(self, feature: Tensor, input_hw: Tuple[int, int], **how) -> list:
        """A variable-rate bundle: features (N, C, h, w) -> one ``RateChoice`` per image (its message and level);
        ``how``: a level, a byte budget or a stream controller (``shared.rate.choose_level``)."""
        from .codec.levels import level_message
        from .rate import HintError, choose_level

        if not self.scheme.variable:
            raise HintError("rate control needs a variable-rate bundle; this one is a ladder of rungs")
        net = self.rung(0)
        y_all = net._analysis(feature.to(self.device)).cpu()
        y_hw = tuple(y_all.shape[-2:])
        side = net.rate.side_shape(y_hw)
        out = []
        for i in range(y_all.shape[0]):
            coder, z_str, z_sym = net.rate.level_coder(y_all[i : i + 1])
            message = level_message(self.bundle.id_bytes, self.tag, input_hw, y_hw, side, z_str, z_sym)
            out.append(choose_level(coder, message, **how))
        return out

    # -- cloud -------------------------------------------------------------------------------------
    def parse(self, data: bytes) -> Tuple[Header, list]:
        """Header checks that need no decoding: integrity, bundle, split, rung and shapes."""
        hdr, payloads = unpack(data)
        b = self.bundle
        if hdr.bundle_id != b.id_bytes:
            raise BitstreamError(
                f"bitstream was made for bundle {hdr.bundle_id.hex()}…, this decoder holds {b.bundle_id[:8]}… "
                f"({b.model}/{b.split}); the edge and the cloud must use the same bundle"
            )
        if hdr.split_tag != self.tag:
            raise BitstreamError("bitstream was made for another split point")
        if not 0 <= hdr.rung < len(b.rungs):
            raise BitstreamError(f"rung {hdr.rung} is not in this bundle (rungs 0..{len(b.rungs) - 1})")
        problem = self.scheme.header_problem(hdr.level)
        if problem:
            raise BitstreamError(problem)
        if hdr.input_hw not in self.allowed_inputs():
            raise BitstreamError(
                f"input size {hdr.input_hw[0]}x{hdr.input_hw[1]} is not one this bundle encodes "
                f"(expected {self.input_size[0]}x{self.input_size[1]})"
            )
        rate = self.rung(hdr.rung).rate
        fh, fw = self.feature_hw(hdr.input_hw)
        s = b.config.stride
        want_y = ((fh + s - 1) // s, (fw + s - 1) // s)
        want_side = rate.side_shape(want_y) or (0, 0)
        if hdr.y_hw != want_y or hdr.side_hw != want_side or len(payloads) != rate.n_payloads:
            raise BitstreamError(
                f"latent shapes y={hdr.y_hw} side={hdr.side_hw} with {len(payloads)} payloads cannot come from a "
                f"{hdr.input_hw[0]}x{hdr.input_hw[1]} input with this bundle (expected y={want_y} side={want_side})"
            )
        return hdr, payloads

    @torch.no_grad()
    def decode(self, data: bytes) -> Tuple[Tensor, Header]:
        """One message -> (feature_hat [1, C, h, w], header). Raises BitstreamError on any bad input."""
        hdr, payloads = self.parse(data)
        feat_hw = self.feature_hw(hdr.input_hw)
        try:
            feat, crc = self.rung(hdr.rung).decompress(payloads, feat_hw, **self.scheme.level_kw(hdr.level))
        except (RuntimeError, ValueError, OverflowError) as e:  # the coder's own complaints
            raise BitstreamError(f"entropy decoding failed: {e}") from e
        if crc != hdr.symbols_crc:
            raise BitstreamError(
                "decoded symbols do not match the encoder's checksum: the entropy decoder desynchronised "
                "(edge and cloud computed different probability tables) or the stream was altered"
            )
        return feat, hdr

    def rate_bpp(self, data: bytes) -> float:
        hdr, _ = unpack(data)
        return bits_per_pixel(len(data), hdr.input_hw)
