"""The ``splitinfer`` command: argument parsing and printing only, one sub-command per module (``setup_*``/``run*``).

Heavy imports happen inside each sub-command, so ``splitinfer --help`` stays instant and the edge commands never
import the server. Every mistake a user can make ends the same way, on one line with exit code 2: argparse's
``splitinfer CMD: error: ...`` (under the sub-command's usage) for a bad flag or value, ``error: ...`` for what
the library refuses (:class:`shared.errors.UserError`, a missing or unreadable file).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from shared import __version__
from shared.errors import UserError, missing_on_edge
from shared.options import add_options

COMMANDS = {
    "models": ("splitinfer.cli.codec", "list supported models, split points, shapes and the edge's share of FLOPs"),
    "train": ("splitinfer.cli.train", "train a ladder of bottlenecks (one per lambda) into a bundle"),
    "train-teacher": ("splitinfer.cli.train", "fine-tune the segmentation teacher (efficientnet_lite0_seg) on CamVid"),
    "encode": ("splitinfer.cli.codec", "edge side on files: image -> bitstream file"),
    "decode": ("splitinfer.cli.codec", "cloud side on files: bitstream file -> prediction"),
    "eval": ("splitinfer.cli.eval", "measure every rung's real bpp and accuracy on held-out images"),
    "report": ("splitinfer.cli.eval", "rebuild results.md, rd.png and the summary from an existing results.json"),
    "migrate": ("splitinfer.cli.train", "convert a float-hyper-decoder ladder to the bit-exact integer hyper-decoder"),
    "merge": ("splitinfer.cli.codec", "assemble a ladder from measured rungs of compatible bundles"),
    "demo": ("splitinfer.cli.serve", "edge -> bytes -> cloud round trip on the embedded sample images"),
    "info": ("splitinfer.cli.codec", "show a bundle's manifest: rungs, measured bpp and accuracy"),
    "serve": ("splitinfer.cli.serve", "run the cloud server: REST and gRPC front ends on one data plane"),
    "edge": ("splitinfer.cli.edge", "encode images on the edge and send them to a server (gRPC or REST)"),
    "export-edge": ("splitinfer.cli.codec",
                   "export a bundle's edge half (ONNX + arrays) for the torch-free edge runtime"),
    "export-cloud": ("splitinfer.cli.codec",
                    "export a bundle's cloud half (ONNX + arrays) for the torch-free cloud runtime"),
}
# the options dataclass whose fields make a command's flags (shared.options.add_options); its setup_* adds the rest
# (a use case's options live beside it; those of a command that only prints, beside the command)
OPTIONS = {"train": "shared.training.recipe:TrainOptions", "train-teacher": "shared.training.teacher:TeacherOptions",
           "migrate": "shared.training.recipe:MigrateOptions", "eval": "shared.reporting:EvalOptions",
           "report": "splitinfer.cli.eval:ReportOptions", "encode": "edge_client.options:EncodeOptions",
           "decode": "cloud_server.options:DecodeOptions", "serve": "cloud_server.options:ServeOptions",
           "edge": "edge_client.options:EdgeOptions", "export-edge": "edge_client.options:ExportEdgeOptions",
           "export-cloud": "cloud_server.options:ExportCloudOptions", "demo": "splitinfer.demo:DemoOptions",
           "info": "splitinfer.cli.codec:InfoOptions",
           "merge": "splitinfer.cli.codec:MergeOptions", "models": "splitinfer.cli.codec:ModelsOptions"}

def command_line(name: str) -> Optional[str]:
    """The command as typed (recorded in what it writes), when it runs from the ``splitinfer`` entry point."""
    return f"splitinfer {name} " + " ".join(sys.argv[2:]) if sys.argv[1:2] == [name] else None


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole command line: one sub-parser per entry of :data:`COMMANDS` (also in ``parser.commands``), with
    the flags of its :data:`OPTIONS` and those its module's ``setup_*`` adds; ``only``: that command's flags alone
    (an edge install has no ``cloud_server`` to read the others' from)."""
    parser = argparse.ArgumentParser(
        prog="splitinfer",
        description="Edge-to-cloud split inference with learned, entropy-coded bottlenecks.",
    )
    parser.add_argument("--version", action="version", version=f"splitinfer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.commands = {}
    for name, (module, help_) in COMMANDS.items():
        p = parser.commands[name] = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module, _name=name)
        if only not in (None, name):
            continue
        if name in OPTIONS:
            where, _, cls = OPTIONS[name].partition(":")
            add_options(p, getattr(importlib.import_module(where), cls))
        getattr(importlib.import_module(module), f"setup_{name.replace('-', '_')}", lambda p: None)(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))  # the top level takes no values
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # under the sub-command's usage, not the top level's
        parser.commands[args._name].error(f"unrecognized arguments: {' '.join(unknown)}")
    run = getattr(importlib.import_module(args._module), f"run_{args._name.replace('-', '_')}")
    from shared.bitstream import BitstreamError
    from shared.rate import HintError

    try:
        return int(run(args) or 0)
    except (UserError, BitstreamError, HintError) as e:  # HintError: a rung or level this bundle does not have
        print(f"error: {e}", file=sys.stderr)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"error: {e.filename}: {e.strerror.lower()}" if e.filename else f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `splitinfer info | head`: the reader left early; no traceback (Python's signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ModuleNotFoundError as e:
        if missing_on_edge(e, args._name) is None:
            raise
        print(f"error: {missing_on_edge(e, args._name)}", file=sys.stderr)
    return 2
