"""Everything splitinfer takes from CompressAI, and the only module that touches its private attributes.

CompressAI is used as a library: the rate models are ``CompressionModel`` subclasses (its buffer-resizing
``load_state_dict``, ``update(scale_table=...)`` and ``aux_loss``), with its ``EntropyBottleneck``,
``GaussianConditional``, ``quantize_ste`` and rANS coder. What its public API does not offer, we read from
its private attributes, here and nowhere else, so that an upgrade is reviewed in this one file:

=========================  =====================================================================
private attribute          what for (function here)
=========================  =====================================================================
``_quantized_cdf``,        the CDF tables the coder takes (:func:`cdf_tables`, :class:`_Tables`,
``_cdf_length``,           the edge export) and the state-dict keys that hold them
``_offset``                (:data:`CDF_BUFFERS`, :func:`is_table_key`)
``_get_medians()``         the offsets ``z`` and factorized ``y`` are rounded against (:func:`medians`)
``_likelihood()``          the factorized density of given values (:func:`likelihood`)
=========================  =====================================================================

Kept on purpose instead of the upstream equivalents (better for us, same bitstream):

* :func:`rans_decode` pads the payload (:func:`_padded`): CompressAI's ``RansDecoder`` reads 32-bit words
  without bounds checks, so a truncated or forged payload would read past the buffer; padded, it yields
  wrong symbols, which the symbol CRC (``shared.bitstream.symbols_crc``) catches.
* :class:`_Tables` converts each model's CDF tables to the Python lists the rANS coder takes once (per
  table update); ``EntropyModel.compress``/``decompress`` convert them on every call (milliseconds per image).
* :func:`scale_indexes` is ``GaussianConditional.build_indexes`` with one binary search (``searchsorted``)
  instead of a pass per table entry.

:func:`check_version` runs on import: a CompressAI version outside :data:`TESTED_VERSIONS` warns
(:class:`CompressAIVersionWarning`), or raises with ``SPLITINFER_COMPRESSAI_STRICT=1``. After an upgrade,
run the codec tests (``tests/test_compressai_adapter.py`` pins bitstreams and table layouts), review the
attributes above in the new version, then add it to :data:`TESTED_VERSIONS`.
"""

from __future__ import annotations

import os
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

with warnings.catch_warnings():
    # compressai 1.2.8 applies torch.jit.script at import time, which torch 2.14 deprecates: without this, every
    # command that touches the codec printed a FutureWarning about code that is not ours (issue 27)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import compressai
    from compressai.ans import RansDecoder, RansEncoder
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.entropy_models.entropy_models import EntropyModel
    from compressai.layers import GDN
    from compressai.models.base import CompressionModel
    from compressai.ops import quantize_ste

__all__ = [
    "TESTED_VERSIONS", "CompressAIVersionWarning", "check_version",
    "CompressionModel", "EntropyBottleneck", "GaussianConditional", "EntropyModel", "GDN", "quantize_ste",
    "CDF_BUFFERS", "is_table_key", "has_tables", "cdf_tables", "medians", "likelihood",
    "rans_encode", "rans_decode", "scale_indexes", "channel_indexes",
]

TESTED_VERSIONS: Tuple[str, ...] = ("1.2.8",)
STRICT_ENV = "SPLITINFER_COMPRESSAI_STRICT"


class CompressAIVersionWarning(UserWarning):
    """CompressAI is a version whose private attributes this adapter has not been reviewed against."""


def check_version(version: Optional[str] = None, strict: Optional[bool] = None) -> bool:
    """True if ``version`` (default: the installed CompressAI's) is one we tested; otherwise warn, or raise
    ``RuntimeError`` when ``strict`` (default: ``$SPLITINFER_COMPRESSAI_STRICT`` is 1)."""
    version = compressai.__version__ if version is None else version
    if version in TESTED_VERSIONS:
        return True
    if strict is None:
        strict = os.environ.get(STRICT_ENV, "") == "1"
    msg = (f"compressai {version} is installed; splitinfer was tested with {', '.join(TESTED_VERSIONS)} "
           f"(pyproject pins compressai=={TESTED_VERSIONS[-1]}). Its private CDF-table attributes and rANS coder "
           f"may differ: review shared/codec/compressai_adapter.py and run the codec tests before relying on "
           f"it (bitstreams must stay decodable)")
    if strict:
        raise RuntimeError(msg)
    warnings.warn(msg, CompressAIVersionWarning, stacklevel=2)
    return False


check_version()

