"""Generate the gRPC stubs of ``proto/*.proto`` into ``shared/_proto/`` (never committed).

Two files: ``proto/splitinfer.proto`` (the native ``splitinfer.v1.SplitInference``) and
``proto/grpc_service.proto`` (the Open Inference Protocol's ``inference.GRPCInferenceService``).

``make`` runs ``python -m shared.proto_build`` at install time; :mod:`shared._proto` calls
:func:`ensure_generated` on first import, so a fresh clone or a changed ``.proto`` needs no manual step.
The generated files record the SHA-256 of the ``.proto`` files they came from (``_source.sha256``); they are
regenerated whenever it differs. Generation writes to a temporary folder and renames file by file, so
processes that import the package at the same time never see a half-written module.

The stubs live in ``shared`` (not ``cloud_server``) because the edge client needs them too, and must not
import the server. protoc derives Python import paths from the ``.proto``'s path, so each file is staged as
``shared/_proto/<name>.proto`` and the generated ``*_pb2_grpc`` modules import ``shared._proto.<name>_pb2``
without any rewriting.

One rewrite there is: ``grpc_service_pb2`` registers its messages in a private descriptor pool, not protobuf's
default one. Its symbols (``inference.ModelInferRequest``, ...) are those of every OIP client's own stubs
(tritonclient.grpc ships them), and two files defining one symbol in the default pool cannot both be imported:
with a private pool the server, the edge client and tritonclient load side by side in one process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

__all__ = ["PROTO_FILE", "OIP_PROTO_FILE", "OUT_DIR", "GENERATED", "ensure_generated", "generate", "is_stale"]

ROOT = Path(__file__).resolve().parents[1]
PROTO_FILE = ROOT / "proto" / "splitinfer.proto"
OIP_PROTO_FILE = ROOT / "proto" / "grpc_service.proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"
STAMP = "_source.sha256"
# (name staged for protoc, default source); ``proto`` arguments below replace the first one's source
_SOURCES: Tuple[Tuple[str, Path], ...] = (("splitinfer", PROTO_FILE), ("grpc_service", OIP_PROTO_FILE))
# stems whose messages go into a private descriptor pool (see the module docstring)
_PRIVATE_POOL = ("grpc_service",)
_DEFAULT_POOL, _OWN_POOL = "_descriptor_pool.Default()", "_descriptor_pool.DescriptorPool()"
GENERATED = tuple(f"{stem}{suffix}" for stem, _ in _SOURCES for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))


class ProtoBuildError(RuntimeError):
    """The stubs are missing and cannot be generated (no .proto, no grpcio-tools, or protoc failed)."""


def _sources(proto: Path) -> List[Tuple[str, Path]]:
    return [(_SOURCES[0][0], Path(proto))] + list(_SOURCES[1:])


def _digest(sources: Sequence[Tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for stem, path in sources:
        h.update(f"{stem}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def is_stale(proto: Path = PROTO_FILE, out: Path = OUT_DIR) -> bool:
    """True when a generated file is missing or was made from other versions of the ``.proto`` files."""
    if any(not (out / f).is_file() for f in GENERATED):
        return True
    sources = _sources(proto)
    if not all(p.is_file() for _, p in sources):  # an install without the sources: use what was generated
        return False
    stamp = out / STAMP
    return not stamp.is_file() or stamp.read_text().strip() != _digest(sources)


def generate(proto: Path = PROTO_FILE, out: Path = OUT_DIR) -> None:
    """Run protoc (from grpcio-tools) on ``proto`` (the native service) and the OIP proto; write the modules and
    the stamp into ``out``."""
    sources = _sources(proto)
    for _, path in sources:
        if not path.is_file():
            raise ProtoBuildError(f"{path} not found: cannot generate the gRPC stubs")
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - grpcio-tools is a pinned dependency
        raise ProtoBuildError("grpcio-tools is needed to generate the gRPC stubs (pip install grpcio-tools)") from e
    import grpc_tools

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="splitinfer-proto-") as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "out"
        staged_dir = src / "shared" / "_proto"
        staged_dir.mkdir(parents=True)
        dst.mkdir()
        staged = []
        for stem, path in sources:
            shutil.copyfile(path, staged_dir / f"{stem}.proto")
            staged.append(str(staged_dir / f"{stem}.proto"))
        argv = [
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{well_known}",
            f"--python_out={dst}",
            f"--pyi_out={dst}",
            f"--grpc_python_out={dst}",
            *staged,
        ]
        rc = protoc.main(argv)
        if rc != 0:
            raise ProtoBuildError(f"protoc failed on {', '.join(str(p) for _, p in sources)} (exit {rc})")
        made = dst / "shared" / "_proto"
        for stem in _PRIVATE_POOL:
            module = made / f"{stem}_pb2.py"
            text = module.read_text()
            if text.count(_DEFAULT_POOL) != 1:
                raise ProtoBuildError(f"unexpected protoc output in {module.name}: cannot move it to its own pool")
            module.write_text(text.replace(_DEFAULT_POOL, _OWN_POOL))
        for name in GENERATED:
            tmp_file = out / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(made / name, tmp_file)
            os.replace(tmp_file, out / name)
        stamp_tmp = out / f".{STAMP}.{os.getpid()}.tmp"
        stamp_tmp.write_text(_digest(sources) + "\n")
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
