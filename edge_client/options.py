"""The options of the edge's commands: ``splitinfer edge`` (where the server is, how to reach it, the bitrate hint,
what to print), ``encode`` (one image to a bitstream file) and ``export-edge`` (the package this edge runs).

Each field is documented once (:func:`shared.options.option`): for Python callers, and as the help of the flag
``splitinfer edge --FIELD-NAME`` made from it. :meth:`EdgeOptions.client` makes the :class:`EdgeClient` they
describe, :meth:`EdgeOptions.hint` the :class:`~shared.rate.BitrateHint`. Torch-free, and cheap to import (the
client loads when asked for): ``splitinfer edge --help`` imports this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from shared.errors import UserError
from shared.options import BUNDLE_HELP, WEIGHTS_HELP, option, positive, server_address

__all__ = ["EdgeOptions", "EncodeOptions", "ExportEdgeOptions", "find_images"]


@dataclass
class EdgeOptions:
    images: List[str] = option(help="images, or folders of images", positional=True, nargs="+",
                               metavar="IMAGE_OR_DIR")
    server: str = option(help="HOST:PORT of the server's gRPC port (REST port with --rest)", type=server_address)
    rest: bool = option(False, "use the REST API instead of gRPC")
    bitrate: Optional[float] = option(None, "bitrate hint in bits per pixel", type=positive("a positive bpp"),
                                      metavar="BPP", exclusive="hint")
    kbps: Optional[float] = option(None, "bitrate hint as a link rate in kbit/s (with --fps)", type=positive(),
                                   exclusive="hint")
    rung: Optional[int] = option(None, "force a rung (0 = highest rate)", exclusive="hint")
    fps: Optional[float] = option(None, "frame rate for --kbps", type=positive())
    stream: bool = option(False, "send the frames as one stream, answers in order, nothing retried: one "
                                 "InferStream over gRPC; over --rest one request per frame, one at a time")
    track_link: bool = option(False, "with --stream and --kbps, a variable-rate bundle: send frames at --fps and "
                                     "follow the rate the link delivers (measured from the answers' delays), "
                                     "--kbps being the most to send")
    bundle: Optional[str] = option(None, "edge package (splitinfer export-edge) or bundle folder (exported once into "
                                         "the cache; needs PyTorch); default: the package of the server's model, "
                                         "fetched from the server on first use, checked and cached")
    weights: Optional[str] = option(None, "backbone weights file for that export (default: pretrained)")
    runtime: str = option("onnx", "onnx: ONNX Runtime + numpy, no PyTorch (default); torch: the PyTorch reference "
                                  "encoder", choices=("onnx", "torch"))
    threads: Optional[int] = option(None, "ONNX Runtime threads (default: $SPLITINFER_EDGE_THREADS, else 1: fastest "
                                          "per frame on a small, busy CPU)")
    model: Optional[str] = option(None, "server model name (default: the one serving this bundle)")
    api_key: Optional[str] = option(None, "API key (default: $SPLITINFER_API_KEY)")
    timeout: float = option(10.0, "deadline per request in seconds (default 10)", type=positive())
    retries: int = option(3, "retries when the server is unavailable (default 3)")
    tls: bool = option(False, "connect with TLS")
    ca_cert: Optional[str] = option(None, "PEM file of the CA that signed the server's certificate")
    topk: int = option(1, "classes to print per image (default 1)")
    json: bool = option(False, "one JSON object per frame")
    masks: bool = option(False, "segmentation: write each answer's mask beside its image as IMAGE.mask.png (a "
                                "palette PNG: class indexes as pixel values, shown in the class colours; the "
                                "network input's size)")
    masks_dir: Optional[str] = option(None, "like --masks, into DIR instead", metavar="DIR")

    def hint(self):
        """The bitrate hint the options give (``--kbps`` needs ``--fps``: a :class:`UserError` otherwise)."""
        from shared.rate import BitrateHint

        if (self.kbps is None) != (self.fps is None):
            raise UserError("--kbps and --fps go together")
        if self.track_link and not (self.stream and self.kbps and not self.rest):
            raise UserError("--track-link needs --stream over gRPC and --kbps with --fps")
        return BitrateHint(target_bpp=self.bitrate, kbit_per_s=self.kbps, fps=self.fps)

    @property
    def write_masks(self) -> bool:
        return bool(self.masks or self.masks_dir)

    def client(self):
        """The :class:`EdgeClient` these options describe (not yet connected)."""
        from .client import EdgeClient

        return EdgeClient(self.server, bundle=self.bundle, weights=self.weights, model=self.model, rest=self.rest,
                          api_key=self.api_key or os.environ.get("SPLITINFER_API_KEY"), timeout_s=self.timeout,
                          retries=self.retries, tls=self.tls, root_cert=self.ca_cert, top_k=max(1, self.topk),
                          runtime=self.runtime, threads=self.threads)


@dataclass
class EncodeOptions:
    image: str = option(help="input image (JPEG, PNG, WebP, ...)", positional=True)
    output: str = option(help="bitstream file to write", short="-o")
    bundle: Optional[str] = option(None, BUNDLE_HELP)
    bitrate: Optional[float] = option(None, "target bits per pixel; picks the rung", type=positive("a positive bpp"),
                                      metavar="BPP", exclusive="rate")
    rung: Optional[int] = option(None, "rung index (0 = highest rate)", exclusive="rate")
    weights: Optional[str] = option(None, WEIGHTS_HELP)


@dataclass(kw_only=True)
class ExportEdgeOptions:
    """The package holds the head and each rung's bottleneck encoder (and hyper-encoder) as ONNX, the integer
    hyper-decoder's weights and the entropy coder's tables as arrays, and the bundle's manifest; it is tied to
    the bundle id and the head's weights fingerprint. Copy it to the device and run, without PyTorch:
      splitinfer edge --bundle EDGE_DIR --server CLOUD:50051 IMAGES...
    The cloud serves the bundle itself (splitinfer serve --bundle BUNDLE)."""

    bundle: Optional[str] = option(None, BUNDLE_HELP)
    out: str = option(help="folder to write (replaced if it exists)", metavar="EDGE_DIR")
    weights: Optional[str] = option(None, WEIGHTS_HELP)


def find_images(paths: Sequence[str]) -> List[Path]:
    """Folders -> their images (by extension; masks an earlier ``--masks`` run wrote there are not inputs); files
    as given. A missing path stays in the list: it fails on its own line like any unreadable image, and the others
    go on. None at all is a :class:`UserError`."""
    from shared.imageprep import IMAGE_EXTS
    from shared.reporting import MASK_SUFFIX

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*")
                          if q.suffix.lower() in IMAGE_EXTS and not q.name.endswith(MASK_SUFFIX))
        else:
            out.append(p)
    if not out:
        raise UserError("no images found in " + ", ".join(map(str, paths)))
    return out
