"""The project's compiled library through ctypes: :func:`load` finds it, :class:`CompiledCoder` calls its rANS
coder (``ranscoder.c``) and :class:`CompiledHyperDecoder` its integer h_s (``hyperdec.c``) with numpy buffers.

One library, one loader: ``rans.py`` and ``integer_numpy.py`` each pick their compiled implementation from it, or
their Python/numpy one where it does not load. The hyper-decoder is optional in it (a library built from
``ranscoder.c`` alone still serves the coder).

ctypes rather than the CPython C API: the C file holds no Python, so the same source builds as this package's
extension (``setup.py``), with a bare ``cc -shared`` in an image, and with a cross compiler for aarch64, where the
check (``scripts/check_arm64_coder.sh``) runs it under qemu from a C driver without any Python for that target.
The cost is one foreign call per payload or per h_s (microseconds), against thousands of symbols or millions of
multiply-adds.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["LIB_ENV", "load", "CompiledCoder", "CompiledHyperDecoder"]

LIB_ENV = "SPLITINFER_RANS_LIB"  # an explicit path to the library (e.g. one built with plain cc)
_NAME = "_ranscoder"
_HERE = Path(__file__).resolve().parent


def _candidates():
    explicit = os.environ.get(LIB_ENV)
    if explicit:
        return [Path(explicit)]
    return [_HERE / (_NAME + s) for s in importlib.machinery.EXTENSION_SUFFIXES] + [_HERE / (_NAME + ".so")]


_loaded: Optional[Tuple[Optional[ctypes.CDLL], str]] = None


def load() -> Tuple[Optional[ctypes.CDLL], str]:
    """(the library, where from) or (None, why not), found once per process: never raises, so that the Python
    coder and the numpy h_s can take over."""
    global _loaded
    if _loaded is None:
        _loaded = _find()
    return _loaded


def _find() -> Tuple[Optional[ctypes.CDLL], str]:
    errors = []
    for p in _candidates():
        if not p.is_file():
            continue
        try:
            lib = ctypes.CDLL(str(p))
            _declare(lib)
            return lib, str(p)
        except (OSError, AttributeError) as e:  # another architecture, a missing symbol
            errors.append(f"{p.name}: {e}")
    where = os.environ.get(LIB_ENV) or f"{_HERE}/{_NAME}*.so"
    return None, "; ".join(errors) or f"not built (no {where}; `pip install .` builds it where a C compiler is)"


def _declare(lib: ctypes.CDLL) -> None:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.si_rans_encode.argtypes = [p, p, i64, p, i64, p, p, i64, p, i64]
    lib.si_rans_encode.restype = i64
    lib.si_rans_decode.argtypes = [ctypes.c_char_p, i64, p, i64, p, i64, p, p, i64, p]
    lib.si_rans_decode.restype = i64
    try:
        hs = lib.si_int_hyper
    except AttributeError:  # built from ranscoder.c alone (an older build, or a bare `cc` of that one file)
        lib.has_hyperdec = False
        return
    hs.argtypes = [ctypes.POINTER(_HsLayer), i64, p, i64, i64, i64, i64, i64, i64, i64, i64, i64, p, p, p, i64]
    hs.restype = i64
    lib.has_hyperdec = True


class _HsLayer(ctypes.Structure):
    """hyperdec.h's si_hs_layer."""

    _fields_ = [("w", ctypes.c_void_p), ("mult", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("c_out", ctypes.c_int64), ("c_in", ctypes.c_int64), ("k", ctypes.c_int64),
                ("lo", ctypes.c_int64), ("hi", ctypes.c_int64), ("up", ctypes.c_int64)]


class CompiledCoder:
    """``errors``: ranscoder.h's return codes -> (exception type, message), ``rans.ERRORS``: both coders raise alike."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL, where: str, errors: Dict[int, Tuple[type, str]]):
        self.lib, self.where, self.errors = lib, where, errors

    def _check(self, rc: int) -> int:
        if rc < 0:
            exc, msg = self.errors.get(rc, (RuntimeError, f"rANS coder error {rc}"))
            raise exc(msg)
        return rc

    def encode_with_indexes(self, symbols: np.ndarray, indexes: np.ndarray, tables) -> bytes:
        sym = np.ascontiguousarray(symbols, dtype=np.int64).reshape(-1)
        idx = np.ascontiguousarray(indexes, dtype=np.int64).reshape(-1)
        if sym.size != idx.size:
            raise ValueError(f"{sym.size} symbols but {idx.size} indexes")
        cdf, lengths, offsets = tables.c_arrays()
        args = (sym.ctypes.data, idx.ctypes.data, sym.size, cdf.ctypes.data, cdf.shape[1], lengths.ctypes.data,
                offsets.ctypes.data, len(cdf))
        cap = 8 + 4 * sym.size + 256  # fewer words than symbols unless escapes are many; else it says the size
        while True:
            out = np.empty(cap, dtype=np.uint8)
            n = self._check(self.lib.si_rans_encode(*args, out.ctypes.data, cap))
            if n <= cap:
                return out[:n].tobytes()
            cap = n

    def decode_with_indexes(self, data: bytes, indexes: np.ndarray, tables) -> np.ndarray:
        idx = np.ascontiguousarray(indexes, dtype=np.int64)
        flat = idx.reshape(-1)
        cdf, lengths, offsets = tables.c_arrays()
        out = np.empty(flat.size, dtype=np.int32)
        data = bytes(data)
        self._check(self.lib.si_rans_decode(data, len(data), flat.ctypes.data, flat.size, cdf.ctypes.data, cdf.shape[1],
                                       lengths.ctypes.data, offsets.ctypes.data, len(cdf), out.ctypes.data))
        return out.reshape(idx.shape)


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class CompiledHyperDecoder:
    """``int_hyper_synthesis`` in C. ``errors``: hyperdec.h's return codes -> (exception type, message);
    ``plan``: the shape check both implementations share (``integer_numpy._plan``); ``in_max``: the z clip."""

    name = "c"

    def __init__(self, lib: ctypes.CDLL, errors: Dict[int, Tuple[type, str]], plan, in_max: int):
        self.lib, self.errors, self.plan, self.in_max = lib, errors, plan, in_max
        self._work = threading.local()  # each thread's work buffer, kept between calls (no allocation per frame)

    def __call__(self, layers, z_sym: np.ndarray, levels: int, means: bool, y_hw: Tuple[int, int]):
        z = np.ascontiguousarray(z_sym, dtype=np.int64)
        crop = self.plan(layers, z.shape, levels, means, y_hw)
        # the layers keep their arrays contiguous (IntLayer.__post_init__) and alive for the call
        specs = (_HsLayer * len(layers))(*[
            _HsLayer(l.w.ctypes.data, l.mult.ctypes.data, l.bias.ctypes.data, l.w.shape[0], l.w.shape[1], l.w.shape[2],
                     _I64_MIN if l.lo is None else l.lo, _I64_MAX if l.hi is None else l.hi, l.up) for l in layers])
        last = layers[-1]
        c_out = last.w.shape[0] // last.up**2
        c_t = c_out // 2 if means else c_out
        idx = np.empty((z.shape[0], c_t, *crop), dtype=np.int64)
        m = np.empty(idx.shape, dtype=np.float32) if means else None
        args = (specs, len(layers), z.ctypes.data, *z.shape, self.in_max, int(levels), int(means), *crop,
                idx.ctypes.data, None if m is None else m.ctypes.data)
        work = getattr(self._work, "buf", None)
        while True:
            size = 0 if work is None else work.size
            rc = self.lib.si_int_hyper(*args, None if work is None else work.ctypes.data, size)
            if rc <= size:  # 0: done; negative: an error
                break
            work = self._work.buf = np.empty(rc, dtype=np.uint8)  # it said how much it needs
        if rc < 0:
            exc, msg = self.errors.get(rc, (RuntimeError, f"integer h_s error {rc}"))
            raise exc(msg)
        return idx, m
