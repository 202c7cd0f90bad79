"""What an edge package is, as both sides agree on it (torch-free): the exporter (:mod:`shared.edge_export`) writes
it, the edge (:mod:`edge_client.package`) checks it, the server (:mod:`cloud_server.edge_packages`) offers it.

Format 2 binds each ONNX graph to its package: the exporter writes ``metadata_props`` into every graph (the bundle
id in each, the head's weights fingerprint in the head, the rung index in each rung's encoder), which the edge
compares with ``edge.json`` and the bundle's own manifest. A package of format 1 has no such binding and is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Dict

__all__ = ["EDGE_FORMAT", "META_BUNDLE", "META_HEAD", "META_RUNG", "RATE_MODELS", "FILE_NAME", "package_id"]

EDGE_FORMAT = "splitinfer-edge/2"
META_BUNDLE, META_HEAD, META_RUNG = "splitinfer.bundle_id", "splitinfer.head_weights", "splitinfer.rung"
RATE_MODELS = ("hyperprior", "vr-hyperprior", "factorized", "static")
# a package is one flat folder: every file name is a plain name (no separator, no '..', not hidden)
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def package_id(files: Dict[str, str], bundle_id: str) -> str:
    """Content hash of an edge package: its bundle and every file's hash."""
    key = json.dumps({"bundle_id": bundle_id, "files": files}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]
