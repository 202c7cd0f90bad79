"""The edge gets its package from the cloud (issue 25, item 1): one archive per served model, checked, cached.

The server offers each served model's edge package (``GET /v2/models/{name}/edge-package`` and the gRPC call
``SplitInference.EdgePackage``, behind the same API keys and TLS) as a plain POSIX tar of ``edge.json`` and the
files it hashes (:func:`pack_package`; no compression, no pickle). An edge with no package of its own
(``EdgeClient`` / ``splitinfer edge --server H:P`` without ``--bundle``) fetches it on first use
(:func:`package_for`):

1. a package in the cache (``$SPLITINFER_CACHE/edge/<bundle_id>``, default ``~/.cache/splitinfer``) is used when it
   loads (every check of :class:`edge_client.package.EdgePackage`) and carries the bundle id and head weights
   fingerprint the server's model metadata names;
2. otherwise the archive is downloaded (at most :data:`MAX_ARCHIVE_BYTES`), its SHA-256 compared with the one the
   server sent, and unpacked member by member into a fresh folder: only regular files with plain names, each at most
   once, never through ``tarfile.extract`` (no links, devices, paths or permissions from the archive);
3. the folder is loaded as an :class:`EdgePackage` (every file's SHA-256 against ``edge.json``, the package id, the
   graphs and their bindings, the arrays), and its bundle id and head fingerprint must be the server's model
   metadata's; then it replaces the cached one. Anything else is a one-line :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from shared.bundle import BundleError
from shared.edge_format import FILE_NAME

from .package import MAX_FILE_BYTES, EdgePackage, cache_dir, read_plain_file

__all__ = ["Archive", "pack_package", "unpack_archive", "package_for", "MAX_ARCHIVE_BYTES", "CHUNK_BYTES"]

MAX_ARCHIVE_BYTES = 512 << 20
MAX_MEMBERS = 1024
CHUNK_BYTES = 1 << 20  # gRPC chunks: well inside the 4 MiB default message limit


@dataclass
class Archive:
    """A packed edge package: the tar bytes and what the server says about them."""

    data: bytes
    package_id: str
    bundle_id: str
    head_weights: str
    sha256: Optional[str] = None  # of ``data``, as the sender states it


def pack_package(pkg: EdgePackage) -> Archive:
    """``pkg`` as a tar of edge.json and every file it lists (each read and hash-checked now), in a fixed order with
    fixed metadata, so the same package always packs to the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ["edge.json"] + sorted(pkg.files):
            data = read_plain_file(pkg.root, name) if name == "edge.json" else pkg.graph(name)  # graph(): read + hash
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.type = len(data), 0o644, 0, tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    return Archive(data, pkg.package_id, pkg.bundle_id, pkg.head_weights, hashlib.sha256(data).hexdigest())


def unpack_archive(data: bytes, dest: Path) -> None:
    """Write the archive's members into the empty folder ``dest``: regular files with plain names only."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BundleError(f"the edge package archive has {len(data):,} bytes, more than {MAX_ARCHIVE_BYTES:,}")
    seen = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if len(seen) >= MAX_MEMBERS:
                    raise BundleError(f"the edge package archive has more than {MAX_MEMBERS} members")
                if not m.isreg():
                    raise BundleError(f"the edge package archive's member {m.name[:80]!r} is not a regular file")
                if not FILE_NAME.fullmatch(m.name) or m.name in seen:
                    raise BundleError(f"the edge package archive's member {m.name[:80]!r} is not a plain file name "
                                      "(or comes twice)")
                if m.size > MAX_FILE_BYTES:
                    raise BundleError(f"the edge package archive's member {m.name} has {m.size:,} bytes")
                seen.add(m.name)
                content = tar.extractfile(m).read()
                fd = os.open(dest / m.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"the edge package archive is not a valid tar: {e}") from None


def _matches(pkg: EdgePackage, bundle_id: str, head_weights: str) -> Optional[str]:
    if pkg.bundle_id != bundle_id:
        return f"bundle {pkg.bundle_id}, but the server's model serves bundle {bundle_id}"
    if head_weights and pkg.head_weights != head_weights:
        return f"head weights {pkg.head_weights}, but the server's backbone holds head {head_weights}"
    return None


def _cached(path: Path, bundle_id: str, head_weights: str) -> Optional[EdgePackage]:
    if not (path / "edge.json").is_file():
        return None
    try:
        pkg = EdgePackage(path)
    except BundleError:  # damaged, or an older format: fetched again
        return None
    return pkg if _matches(pkg, bundle_id, head_weights) is None else None


def package_for(model: Dict, download, cache: Optional[Path] = None) -> EdgePackage:
    """The edge package of the server's ``model`` (its metadata: name, bundle_id, head_weights): from the cache, or
    ``download(name) -> Archive`` checked and cached (see the module docstring)."""
    bundle_id, head_weights, name = model["bundle_id"], model.get("head_weights") or "", model["name"]
    if not (isinstance(bundle_id, str) and FILE_NAME.fullmatch(bundle_id)):
        raise BundleError(f"the server names bundle {str(bundle_id)[:40]!r} for model {name!r}: not a bundle id")
    root = (cache or cache_dir()) / "edge"
    final = root / bundle_id
    pkg = _cached(final, bundle_id, head_weights)
    if pkg is not None:
        return pkg
    archive: Archive = download(name)
    if archive.sha256 and hashlib.sha256(archive.data).hexdigest() != archive.sha256:
        raise BundleError(f"the edge package of model {name!r} arrived damaged (its SHA-256 is not the server's)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{bundle_id}-", dir=root))
    try:
        unpack_archive(archive.data, tmp)
        try:
            pkg = EdgePackage(tmp)
        except BundleError as e:
            raise BundleError(f"the edge package the server sent for model {name!r} is refused: {e}") from None
        why = _matches(pkg, bundle_id, head_weights) or (
            None if not archive.package_id or archive.package_id == pkg.package_id
            else f"package {pkg.package_id}, but the server announced {archive.package_id}")
        if why:
            raise BundleError(f"the edge package the server sent for model {name!r} does not match its model: {why}")
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:  # another process installed it first: use theirs when it is good
            pkg = _cached(final, bundle_id, head_weights)
            if pkg is None:
                raise BundleError(f"cannot install the edge package of model {name!r} into {final}") from None
            return pkg
        pkg.root = final  # the folder it checked, renamed whole; graphs are hash-checked again as they are read
        return pkg
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
