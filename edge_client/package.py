"""Edge packages: what ``splitinfer export-edge`` writes and the torch-free runtime reads.

A package (see ``shared.edge_export`` for its layout) is tied to one bundle: it carries the bundle's
manifest (id, rungs, measured bpp), so an edge holding it picks rungs and passes the server's bundle check
exactly as an edge holding the bundle.

It is checked as a whole on load, and anything wrong is a one-line :class:`BundleError` (``splitinfer`` prints it
and exits 2), never a traceback:

- ``edge.json``: every field's type and range (format, ids, preprocessing, classes, each rung's coding spec);
- files: every file ``edge.json`` names (the head, each rung's graph and arrays, ``manifest.json``) is listed in
  its hashed ``files``; each name is a plain name inside the package (no separator, no ``..``, no absolute path),
  a regular file, not a link; each one's SHA-256 matches; the package id is the hash of them all;
- binding: the bundle manifest's id and head fingerprint equal ``edge.json``'s, and every graph carries them in
  its metadata (``shared.edge_format``: a head from another package, or an encoder from another rung, is refused);
- graphs: :func:`edge_client.onnx_guard.inspect_graph` (no control flow, no custom operators, no external
  data, bounded size) and the input and output names the runtime feeds and reads;
- arrays: each rung's safetensors parse, hold what its rate model codes with, and make valid rANS tables and
  integer layers.

The runtime reads graphs through :meth:`EdgePackage.graph` (read once more and hash-checked: the bytes checked are
the bytes run) and arrays through :meth:`EdgePackage.arrays`.

:func:`find_package` turns what a user names (an edge package, a bundle folder, or nothing: the embedded
ladder) into a package folder. For a bundle it uses the export cache (``$SPLITINFER_CACHE``, default
``~/.cache/splitinfer``) and, where PyTorch is installed, exports into it on first use; an edge install
without PyTorch needs a package made elsewhere (``splitinfer export-edge``) or fetched from its server
(:mod:`edge_client.fetch`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from shared.bundle import Bundle, BundleError, default_bundle_path, load_bundle
from shared.edge_format import EDGE_FORMAT, FILE_NAME, META_BUNDLE, META_HEAD, META_RUNG, RATE_MODELS, package_id

from .onnx_guard import GraphError, inspect_graph

__all__ = ["EdgePackage", "EDGE_FORMAT", "find_package", "is_edge_package", "cache_dir", "MAX_FILE_BYTES"]

MAX_EDGE_JSON_BYTES = 1 << 20
MAX_FILE_BYTES = 1 << 30  # the deep ladder's head is 9.4 MB
_HEX = set("0123456789abcdef")


def is_edge_package(path: Union[str, Path]) -> bool:
    return (Path(path) / "edge.json").is_file()


def cache_dir() -> Path:
    root = os.environ.get("SPLITINFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "splitinfer")
    return Path(root)


def _is_hex(v: Any, n: int) -> bool:
    return isinstance(v, str) and len(v) == n and set(v) <= _HEX


def _is_int(v: Any, lo: int = -(1 << 62), hi: int = 1 << 62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_plain_file(root: Path, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``root/name``, where ``name`` is a plain file name and the file a regular one (a link is refused:
    it could point anywhere); :class:`BundleError` otherwise."""
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        raise BundleError(f"edge package {root}: file name {str(name)[:80]!r} is not a plain name inside the package "
                          "(no separator, '..' or absolute path)")
    path = root / name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise BundleError(f"edge package {root}: {name} is missing") from None
    except OSError as e:  # ELOOP: a link
        raise BundleError(f"edge package {root}: cannot open {name} as a plain file ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"edge package {root}: {name} is not a regular file")
        if st.st_size > limit:
            raise BundleError(f"edge package {root}: {name} has {st.st_size:,} bytes, more than {limit:,}")
        return f.read(limit + 1)


class _Checker:
    """Field checks of ``edge.json``: each failure a BundleError naming the field."""

    def __init__(self, where: str):
        self.where = where

    def need(self, ok: bool, field: str, want: str, value: Any) -> None:
        if not ok:
            shown = json.dumps(value)[:60] if _jsonable(value) else type(value).__name__
            raise BundleError(f"{self.where}: {field} must be {want}, got {shown}")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _check_manifest(m: Any, c: _Checker) -> None:
    c.need(isinstance(m, dict), "edge.json", "a JSON object", m)
    fmt = m.get("format")
    if fmt != EDGE_FORMAT:
        raise BundleError(f"{c.where}: format {str(fmt)[:40]!r}, this runtime reads {EDGE_FORMAT!r}; export the "
                          "package again with this version (`splitinfer export-edge`)")
    for key, n in (("bundle_id", 16), ("package_id", 16), ("head_weights", 16)):
        c.need(_is_hex(m.get(key), n), key, f"{n} hex digits", m.get(key))
    for key in ("model", "split"):
        c.need(isinstance(m.get(key), str) and 0 < len(m[key]) <= 200, key, "a non-empty string", m.get(key))
    c.need(_is_int(m.get("num_classes"), 1, 1 << 20), "num_classes", "a positive integer", m.get("num_classes"))
    c.need(m.get("labels") is None or isinstance(m["labels"], str), "labels", "a label set's name or null",
           m.get("labels"))
    c.need(m.get("feature_stride") is None or _is_int(m["feature_stride"], 1, 1024), "feature_stride",
           "a positive integer", m.get("feature_stride"))
    pre = m.get("preprocess")
    c.need(isinstance(pre, dict), "preprocess", "an object", pre)
    size = pre.get("input_size")
    c.need(isinstance(size, list) and len(size) == 2 and all(_is_int(v, 1, 8192) for v in size),
           "preprocess.input_size", "[H, W] (integers 1..8192)", size)
    c.need(pre.get("resize") is None or _is_int(pre["resize"], 1, 16384), "preprocess.resize",
           "an integer 1..16384 or null", pre.get("resize"))
    for key in ("mean", "std"):
        v = pre.get(key)
        c.need(isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v)
               and (key == "mean" or all(x > 0 for x in v)), f"preprocess.{key}",
               "3 finite numbers" + (" > 0" if key == "std" else ""), v)
    c.need(isinstance(m.get("head"), str), "head", "a file name", m.get("head"))
    files = m.get("files")
    c.need(isinstance(files, dict) and 0 < len(files) <= 1024, "files", "an object of file name -> SHA-256", files)
    for name, digest in files.items():
        c.need(_is_hex(digest, 64), f"files[{name[:40]!r}]", "64 hex digits", digest)
    rungs = m.get("rungs")
    c.need(isinstance(rungs, list) and 0 < len(rungs) <= 256, "rungs", "a non-empty list", rungs)
    for i, r in enumerate(rungs):
        _check_rung(r, i, c)


