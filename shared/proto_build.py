"""Generate the gRPC stubs of ``proto/splitinfer.proto`` into ``shared/_proto/`` (never committed).

``make`` runs ``python -m shared.proto_build`` at install time; :mod:`shared._proto` calls
:func:`ensure_generated` on first import, so a fresh clone or a changed ``.proto`` needs no manual step.
The generated files record the SHA-256 of the ``.proto`` they came from (``_source.sha256``); they are
regenerated whenever it differs. Generation writes to a temporary folder and renames file by file, so
processes that import the package at the same time never see a half-written module.

The stubs live in ``shared`` (not ``cloud_server``) because the edge client needs them too, and must not
import the server. protoc derives Python import paths from the ``.proto``'s path, so the file is staged as
``shared/_proto/splitinfer.proto`` and the generated ``splitinfer_pb2_grpc`` imports
``shared._proto.splitinfer_pb2`` without any rewriting.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ["PROTO_FILE", "OUT_DIR", "ensure_generated", "generate", "is_stale"]

ROOT = Path(__file__).resolve().parents[1]
PROTO_FILE = ROOT / "proto" / "splitinfer.proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"
STAMP = "_source.sha256"
GENERATED = ("splitinfer_pb2.py", "splitinfer_pb2.pyi", "splitinfer_pb2_grpc.py")


class ProtoBuildError(RuntimeError):
    """The stubs are missing and cannot be generated (no .proto, no grpcio-tools, or protoc failed)."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_stale(proto: Path = PROTO_FILE, out: Path = OUT_DIR) -> bool:
    """True when a generated file is missing or was made from another version of the ``.proto``."""
    if any(not (out / f).is_file() for f in GENERATED):
        return True
    if not proto.is_file():  # an install without the source: use what was generated
        return False
    stamp = out / STAMP
    return not stamp.is_file() or stamp.read_text().strip() != _digest(proto)


def generate(proto: Path = PROTO_FILE, out: Path = OUT_DIR) -> None:
    """Run protoc (from grpcio-tools) on ``proto``; write the modules and the stamp into ``out``."""
    if not proto.is_file():
        raise ProtoBuildError(f"{proto} not found: cannot generate the gRPC stubs")
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - grpcio-tools is a pinned dependency
        raise ProtoBuildError("grpcio-tools is needed to generate the gRPC stubs (pip install grpcio-tools)") from e
    import grpc_tools

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="splitinfer-proto-") as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "out"
        staged = src / "shared" / "_proto" / "splitinfer.proto"
        staged.parent.mkdir(parents=True)
        dst.mkdir()
        shutil.copyfile(proto, staged)
        argv = [
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{well_known}",
            f"--python_out={dst}",
            f"--pyi_out={dst}",
            f"--grpc_python_out={dst}",
            str(staged),
        ]
        rc = protoc.main(argv)
        if rc != 0:
            raise ProtoBuildError(f"protoc failed on {proto} (exit {rc})")
        made = dst / "shared" / "_proto"
        for name in GENERATED:
            tmp_file = out / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(made / name, tmp_file)
            os.replace(tmp_file, out / name)
        stamp_tmp = out / f".{STAMP}.{os.getpid()}.tmp"
        stamp_tmp.write_text(_digest(proto) + "\n")
        os.replace(stamp_tmp, out / STAMP)


def ensure_generated(proto: Path = PROTO_FILE, out: Path = OUT_DIR) -> bool:
    """Generate the stubs if they are missing or stale; returns True when it generated them."""
    if not is_stale(proto, out):
        return False
    generate(proto, out)
    return True


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    force = "--force" in argv
    if force:
        generate()
        made = True
    else:
        made = ensure_generated()
    print(f"gRPC stubs {'generated' if made else 'up to date'} in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
