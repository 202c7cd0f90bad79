"""Edge packages: what ``splitinfer export-edge`` writes and the torch-free runtime reads.

A package (see ``shared.edge_export`` for its layout) is tied to one bundle: it carries the bundle's
manifest (id, rungs, measured bpp), so an edge holding it picks rungs and passes the server's bundle check
exactly as an edge holding the bundle. Every file is checked against ``edge.json``'s SHA-256 on load.

:func:`find_package` turns what a user names (an edge package, a bundle folder, or nothing: the embedded
ladder) into a package folder. For a bundle it uses the export cache (``$SPLITINFER_CACHE``, default
``~/.cache/splitinfer``) and, where PyTorch is installed, exports into it on first use; an edge install
without PyTorch needs a package made elsewhere (``splitinfer export-edge``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Union

from shared.bundle import Bundle, BundleError, default_bundle_path, load_bundle

__all__ = ["EdgePackage", "EDGE_FORMAT", "find_package", "is_edge_package", "cache_dir"]

EDGE_FORMAT = "splitinfer-edge/1"


def is_edge_package(path: Union[str, Path]) -> bool:
    return (Path(path) / "edge.json").is_file()


def cache_dir() -> Path:
    root = os.environ.get("SPLITINFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "splitinfer")
    return Path(root)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class EdgePackage:
    """An exported edge package, checked: format, file hashes, and the bundle manifest's own id."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        path = self.root / "edge.json"
        if not path.is_file():
            raise BundleError(f"no edge.json in {self.root}: not an edge package (make one with `splitinfer "
                              f"export-edge --bundle BUNDLE --out {self.root}`)")
        try:
            m = json.loads(path.read_text())
            fmt = m.get("format")
            if fmt != EDGE_FORMAT:
                raise BundleError(f"{path}: format {fmt!r}, this runtime reads {EDGE_FORMAT!r}; export the "
                                  "package again with this version (`splitinfer export-edge`)")
            files: Dict[str, str] = dict(m["files"])
            m["rungs"], m["bundle_id"], m["head"]  # noqa: B018 (presence check)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, BundleError):
                raise
            raise BundleError(f"{path} is malformed: {e}") from e
        for name, digest in files.items():
            f = self.root / name
            if not f.is_file() or _sha256(f) != digest:
                raise BundleError(f"{f} is missing or does not match the hash in edge.json (corrupted or replaced)")
        self.manifest = m
        self.bundle: Bundle = load_bundle(self.root)  # the bundle's manifest.json: rungs, bpp, id
        if self.bundle.bundle_id != m["bundle_id"]:
            raise BundleError(f"{path}: made for bundle {m['bundle_id']}, but carries bundle "
                              f"{self.bundle.bundle_id}'s manifest")
        if len(m["rungs"]) != len(self.bundle.rungs):
            raise BundleError(f"{path}: {len(m['rungs'])} rungs, its bundle has {len(self.bundle.rungs)}")

    @property
    def package_id(self) -> str:
        return self.manifest["package_id"]

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    def __repr__(self) -> str:
        return (f"EdgePackage({str(self.root)!r}, bundle {self.bundle_id}, {self.bundle.model}/{self.bundle.split}, "
                f"{len(self.bundle.rungs)} rungs)")


def _export_into_cache(bundle: Bundle, weights: Optional[str]) -> Path:
    key = bundle.bundle_id + ("" if weights is None else "-" + hashlib.sha256(str(weights).encode()).hexdigest()[:8])
    out = cache_dir() / "edge" / key
    if is_edge_package(out):
        return out
    try:
        from shared.edge_export import export_edge
    except ImportError as e:
        raise BundleError(
            f"{bundle.root} is a bundle, and this edge install has no edge package for it (and no PyTorch to make "
            f"one: {e.name} is missing). On a machine with the full install run `splitinfer export-edge --bundle "
            f"{bundle.root} --out EDGE_DIR`, copy EDGE_DIR here and pass it instead of the bundle.") from None
    print(f"exporting the edge package of bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}) to {out} "
          "(once)", file=sys.stderr)
    return export_edge(bundle, out, weights=weights)


def find_package(bundle: Union[str, Path, Bundle, EdgePackage, None] = None,
                 weights: Optional[str] = None) -> EdgePackage:
    """An edge package for ``bundle``: an edge package folder, a bundle (its cached export), or None (the
    embedded ladder's)."""
    if isinstance(bundle, EdgePackage):
        return bundle
    if isinstance(bundle, (str, Path)) and is_edge_package(bundle):
        return EdgePackage(bundle)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(default_bundle_path() if bundle is None else bundle)
    return EdgePackage(_export_into_cache(b, weights))
