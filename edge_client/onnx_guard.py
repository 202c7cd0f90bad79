"""A bounded look at an ONNX graph before ONNX Runtime gets it (torch-free, and without the ``onnx`` package).

An edge package's graphs come from ``splitinfer export-edge``: a feed-forward head and bottleneck encoders of
standard operators (Conv, Add, Clip, ...). A graph that is anything else is refused before a session is made:

- control flow and anything that nests a graph (``Loop``, ``Scan``, ``If``, ``SequenceMap``, any graph-valued
  attribute): a ``Loop`` of 2**40 steps would hold the edge forever, and no head or encoder has one;
- operators outside the standard ONNX domain (custom and contrib ops) and model-local functions;
- tensors whose data lives in an external file (ONNX Runtime would read a path the graph names);
- more nodes than :data:`MAX_NODES`, or wire data that does not parse.

It also reads what the exporter binds the graph to (``metadata_props``: the bundle id, the head's weights
fingerprint, the rung), and the graph's input and output names. The reader is a plain protobuf wire-format walk
over ``memoryview`` slices (tensor data is skipped, never copied), no recursion into anything but the fixed
ModelProto -> GraphProto -> NodeProto -> AttributeProto path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Tuple

__all__ = ["GraphError", "GraphInfo", "inspect_graph", "MAX_NODES", "REFUSED_OPS"]

MAX_NODES = 50_000
# operators that run a nested graph, repeat work or build sequences: none is in a head or an encoder
REFUSED_OPS = frozenset({"Loop", "Scan", "If", "SequenceMap", "SequenceConstruct", "SequenceInsert", "SequenceAt",
                         "SequenceEmpty", "SequenceErase", "SplitToSequence", "ConcatFromSequence", "Optional",
                         "OptionalGetElement", "OptionalHasElement"})
_STANDARD_DOMAINS = ("", "ai.onnx")
_GRAPH, _GRAPHS = 5, 10  # AttributeProto.AttributeType


class GraphError(ValueError):
    """The graph is refused; the message says why, on one line."""


@dataclass
class GraphInfo:
    inputs: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)
    metadata: Dict[str, str] = field(default_factory=dict)
    ops: Dict[str, int] = field(default_factory=dict)  # op_type -> count
    opsets: Dict[str, int] = field(default_factory=dict)  # domain -> version


def _varint(buf: memoryview, i: int) -> Tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if i >= len(buf):
            raise GraphError("truncated (a varint runs past the end)")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
    raise GraphError("malformed (a varint longer than 10 bytes)")


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value): an int for varints, a memoryview for everything else."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt in (1, 5):
            size = 8 if wt == 1 else 4
            v, i = buf[i:i + size], i + size
        elif wt == 2:
            size, i = _varint(buf, i)
            v, i = buf[i:i + size], i + size
        else:
            raise GraphError(f"malformed (wire type {wt})")
        if i > n or num == 0:
            raise GraphError("truncated or malformed protobuf")
        yield num, wt, v


def _text(v) -> str:
    if not isinstance(v, memoryview):
        raise GraphError("malformed (a string field is not a string)")
    try:
        return bytes(v).decode("utf-8")
    except UnicodeDecodeError:
        raise GraphError("malformed (a string is not UTF-8)") from None


def _pair(v) -> Tuple[str, str]:  # StringStringEntryProto / OperatorSetIdProto's domain
    key = value = ""
    for num, _, x in _fields(v):
        if num == 1:
            key = _text(x)
        elif num == 2:
            value = _text(x) if isinstance(x, memoryview) else str(x)
    return key, value


def _check_tensor(v, where: str) -> None:
    for num, _, x in _fields(v):
        if num == 13 or (num == 14 and x == 1):  # external_data / data_location = EXTERNAL
            raise GraphError(f"{where} keeps its data in an external file; an edge graph holds its own weights")


def _node(v, info: GraphInfo) -> None:
    op, domain, attrs = "", "", []
    for num, _, x in _fields(v):
        if num == 4:
            op = _text(x)
        elif num == 7:
            domain = _text(x)
        elif num == 5:
            attrs.append(x)
    if domain not in _STANDARD_DOMAINS:
        raise GraphError(f"operator {domain}.{op} is outside the standard ONNX domain (custom operators are refused)")
    if op in REFUSED_OPS:
        raise GraphError(f"operator {op} (control flow or sequences) is refused: no head or encoder has one")
    for a in attrs:
        for num, _, x in _fields(a):
            if num in (6, 11) or (num == 20 and x in (_GRAPH, _GRAPHS)):
                raise GraphError(f"operator {op} carries a nested graph: refused")
            if num in (5, 10):  # t, tensors
                _check_tensor(x, f"a constant of {op}")
    info.ops[op] = info.ops.get(op, 0) + 1


def _graph(v, info: GraphInfo) -> None:
    nodes = 0
    for num, _, x in _fields(v):
        if num == 1:
            nodes += 1
            if nodes > MAX_NODES:
                raise GraphError(f"more than {MAX_NODES:,} nodes")
            _node(x, info)
        elif num in (5, 15):  # initializer, sparse_initializer
            _check_tensor(x, "an initializer")
        elif num in (11, 12):  # input, output: ValueInfoProto, name = 1
            name = next((_text(y) for n, _, y in _fields(x) if n == 1), "")
            (info.inputs if num == 11 else info.outputs).append(name)


def inspect_graph(data: bytes) -> GraphInfo:
    """Check a serialised ONNX model (see the module docstring); its inputs, outputs, metadata and operators."""
    buf = memoryview(data)
    info, graphs = GraphInfo(), 0
    try:
        for num, wt, x in _fields(buf):
            if num == 7 and wt == 2:
                graphs += 1
                _graph(x, info)
            elif num == 8 and wt == 2:
                domain = version = None
                for n, _, y in _fields(x):
                    if n == 1:
                        domain = _text(y)
                    elif n == 2:
                        version = y
                info.opsets[domain or ""] = int(version or 0)
            elif num == 14 and wt == 2:
                k, val = _pair(x)
                info.metadata[k] = val
            elif num == 25:
                raise GraphError("model-local functions are refused")
    except GraphError:
        raise
    except (IndexError, ValueError, TypeError) as e:  # slicing past the end, a wrong wire type for a field
        raise GraphError(f"malformed ({e})") from None
    if graphs != 1:
        raise GraphError("not an ONNX model (no graph)" if graphs == 0 else "more than one graph")
    unknown = set(info.opsets) - set(_STANDARD_DOMAINS)
    if unknown:
        raise GraphError(f"imports operator sets outside the standard ONNX domain: {', '.join(sorted(unknown))}")
    return info