def _check_rung(r: Any, i: int, c: _Checker) -> None:
    at = f"rungs[{i}]"
    c.need(isinstance(r, dict), at, "an object", r)
    c.need(r.get("index") == i and _is_int(r.get("index")), f"{at}.index", f"{i} (rungs in order)", r.get("index"))
    for key in ("onnx", "arrays"):
        c.need(isinstance(r.get(key), str), f"{at}.{key}", "a file name", r.get(key))
    kind = r.get("rate_model")
    c.need(kind in RATE_MODELS, f"{at}.rate_model", "one of " + ", ".join(RATE_MODELS), kind)
    for key in ("stride", "latent"):
        c.need(_is_int(r.get(key), 1, 1 << 16), f"{at}.{key}", "a positive integer", r.get(key))
    if kind in ("hyperprior", "vr-hyperprior"):
        for key, hi in (("hyper", 1 << 16), ("hyper_stride", 64), ("levels", 1 << 16)):
            c.need(_is_int(r.get(key), 1, hi), f"{at}.{key}", f"an integer 1..{hi}", r.get(key))
        c.need(isinstance(r.get("means"), bool), f"{at}.means", "true or false", r.get("means"))
        hs = r.get("h_s")
        c.need(isinstance(hs, list) and 0 < len(hs) <= 16, f"{at}.h_s", "a list of 1..16 layers", hs)
        for j, s in enumerate(hs):
            ok = (isinstance(s, dict) and _is_int(s.get("up"), 1, 8)
                  and all(s.get(k) is None or _is_int(s.get(k), -(1 << 40), 1 << 40) for k in ("lo", "hi")))
            c.need(ok, f"{at}.h_s[{j}]", "{lo, hi: integers or null, up: 1..8}", s)
    if kind == "vr-hyperprior":
        q = r.get("quality_levels")
        c.need(isinstance(q, list) and len(q) == 2 and all(_is_int(v, -1000, 1000) for v in q) and q[0] <= q[1],
               f"{at}.quality_levels", "[lo, hi] (integers, lo <= hi)", q)
        c.need(_is_num(r.get("log_ratio")) and r["log_ratio"] > 0, f"{at}.log_ratio", "a finite number > 0",
               r.get("log_ratio"))
    if kind == "static":
        c.need(_is_num(r.get("qp")) and r["qp"] > 0, f"{at}.qp", "a finite number > 0", r.get("qp"))


