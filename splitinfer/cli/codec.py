"""``splitinfer encode`` / ``decode`` (the edge and cloud halves on files), ``info`` / ``merge`` / ``export-edge``
(bundles) and ``models``; the options of the three that only call the library (``InfoOptions``, ``MergeOptions``,
``ModelsOptions``: the others' live beside their use cases)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from shared.errors import UserError, input_file
from shared.options import BUNDLE_HELP, option


@dataclass
class InfoOptions:
    """``splitinfer info``: one bundle's manifest (:func:`splitinfer.tables.bundle_table`)."""

    bundle: Optional[str] = option(None, BUNDLE_HELP)
    # the form before --bundle (every other command takes --bundle): still read, with a note
    path: Optional[str] = option(None, "deprecated: the bundle folder without --bundle", positional=True, nargs="?",
                                 metavar="BUNDLE")

    def folder(self, warn=None) -> Optional[str]:
        """The bundle asked for (``--bundle``, or the deprecated positional form; both: they must agree)."""
        if self.path is not None and self.bundle is not None and self.path != self.bundle:
            raise UserError(f"two bundles given ({self.path} and --bundle {self.bundle}): give one, with --bundle")
        if self.path is not None and self.bundle is None and warn is not None:
            warn(f"note: `splitinfer info BUNDLE` is deprecated: use `splitinfer info --bundle {self.path}`")
        return self.bundle if self.bundle is not None else self.path


@dataclass
class MergeOptions:
    """``splitinfer merge``: a ladder assembled from measured rungs of compatible bundles
    (:func:`shared.bundle.merge_bundles`)."""

    out: str = option(help="bundle folder to write", positional=True)
    picks: List[str] = option(help="rungs to take from each (measured) source bundle", positional=True, nargs="+",
                              metavar="BUNDLE:RUNG[,RUNG...]")
    transforms_dtype: Optional[str] = option(None, "store g_a/g_s weights in this precision (float16 halves a deep "
                                                   "rung; measure it again); default: the first source's",
                                             choices=["float32", "float16"])


@dataclass
class ModelsOptions:
    """``splitinfer models``: the supported models and split points (:func:`splitinfer.tables.models_table`)."""

    json: bool = option(False, "print JSON instead of a table")


def run_encode(args) -> int:
    from PIL import Image

    from shared.encoder import EdgeEncoder
    from shared.imageprep import load_image

    path = input_file(args.image, "an image")
    try:
        image = load_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL: not an image, truncated...
        raise UserError(f"{args.image}: not a readable image ({e})") from None
    enc = EdgeEncoder(args.bundle, weights=args.weights)
    frame = enc.encode(image, bitrate=args.bitrate, rung=args.rung)
    Path(args.output).write_bytes(frame.data)
    where = f"rung {frame.rung}" if frame.level is None else f"quality level {frame.level}"
    print(f"{args.output}: {frame.n_bytes} bytes, {frame.bpp:.4f} bpp over {frame.input_hw[0]}x{frame.input_hw[1]}, "
          f"{where} of bundle {enc.bundle.bundle_id}")
    if frame.hint.met is False:  # written all the same (the coarsest point there is), and said
        print(f"over the hint of {args.bitrate:g} bpp: {frame.hint.reason}")
    return 0


def run_decode(args) -> int:
    from cloud_server import CloudDecoder
    from shared.bitstream import BitstreamError
    from shared.tasks import wire

    data = input_file(args.bitstream, "a bitstream").read_bytes()
    dec = CloudDecoder(args.bundle, weights=args.weights)
    try:
        pred = dec.decode(data, topk=args.topk)
    except BitstreamError as e:
        raise UserError(f"{args.bitstream}: {e}") from None
    if args.json:
        print(json.dumps({"rung": pred.rung, "bytes": pred.n_bytes, "bpp": pred.bpp, "topk": pred.topk,
                          "outputs": wire.numbers(pred.outputs), "timings_ms": pred.timings_ms}))
        return 0
    print(f"rung {pred.rung}, {pred.n_bytes} bytes ({pred.bpp:.4f} bpp)")
    for i, name, p in pred.topk:
        print(f"  {p:6.1%}  {i:4d}  {name}")
    return 0


def run_info(args) -> int:
    from shared.bundle import resolve_bundle
    from shared.options import options

    from ..tables import bundle_table

    notes = []  # said after the table: an error stays one line
    folder = options(InfoOptions, args).folder(warn=notes.append)
    print("\n".join(bundle_table(resolve_bundle(folder))))
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def run_merge(args) -> int:
    from shared.bundle import load_bundle, merge_bundles

    picks = []
    for spec in args.picks:
        path, _, rungs = spec.rpartition(":")
        if not path or not all(r.strip().isdigit() for r in rungs.split(",")):
            raise UserError(f"{spec!r} is not BUNDLE:RUNG[,RUNG...]")
        b = load_bundle(path)
        picks += [(b, int(r)) for r in rungs.split(",")]
    m = merge_bundles(args.out, picks, transforms_dtype=args.transforms_dtype)
    print(f"wrote bundle {m.bundle_id} with {len(m.rungs)} rungs to {args.out}")
    return 0


def setup_export_edge(p: argparse.ArgumentParser) -> None:
    import inspect

    from edge_client.options import ExportEdgeOptions

    p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, inspect.getdoc(ExportEdgeOptions)


def run_export_edge(args) -> int:
    from edge_client.package import EdgePackage

    from shared.edge_export import export_edge

    out = export_edge(args.bundle, Path(args.out), weights=args.weights, progress=lambda m: print(m, file=sys.stderr))
    pkg, size = EdgePackage(out), sum(f.stat().st_size for f in out.iterdir())
    print(f"edge package {pkg.package_id} -> {out} ({size / 1e6:.1f} MB): bundle {pkg.bundle_id} ({pkg.bundle.model}/"
          f"{pkg.bundle.split}, {len(pkg.bundle.rungs)} rungs), head weights {pkg.manifest['head_weights']}")
    return 0


def setup_export_cloud(p: argparse.ArgumentParser) -> None:
    import inspect

    from cloud_server.options import ExportCloudOptions

    p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, inspect.getdoc(ExportCloudOptions)


def run_export_cloud(args) -> int:
    from cloud_server.onnx_runtime import CloudPackage

    from shared.cloud_export import export_cloud

    out = export_cloud(args.bundle, Path(args.out), weights=args.weights, progress=lambda m: print(m, file=sys.stderr))
    pkg, size = CloudPackage(out), sum(f.stat().st_size for f in out.iterdir())
    print(f"cloud package {pkg.package_id} -> {out} ({size / 1e6:.1f} MB): bundle {pkg.bundle_id} ({pkg.bundle.model}/"
          f"{pkg.bundle.split}, {len(pkg.bundle.rungs)} rungs), tail weights {pkg.manifest['tail_weights']}")
    return 0


def run_models(args) -> int:
    from shared.models.split import describe_models

    from ..tables import models_table

    rows = describe_models()
    print(json.dumps(rows, indent=2) if args.json else "\n".join(models_table(rows)))
    return 0
