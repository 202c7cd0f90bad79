"""The edge packages this server offers (issue 25, item 1): each served model's ``export-edge`` output, packed.

For a served model it looks, in order, for a package

1. exported ahead of time into ``$SPLITINFER_EDGE_PACKAGES`` (a folder of ``<bundle_id>/`` or ``<model name>/``
   package folders: what a server without PyTorch serves; the edge image's export stage writes such folders),
2. in the server's export cache (``$SPLITINFER_CACHE/served-edge/<bundle_id>``; apart from the edge client's own
   cache, ``.../edge/``), then
3. exports it there, once, from the backbone the server already holds (needs PyTorch),

and takes only a package that loads (:class:`edge_client.package.EdgePackage`: every check an edge makes) and
carries the served bundle id and the head weights fingerprint of the server's backbone: what the edge compares
with the model metadata. The archive (:func:`edge_client.fetch.pack_package`) is built once per model and kept.
Both front ends call :meth:`EdgePackages.archive` after their usual authentication; nothing else here knows about a
transport.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Dict, List, Optional

from edge_client.fetch import Archive, pack_package
from edge_client.package import EdgePackage, cache_dir
from shared.bundle import BundleError

from .errors import NotFound

__all__ = ["EdgePackages", "ENV"]

ENV = "SPLITINFER_EDGE_PACKAGES"


def head_weights(served) -> str:
    """The fingerprint of the head the served model's backbone holds (the one the bundle was checked against)."""
    return served.decoder.model.fingerprints()["head"]


class EdgePackages:
    def __init__(self, repository, folder: Optional[str] = None):
        self.repository = repository
        self.folder = Path(folder) if folder else (Path(os.environ[ENV]) if os.environ.get(ENV) else None)
        self._archives: Dict[str, Archive] = {}
        self._lock = threading.Lock()

    def archive(self, name: str) -> Archive:
        """The packed edge package of the served model ``name`` (NotFound: no such model, or no package and no
        way to export one)."""
        served = self.repository.get(name)  # NotFound for an unknown model
        with self._lock:  # one export at a time; later calls get the kept archive
            a = self._archives.get(served.name)
            if a is None or a.bundle_id != served.bundle.bundle_id:
                a = self._archives[served.name] = pack_package(self._package(served))
            return a

    def _candidates(self, served) -> List[Path]:
        out = []
        if self.folder is not None:
            out += [self.folder / served.bundle.bundle_id, self.folder / served.name]
        return out + [cache_dir() / "served-edge" / served.bundle.bundle_id]

    def _package(self, served) -> EdgePackage:
        want, bundle_id = head_weights(served), served.bundle.bundle_id
        for path in self._candidates(served):
            if (path / "edge.json").is_file():
                try:
                    pkg = EdgePackage(path)
                except BundleError:
                    continue
                if pkg.bundle_id == bundle_id and pkg.head_weights == want:
                    return pkg
        try:
            from shared.edge_export import export_edge
        except ImportError as e:
            raise NotFound(f"no edge package for model {served.name!r} (bundle {bundle_id}) and no PyTorch to "
                              f"export one ({e.name} is missing): export it ahead of time with `splitinfer export-edge` "
                              f"into ${ENV}/{bundle_id}") from None
        model = served.decoder.model
        on_cpu = all(p.device.type == "cpu" for p in model.head.parameters())
        out = cache_dir() / "served-edge" / bundle_id
        try:
            export_edge(served.bundle, out, weights=served.weights, model=model if on_cpu else None)
            pkg = EdgePackage(out)
        except (BundleError, OSError, ValueError) as e:
            raise NotFound(f"cannot export the edge package of model {served.name!r}: {e}") from None
        if pkg.head_weights != want:
            raise NotFound(f"the edge package exported for model {served.name!r} holds head {pkg.head_weights}, "
                           f"the server's backbone {want}")
        return pkg


_BY_DATAPLANE: "weakref.WeakKeyDictionary[object, EdgePackages]" = weakref.WeakKeyDictionary()
_MADE = threading.Lock()


def for_dataplane(dp) -> EdgePackages:
    """The :class:`EdgePackages` of a data plane's repository (one per data plane, made on first use)."""
    with _MADE:
        if dp not in _BY_DATAPLANE:
            _BY_DATAPLANE[dp] = EdgePackages(dp.repository)
        return _BY_DATAPLANE[dp]


def grpc_chunks(dp, name: str):
    """The gRPC answer: the archive in :data:`edge_client.fetch.CHUNK_BYTES` chunks, what it is in the first."""
    from edge_client.fetch import CHUNK_BYTES
    from shared._proto import splitinfer_pb2 as pb

    a = for_dataplane(dp).archive(name)
    yield pb.EdgePackageChunk(data=a.data[:CHUNK_BYTES], total_bytes=len(a.data), package_id=a.package_id,
                              sha256=a.sha256)
    for i in range(CHUNK_BYTES, len(a.data), CHUNK_BYTES):
        yield pb.EdgePackageChunk(data=a.data[i:i + CHUNK_BYTES])


async def rest_response(dp, name: str):
    """The REST answer: the archive as ``application/x-tar``, what it is in ``x-splitinfer-*`` headers."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response

    a = await run_in_threadpool(for_dataplane(dp).archive, name)  # a first export takes a while: not on the loop
    return Response(a.data, media_type="application/x-tar", headers={
        "x-splitinfer-package-id": a.package_id, "x-splitinfer-bundle-id": a.bundle_id,
        "x-splitinfer-head-weights": a.head_weights, "x-splitinfer-sha256": a.sha256,
        "content-disposition": f'attachment; filename="{a.bundle_id}.tar"'})