def _check_arrays(a: Dict[str, np.ndarray], spec: Dict) -> None:
    """Build what the runtime builds from a rung's arrays (rANS tables, integer layers), so that a malformed one
    fails here, at load, rather than in the first frame. Raises KeyError / ValueError / TypeError."""
    from shared.codec.integer_numpy import layers_from_arrays
    from shared.codec.rans import RansTables

    def tables(prefix: str) -> int:
        for key in ("cdf", "cdf_length", "offset"):
            if a[f"{prefix}.{key}"].dtype.kind not in "iu":
                raise TypeError(f"{prefix}.{key} is {a[f'{prefix}.{key}'].dtype}, not integers")
        return len(RansTables(a[f"{prefix}.cdf"], a[f"{prefix}.cdf_length"], a[f"{prefix}.offset"]).cdf)

    def medians(key: str, n: int) -> None:
        v = a[key]
        if v.dtype.kind != "f" or v.size != n or not np.isfinite(v).all():
            raise ValueError(f"{key} must hold {n} finite numbers, not {v.size} of {v.dtype}")

    n_y = tables("y")
    if spec["rate_model"] in ("hyperprior", "vr-hyperprior"):
        medians("z.medians", tables("z"))
        for j in range(len(spec["h_s"])):
            for part, kinds in (("w", "i"), ("mult", "iu"), ("bias", "iu")):
                if a[f"h_s.{j}.{part}"].dtype.kind not in kinds:
                    raise TypeError(f"h_s.{j}.{part} is {a[f'h_s.{j}.{part}'].dtype}")
        layers = layers_from_arrays(a, spec["h_s"], "h_s.")
        for layer in layers:
            out, *kernel = layer.w.shape  # (out, in, k, k): one multiplier and one bias per output channel
            if len(kernel) != 3 or layer.mult.shape != layer.bias.shape or layer.mult.shape != (out,):
                raise ValueError("an h_s layer's weights, multipliers and biases do not fit together")
    else:
        medians("y.medians", n_y)