# ------------------------------------------------------------------------------------------ private reads
CDF_BUFFERS: Tuple[str, ...] = ("_quantized_cdf", "_offset", "_cdf_length")  # EntropyModel's table buffers


def is_table_key(key: str) -> bool:
    """Whether a state-dict key holds coding tables (built by ``update()``, not trained): an entropy
    model's CDF buffers or a ``GaussianConditional``'s ``scale_table``."""
    return any(b in key for b in CDF_BUFFERS) or key.endswith("scale_table")


def has_tables(em: EntropyModel) -> bool:
    return em._quantized_cdf.numel() > 0


def cdf_tables(em: EntropyModel) -> Tuple[Tensor, Tensor, Tensor]:
    """``(cdf [n_tables, max_len], lengths [n_tables], offsets [n_tables])``, int32: the tables CompressAI's
    rANS coder takes (``cdf`` rows padded to the longest table) and our edge coder (``rans.RansTables``) too."""
    return (em._quantized_cdf.to(torch.int32), em._cdf_length.reshape(-1).to(torch.int32),
            em._offset.reshape(-1).to(torch.int32))


def medians(eb: EntropyBottleneck) -> Tensor:
    """The per-channel medians ``(C, 1, 1)`` of an ``EntropyBottleneck`` (not detached: training moves them)."""
    return eb._get_medians()


def likelihood(eb: EntropyBottleneck, values: Tensor) -> Tensor:
    """The factorized density's likelihood of ``values`` (``(C, 1, N)``), without the lower bound."""
    return eb._likelihood(values)[0]


# ------------------------------------------------------------------------------------------ coding
def _padded(payload: bytes, n_symbols: int) -> bytes:
    # CompressAI's rANS decoder reads 32-bit words without bounds checks. Zero padding sized for
    # the worst case keeps a truncated or forged payload's reads inside our buffer (and zeros end
    # every bypass run), so bad input yields wrong symbols (caught by the CRC), never a crash.
    return payload + bytes(8 * n_symbols + 64)


class _Tables:
    """CompressAI's CDF tables as the Python lists its rANS coder takes, converted once per table.

    ``EntropyModel.compress``/``decompress`` convert the whole table (``tolist()``) on every call,
    which costs milliseconds per image, more than the coding itself; the tables never change after
    loading, so we convert once and call the same rANS coder directly.
    """

    def __init__(self):
        self._key = None
        self.cdf: Optional[List[List[int]]] = None
        self.lengths: Optional[List[int]] = None
        self.offsets: Optional[List[int]] = None

    def of(self, em: EntropyModel) -> "_Tables":
        key = (em._quantized_cdf.data_ptr(), tuple(em._quantized_cdf.shape), em._offset.data_ptr())
        if key != self._key:
            if not has_tables(em):
                raise ValueError("uninitialised CDF tables: run update() (at export) first")
            cdf, lengths, offsets = cdf_tables(em)
            self.cdf, self.lengths, self.offsets = cdf.tolist(), lengths.tolist(), offsets.tolist()
            self._key = key
        return self


def rans_encode(em: EntropyModel, tables: _Tables, symbols: Tensor, indexes: Tensor) -> bytes:
    t = tables.of(em)
    return RansEncoder().encode_with_indexes(
        symbols.reshape(-1).int().tolist(), indexes.reshape(-1).int().tolist(), t.cdf, t.lengths, t.offsets
    )


def rans_decode(em: EntropyModel, tables: _Tables, string: bytes, indexes: Tensor) -> Tensor:
    """Integer symbols shaped like ``indexes``. ``string`` is padded (see ``_padded``)."""
    t = tables.of(em)
    n = indexes.numel()
    values = RansDecoder().decode_with_indexes(
        _padded(string, n), indexes.reshape(-1).int().tolist(), t.cdf, t.lengths, t.offsets
    )
    return torch.tensor(values, dtype=torch.int32).reshape(indexes.shape)


def scale_indexes(gc: GaussianConditional, scales: Tensor) -> Tensor:
    """Same result as ``GaussianConditional.build_indexes`` (the number of table scales below each
    scale, bounded scale first), with one binary search instead of a pass per table entry."""
    table = gc.scale_table[:-1].contiguous()
    return torch.searchsorted(table, gc.lower_bound_scale(scales).contiguous()).int()


def channel_indexes(shape: Sequence[int]) -> Tensor:
    """Table index of every element of a (1, C, h, w) tensor coded by an ``EntropyBottleneck``: one table
    per channel (what ``EntropyBottleneck._build_indexes`` computes)."""
    c = shape[1]
    return torch.arange(c, dtype=torch.int32).reshape(1, c, 1, 1).expand(*shape)
