"""An answer's named outputs (:class:`~shared.tasks.base.OutputTensor`) in the messages that carry them: the
splitinfer gRPC ``InferResponse.outputs`` map and the plain REST answer's JSON. Copied by datatype, never by name,
so a new task's outputs travel without a change here or in either transport. (The Open Inference Protocol's
tensors are built by ``cloud_server.oip`` from the same objects.)"""

from __future__ import annotations

import base64
from typing import Any, Dict, Mapping

from .base import DATATYPES, OutputTensor

__all__ = ["to_pb", "from_pb", "to_json", "from_json", "numbers"]

# the field of the gRPC OutputTensor that holds each datatype's elements
_CONTENTS = {"BYTES": "bytes_contents", "INT64": "int64_contents", "FP32": "fp32_contents"}
assert _CONTENTS.keys() == DATATYPES.keys()


def to_pb(outputs: Mapping[str, OutputTensor], target) -> None:
    """Write ``outputs`` into a protobuf map field of OutputTensor messages (``InferResponse.outputs``)."""
    for name, t in outputs.items():
        m = target[name]
        m.datatype = t.datatype
        m.shape.extend(t.shape)
        getattr(m, _CONTENTS[t.datatype]).extend(t.data)


def from_pb(source) -> Dict[str, OutputTensor]:
    """The outputs of a protobuf map of OutputTensor messages; ValueError for a datatype no task uses."""
    out = {}
    for name, m in source.items():
        if m.datatype not in _CONTENTS:
            raise ValueError(f"output {name!r} has datatype {m.datatype!r}, not one of {', '.join(_CONTENTS)}")
        out[name] = OutputTensor(m.datatype, tuple(m.shape), tuple(getattr(m, _CONTENTS[m.datatype])))
    return out


def to_json(outputs: Mapping[str, OutputTensor]) -> Dict[str, Dict[str, Any]]:
    """``outputs`` as JSON: per name its datatype, shape and data, BYTES elements in base64."""
    return {name: {"datatype": t.datatype, "shape": list(t.shape),
                   "data": [base64.b64encode(v).decode("ascii") for v in t.data] if t.datatype == "BYTES"
                   else list(t.data)} for name, t in outputs.items()}


def from_json(doc: Mapping[str, Mapping[str, Any]]) -> Dict[str, OutputTensor]:
    """The inverse of :func:`to_json`; ValueError for a document that does not hold tensors."""
    out = {}
    for name, d in doc.items():
        try:
            dt, data = d["datatype"], list(d["data"])
            if dt == "BYTES":
                data = [base64.b64decode(v, validate=True) for v in data]
            out[name] = OutputTensor(dt, tuple(d["shape"]), tuple(data))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"output {name!r} is not a tensor: {e}") from None
    return out


def numbers(outputs: Mapping[str, OutputTensor]) -> Dict[str, list]:
    """The numeric outputs as plain lists, for a command's one-line JSON (BYTES ones, a mask, go to files)."""
    return {name: list(t.data) for name, t in outputs.items() if t.datatype != "BYTES"}
