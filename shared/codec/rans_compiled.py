"""The compiled rANS coder (``ranscoder.c``) through ctypes: :func:`load` finds the library, :class:`CompiledCoder`
calls it with numpy buffers.

ctypes rather than the CPython C API: the C file holds no Python, so the same source builds as this package's
extension (``setup.py``), with a bare ``cc -shared`` in an image, and with a cross compiler for aarch64, where the
check (``scripts/check_arm64_coder.sh``) runs it under qemu from a C driver without any Python for that target.
The cost is one foreign call per payload (microseconds), against thousands of symbols.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["LIB_ENV", "load", "CompiledCoder"]

LIB_ENV = "SPLITINFER_RANS_LIB"  # an explicit path to the library (e.g. one built with plain cc)
_NAME = "_ranscoder"
_HERE = Path(__file__).resolve().parent


def _candidates():
    explicit = os.environ.get(LIB_ENV)
    if explicit:
        return [Path(explicit)]
    return [_HERE / (_NAME + s) for s in importlib.machinery.EXTENSION_SUFFIXES] + [_HERE / (_NAME + ".so")]


def load() -> Tuple[Optional[ctypes.CDLL], str]:
    """(the library, where from) or (None, why not): never raises, so that the Python coder can take over."""
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