class EdgePackage:
    """An exported edge package, checked as a whole (see the module docstring)."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)
        path = self.root / "edge.json"
        where = str(path)
        if not path.is_file():
            raise BundleError(f"no edge.json in {self.root}: not an edge package (make one with `splitinfer "
                              f"export-edge --bundle BUNDLE --out {self.root}`)")
        raw = read_plain_file(self.root, "edge.json", MAX_EDGE_JSON_BYTES)
        try:
            m = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise BundleError(f"{where} is not JSON: {e}") from None
        c = _Checker(where)
        _check_manifest(m, c)
        files: Dict[str, str] = m["files"]
        if "edge.json" in files:
            raise BundleError(f"{where}: files lists edge.json itself (it cannot hold its own hash)")
        named = ["manifest.json", m["head"]] + [r[k] for r in m["rungs"] for k in ("onnx", "arrays")]
        for name in named:
            if name not in files:
                raise BundleError(f"{where}: {str(name)[:80]!r} is used by the package but not listed in its hashed "
                                  "files (a file that is not hashed is not loaded)")
        self._digests = files
        for name in files:
            self._read(name)  # plain name, regular file, hash
        if m["package_id"] != package_id(files, m["bundle_id"]):
            raise BundleError(f"{where}: package_id {m['package_id']} is not the hash of its files and bundle")
        self.manifest = m
        try:
            self.bundle: Bundle = load_bundle(self.root)  # the bundle's manifest.json: rungs, bpp, id
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{self.root / 'manifest.json'} is malformed: {e}") from None
        if self.bundle.bundle_id != m["bundle_id"]:
            raise BundleError(f"{where}: made for bundle {m['bundle_id']}, but carries bundle "
                              f"{self.bundle.bundle_id}'s manifest")
        if len(m["rungs"]) != len(self.bundle.rungs):
            raise BundleError(f"{where}: {len(m['rungs'])} rungs, its bundle has {len(self.bundle.rungs)}")
        trained = (self.bundle.backbone_weights or {}).get("head")
        if trained is not None and trained != m["head_weights"]:
            raise BundleError(f"{where}: head weights {m['head_weights']}, but bundle {self.bundle_id} was trained "
                              f"against head {trained}")
        self._check_graph(m["head"], ["image"], ["feature"], {META_BUNDLE: m["bundle_id"], META_HEAD: m["head_weights"]})
        self._arrays: Dict[int, Dict[str, np.ndarray]] = {}
        for r in m["rungs"]:
            outs = ["y", "z"] if r["rate_model"] in ("hyperprior", "vr-hyperprior") else ["y"]
            self._check_graph(r["onnx"], ["feature"], outs, {META_BUNDLE: m["bundle_id"], META_RUNG: str(r["index"])})
            self._arrays[r["index"]] = self._load_arrays(r)

    # -- reading, checked --------------------------------------------------------------------------------
    def _read(self, name: str) -> bytes:
        data = read_plain_file(self.root, name)
        if hashlib.sha256(data).hexdigest() != self._digests.get(name):
            raise BundleError(f"{self.root / name} does not match the hash in edge.json (corrupted or replaced)")
        return data

    def graph(self, name: str) -> bytes:
        """A graph's bytes, read and hash-checked now: what ONNX Runtime gets is what was checked."""
        return self._read(name)

    def arrays(self, index: int) -> Dict[str, np.ndarray]:
        """Rung ``index``'s coding arrays (checked at load)."""
        return self._arrays[index]

    def _check_graph(self, name: str, inputs: List[str], outputs: List[str], binding: Dict[str, str]) -> None:
        where = self.root / name
        try:
            info = inspect_graph(self._read(name))
        except GraphError as e:
            raise BundleError(f"{where}: ONNX graph refused: {e}") from None
        if info.inputs != inputs or info.outputs != outputs:
            raise BundleError(f"{where}: takes {info.inputs} and gives {info.outputs}; the runtime feeds {inputs} "
                              f"and reads {outputs}")
        for key, want in binding.items():
            have = info.metadata.get(key)
            if have != want:
                raise BundleError(f"{where}: the graph is bound to {key} {str(have)[:40]!r}, the package to {want!r} "
                                  "(a graph from another package or rung)")

    def _load_arrays(self, spec: Dict) -> Dict[str, np.ndarray]:
        from safetensors.numpy import load

        name = spec["arrays"]
        try:
            a = load(self._read(name))
        except BundleError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for any malformed header
            raise BundleError(f"{self.root / name}: not a safetensors file: {str(e).splitlines()[0][:120]}") from None
        try:
            _check_arrays(a, spec)
        except KeyError as e:
            raise BundleError(f"{self.root / name}: array {e} is missing (rate model {spec['rate_model']})") from None
        except (TypeError, ValueError, IndexError) as e:
            raise BundleError(f"{self.root / name}: malformed arrays: {str(e).splitlines()[0][:160]}") from None
        return a

    # -- identity ------------------------------------------------------------------------------------
    @property
    def package_id(self) -> str:
        return self.manifest["package_id"]

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def head_weights(self) -> str:
        return self.manifest["head_weights"]

    @property
    def files(self) -> Dict[str, str]:
        """file name -> SHA-256, every file of the package but edge.json."""
        return dict(self._digests)

    def __repr__(self) -> str:
        return (f"EdgePackage({str(self.root)!r}, bundle {self.bundle_id}, {self.bundle.model}/{self.bundle.split}, "
                f"{len(self.bundle.rungs)} rungs)")


def _export_into_cache(bundle: Bundle, weights: Optional[str]) -> Path:
    key = bundle.bundle_id + ("" if weights is None else "-" + hashlib.sha256(str(weights).encode()).hexdigest()[:8])
    out = cache_dir() / "edge" / key
    if is_edge_package(out):
        try:
            EdgePackage(out)
            return out
        except BundleError:  # an export of an older format (or damaged): made again below where PyTorch is
            pass
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
    """An edge package for ``bundle``: an edge package folder, a bundle folder (its cached export), or None (the
    embedded ladder's)."""
    if isinstance(bundle, EdgePackage):
        return bundle
    if isinstance(bundle, (str, Path)) and is_edge_package(bundle):
        return EdgePackage(bundle)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(default_bundle_path() if bundle is None else bundle)
    return EdgePackage(_export_into_cache(b, weights))
