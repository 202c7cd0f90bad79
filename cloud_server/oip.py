"""The Open Inference Protocol (KServe v2 / Triton) on top of the data plane: wire types and tensor conversion.

Shared by both OIP front ends, ``rest/routes.py`` (HTTP/JSON + the binary tensor extension) and
``grpc/oip_service.py`` (``inference.GRPCInferenceService``): they decode their wire format into
:class:`InputTensor` s, requested outputs and parameters; :func:`make_call` turns those into one data-plane request;
:func:`answer_tensors` turns the data plane's answer into output :class:`Tensor` s, which each front end encodes
back.

What a model looks like through the protocol (``docs/service.md`` has the table):

- one input ``bitstream``, BYTES, shape ``[1]``: one message in the splitinfer bitstream format;
- outputs ``topk_index`` INT64 ``[1, k]``, ``topk_score`` FP32 ``[1, k]``, ``topk_name`` BYTES ``[1, k]``
  (best first; k = ``top_k``), then the outputs of the model's task (``shared.tasks.Task.outputs``): for
  segmentation models ``mask_png`` BYTES ``[1]`` and ``class_pixels`` INT64 ``[1, num_classes]``;
- ``classification: N`` on ``topk_score``: that output becomes BYTES ``[1, N]`` of ``"score:index:name"``
  (Triton's classification extension);
- the model's one version is its bundle id.

Parameters the protocol leaves open are accepted and ignored (the spec defines no refusal for them, and
tritonclient adds some on its own); the ones this server knows are type-checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from shared.tasks import TOPK_INDEX, TOPK_NAME, TOPK_SCORE, get_task, list_tasks

from .errors import InvalidArgument, NotFound, describe_validation
from .types import InferenceRequest, InferenceResponse, ModelMetadata, parse_request

__all__ = [
    "MAX_JSON_DEPTH", "MAX_JSON_VALUES", "INPUT_NAME", "OUTPUT_NAMES", "load_json", "pack_bytes", "unpack_bytes",
    "RequestParameters", "InputParameters", "OutputParameters", "RequestInput", "RequestOutput", "InferRequestBody",
    "ResponseOutput", "InferResponseBody", "TensorMetadata", "ModelMetadataBody",
    "InputTensor", "RequestedOutput", "Tensor", "OipCall",
    "MAX_OUTPUTS", "MAX_DIMS", "check_counts", "parse_model", "check_version", "model_outputs", "model_metadata", "server_metadata", "make_call",
    "answer_tensors", "response_parameters", "render_rest", "decode_base64_elements",
]

# Our requests nest 4 deep ({inputs: [{parameters: {}}]}); anything far deeper is an attack on the parser
MAX_JSON_DEPTH = 32
# values (objects, arrays, strings, numbers...) in one request body: tritonclient's requests have a few dozen (one
# input, its parameters, a few named outputs); the limit bounds what json.loads builds (E4 of issue 24)
MAX_JSON_VALUES = 4096
INPUT_NAME = "bitstream"
# every output any task has (a model's own: its task's, shared.tasks.Task.outputs)
OUTPUT_NAMES = tuple(dict.fromkeys(o.name for t in list_tasks() for o in get_task(t).outputs(0)))
_MAX_CLASSIFICATION = 100  # the data plane's top_k limit
# a request names at most this many outputs (a model has a handful) and an input has at most this many dimensions;
# beyond, refused before anything else is looked at (issue 24, E10 and the minor items: 500,000 outputs, a shape of
# 900,000 ones)
MAX_OUTPUTS, MAX_DIMS = 16, 8


# ------------------------------------------------------------------------------------------ JSON
# a JSON string, or an unterminated one up to the end: every '"' starts a match, so stripping strings is linear
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _check_shape(data: bytes, limit: int, max_values: Optional[int]) -> None:
    """Refuse JSON nested deeper than ``limit``, or with more than ``max_values`` values, before parsing it
    (json.loads recurses once per level, and builds every value before anything can look at them: 3.5 million
    ``{}`` took 296 MB).

    Strings are dropped, then only brackets kept; each round removes the innermost pairs, one level of nesting, so
    brackets left after ``limit`` rounds mean a deeper document. Every value but a container's first follows a
    comma, and every container opens with a bracket, so commas + brackets bound the values. All in C, linear per
    round."""
    bare = _JSON_STRING.sub(b"", data)
    brackets = bare.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") > limit:
        for _ in range(limit):
            brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
        # pairs left: deeper; many opened and never closed: deeper still, though malformed
        if b"[]" in brackets or b"{}" in brackets or brackets.count(b"[") + brackets.count(b"{") > limit:
            raise InvalidArgument(f"the request body is nested deeper than {limit} levels")
    if max_values is not None:
        n = bare.count(b",") + bare.count(b"[") + bare.count(b"{")
        if n > max_values:
            raise InvalidArgument(f"the request body has more than {max_values} JSON values (an inference request "
                                  "has a few dozen)")


def load_json(data: bytes, what: str = "the request body", limit: int = MAX_JSON_DEPTH,
              max_values: Optional[int] = MAX_JSON_VALUES) -> Any:
    """Parse a JSON document after checking its depth and its number of values; anything malformed ->
    InvalidArgument (400)."""
    _check_shape(data, limit, max_values)
    try:
        return json.loads(data)
    except RecursionError:  # not reachable after the depth check; kept so a parser change cannot give a 500
        raise InvalidArgument(f"{what} is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidArgument(f"{what} is not JSON: {e}") from None


# ------------------------------------------------------------------------------------------ BYTES framing
def pack_bytes(elements: Iterable[bytes]) -> bytes:
    """BYTES tensor elements -> the protocol's raw form: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def unpack_bytes(raw: bytes, name: str, max_elements: Optional[int] = None) -> List[bytes]:
    """The raw form of a BYTES tensor -> its elements; a length that overruns the data, or more than
    ``max_elements`` elements (a bound on the work a request can ask for) -> InvalidArgument."""
    out: List[bytes] = []
    pos, n = 0, len(raw)
    view = memoryview(raw)
    while pos < n:
        if n - pos < 4:
            raise InvalidArgument(f"input {name!r}: {n - pos} stray bytes after the last BYTES element (each element "
                                  "is a 4-byte little-endian length followed by that many bytes)")
        if max_elements is not None and len(out) >= max_elements:
            raise InvalidArgument(f"input {name!r}: expected {max_elements} BYTES element"
                                  f"{'' if max_elements == 1 else 's'} (shape [1]), got more")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if size > n - pos:
            raise InvalidArgument(f"input {name!r}: a BYTES element claims {size} bytes but {n - pos} follow (each "
                                  "element is a 4-byte little-endian length followed by that many bytes)")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    return out


# ------------------------------------------------------------------------------------------ REST wire types
ParameterValue = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class _Wire(BaseModel):
    # keys and parameters the protocol leaves open are dropped, not refused; the known ones are typed
    model_config = ConfigDict(extra="ignore")


class _Parameters(_Wire):
    # the known parameters are type-checked as docs/service.md says, not coerced: "top_k": true is refused, not 1
    # (an integer is still a number for a float parameter)
    model_config = ConfigDict(extra="ignore", strict=True)


class RequestParameters(_Parameters):
    """Request parameters: the project's hint and options, and the standard ones this server honours."""

    target_bpp: Optional[float] = None
    kbit_per_s: Optional[float] = None
    fps: Optional[float] = None
    expected_rung: Optional[int] = None
    top_k: Optional[int] = None
    binary_data_output: Optional[bool] = None
    """REST: the default of every output's ``binary_data`` (tritonclient sets it when it names no outputs)."""
    timeout: Optional[int] = Field(None, ge=0)
    """Triton's request timeout, in microseconds; the server's own limit still applies."""


class InputParameters(_Parameters):
    binary_data_size: Optional[int] = Field(None, ge=0)
    shared_memory_region: Optional[str] = None


class OutputParameters(_Parameters):
    binary_data: Optional[bool] = None
    classification: Optional[int] = Field(None, ge=0)
    shared_memory_region: Optional[str] = None


class RequestInput(_Wire):
    name: str
    shape: List[int]
    datatype: str
    parameters: Optional[InputParameters] = None
    data: Optional[Any] = None
    """Nested lists of elements; BYTES elements are base64 strings (a bitstream is not text)."""


class RequestOutput(_Wire):
    name: str
    parameters: Optional[OutputParameters] = None


class InferRequestBody(_Wire):
    id: Optional[str] = None
    parameters: Optional[RequestParameters] = None
    inputs: List[RequestInput] = Field(min_length=1)
    outputs: Optional[List[RequestOutput]] = None


class ResponseOutput(BaseModel):
    name: str
    shape: List[int]
    datatype: str
    parameters: Optional[Dict[str, ParameterValue]] = None
    data: Optional[List[Any]] = None


class InferResponseBody(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[Dict[str, ParameterValue]] = None
    outputs: List[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: List[int]


class ModelMetadataBody(ModelMetadata):
    """The data plane's model metadata plus the protocol's fields."""

    versions: List[str]
    inputs: List[TensorMetadata]
    outputs: List[TensorMetadata]


def parse_model(model: type, data: Any, what: str):
    """``model.model_validate(data)``; a mistyped or missing field -> InvalidArgument naming it."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidArgument(f"invalid {what}: {describe_validation(e.errors())}") from None


# ------------------------------------------------------------------------------------------ metadata
def check_version(meta: Optional[ModelMetadata], version: Optional[str]) -> None:
    """A model has one version, its bundle id; empty means that one. Unknown model: the caller's lookup says."""
    if meta is not None and version and version != meta.bundle_id:
        raise NotFound(f"model {meta.name!r} has no version {version!r}; its one version is {meta.bundle_id!r} "
                       "(the bundle id)")


def model_outputs(meta: ModelMetadata) -> List[TensorMetadata]:
    """The model's outputs, as its task declares them (the ranked classes, then the task's own)."""
    return [TensorMetadata(name=o.name, datatype=o.datatype, shape=list(o.shape))
            for o in get_task(meta.task).outputs(meta.num_classes)]


def model_metadata(meta: ModelMetadata) -> ModelMetadataBody:
    return ModelMetadataBody(**meta.model_dump(), versions=[meta.bundle_id],
                             inputs=[TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[1])],
                             outputs=model_outputs(meta))


def server_metadata(base: Dict[str, Any]) -> Dict[str, Any]:
    extensions = list(base.get("extensions", []))
    if "classification" not in extensions:
        extensions.append("classification")
    return {**base, "extensions": extensions}


# ------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class InputTensor:
    """One input as a front end decoded it; ``elements`` is None when its datatype is not BYTES."""

    name: str
    datatype: str
    shape: Tuple[int, ...]
    elements: Optional[List[bytes]]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: Optional[bool] = None  # REST only; None: the request's binary_data_output
    classification: int = 0


@dataclass(frozen=True)
class OipCall:
    """One OIP inference request, translated: the data plane's request and how to shape its answer."""

    request: InferenceRequest
    outputs: Tuple[RequestedOutput, ...]  # resolved: never empty
    top_k: int  # entries in the topk_* outputs
    binary_default: bool
    timeout_s: Optional[float]


def _output_request(o: RequestedOutput, allowed: Sequence[str]) -> RequestedOutput:
    if o.name not in allowed:
        raise InvalidArgument(f"unknown output {o.name!r}; this model's outputs: {list(allowed)}")
    if o.classification:
        if o.name != TOPK_SCORE.name:
            raise InvalidArgument(f"classification applies to output {TOPK_SCORE.name!r}, not {o.name!r}")
        if o.classification > _MAX_CLASSIFICATION:
            raise InvalidArgument(f"classification: at most {_MAX_CLASSIFICATION} classes, not {o.classification}")
    return o


def check_counts(n_outputs: int, shape: Sequence[int] = ()) -> None:
    """Refuse a request naming more than ``MAX_OUTPUTS`` outputs, or an input of more than ``MAX_DIMS`` dimensions,
    by the counts alone (front ends call this before they translate each output)."""
    if n_outputs > MAX_OUTPUTS:
        raise InvalidArgument(f"{n_outputs} outputs requested; a request names at most {MAX_OUTPUTS}")
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"an input shape of {len(shape)} dimensions; at most {MAX_DIMS}")


def make_call(model: str, meta: Optional[ModelMetadata], request_id: Optional[str], params: RequestParameters,
              inputs: Sequence[InputTensor], outputs: Sequence[RequestedOutput], default_top_k: int) -> OipCall:
    """Validate an OIP request against the model (``meta``: None when unknown, which the data plane reports)."""
    if len(inputs) != 1:
        raise InvalidArgument(f"expected exactly one input ({INPUT_NAME!r}, BYTES, shape [1]), got {len(inputs)}")
    check_counts(len(outputs), inputs[0].shape)
    (inp,) = inputs
    if inp.name != INPUT_NAME:
        raise InvalidArgument(f"unknown input {inp.name!r}; the one input is {INPUT_NAME!r} (BYTES, shape [1])")
    if inp.datatype != "BYTES":
        raise InvalidArgument(f"input {inp.name!r} must have datatype BYTES, not {inp.datatype!r}")
    if any(d != 1 for d in inp.shape):  # one element: every dimension 1 (or none, a scalar)
        raise InvalidArgument(f"input {inp.name!r} holds one bitstream: shape [1], not {list(inp.shape)}")
    if inp.elements is None or len(inp.elements) != 1:
        n = 0 if inp.elements is None else len(inp.elements)
        raise InvalidArgument(f"input {inp.name!r}: expected 1 BYTES element (shape [1]), got {n}")
    if params.top_k is not None and not 1 <= params.top_k <= _MAX_CLASSIFICATION:
        raise InvalidArgument(f"top_k must be between 1 and {_MAX_CLASSIFICATION}")

    allowed = [t.name for t in model_outputs(meta)] if meta is not None else list(OUTPUT_NAMES)
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise InvalidArgument(f"output {twice!r} is requested twice")
    resolved = tuple(_output_request(o, allowed) for o in outputs)
    if not resolved:  # none named: every output of the model
        resolved = tuple(RequestedOutput(n) for n in allowed)

    k = params.top_k or default_top_k
    # ask the data plane for enough classes for every output; each output is trimmed to its own count
    need = max([k] + [o.classification for o in resolved])
    fields = dict(model=model, bitstream=inp.elements[0], target_bpp=params.target_bpp,
                  kbit_per_s=params.kbit_per_s, fps=params.fps, expected_rung=params.expected_rung,
                  request_id=request_id or None, top_k=need if params.top_k is not None or need != k else None)
    request = parse_request({key: v for key, v in fields.items() if v is not None})
    timeout_s = params.timeout / 1e6 if params.timeout else None
    return OipCall(request=request, outputs=resolved, top_k=k, binary_default=bool(params.binary_data_output),
                   timeout_s=timeout_s)


# ------------------------------------------------------------------------------------------ answers
@dataclass(frozen=True)
class Tensor:
    """One output tensor, ready for either transport."""

    name: str
    datatype: str  # "INT64", "FP32" or "BYTES"
    shape: Tuple[int, ...]
    data: Sequence[Any]  # ints, floats, or bytes for BYTES
    binary: bool = False  # REST: in the binary section, not in the JSON
    text: bool = True  # BYTES: UTF-8 text in JSON; else base64 with parameter content_type=base64

    def raw(self) -> bytes:
        if self.datatype == "BYTES":
            return pack_bytes(self.data)
        code = {"INT64": "q", "FP32": "f"}[self.datatype]
        return struct.pack(f"<{len(self.data)}{code}", *self.data)

    def json_data(self) -> List[Any]:
        if self.datatype != "BYTES":
            return list(self.data)
        if self.text:
            return [e.decode("utf-8") for e in self.data]
        return [base64.b64encode(e).decode("ascii") for e in self.data]


def _tensor(r: InferenceResponse, o: RequestedOutput, k: int, binary: bool) -> Tensor:
    if o.classification:  # Triton's format: "value:index:label"
        top = r.topk[:o.classification]
        data = [f"{c.score:f}:{c.index}:{c.name}".encode() for c in top]
        return Tensor(o.name, "BYTES", (1, len(data)), data, binary)
    top = r.topk[:k]
    if o.name == TOPK_INDEX.name:
        return Tensor(o.name, "INT64", (1, len(top)), [c.index for c in top], binary)
    if o.name == TOPK_SCORE.name:
        return Tensor(o.name, "FP32", (1, len(top)), [c.score for c in top], binary)
    if o.name == TOPK_NAME.name:
        return Tensor(o.name, "BYTES", (1, len(top)), [c.name.encode() for c in top], binary)
    # a task's own output, as the task made it (shared.tasks.Task.outputs); BYTES of it are not text (base64 in
    # JSON)
    t = r.outputs.get(o.name)
    if t is not None:
        return Tensor(o.name, t.datatype, t.shape, list(t.data), binary, text=False)
    raise InvalidArgument(f"model {r.model!r} has no output {o.name!r} (its task's outputs do not include it)")


def answer_tensors(r: InferenceResponse, call: OipCall) -> List[Tensor]:
    return [_tensor(r, o, call.top_k, call.binary_default if o.binary is None else o.binary) for o in call.outputs]


def response_parameters(r: InferenceResponse) -> Dict[str, Union[int, float, str]]:
    """What the answer says beyond its tensors: the rung used, bytes, bpp, batch, timings (``*_ms``)."""
    params: Dict[str, Union[int, float, str]] = {
        "rung": r.rung, "bytes_received": r.bytes_received, "bpp": r.bpp, "bundle_id": r.bundle_id,
        "batch_size": r.batch_size, "input_height": r.input_hw[0], "input_width": r.input_hw[1],
        **{f"{stage}_ms": v for stage, v in r.timings_ms.items()}}
    if r.hinted_rung is not None:
        params["hinted_rung"] = r.hinted_rung
    return params


def render_rest(r: InferenceResponse, tensors: Sequence[Tensor]) -> Tuple[bytes, Optional[int]]:
    """The REST answer: the JSON, then the binary outputs in order; returns (body, JSON length or None)."""
    outputs, blobs = [], []
    for t in tensors:
        params: Dict[str, ParameterValue] = {}
        data = None
        if t.binary:
            raw = t.raw()
            params["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            data = t.json_data()
            if t.datatype == "BYTES" and not t.text:
                params["content_type"] = "base64"
        outputs.append(ResponseOutput(name=t.name, shape=list(t.shape), datatype=t.datatype,
                                      parameters=params or None, data=data))
    body = InferResponseBody(model_name=r.model, model_version=r.bundle_id, id=r.request_id,
                             parameters=response_parameters(r), outputs=outputs)
    header = body.model_dump_json(exclude_none=True).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def decode_base64_elements(data: Any, name: str) -> List[bytes]:
    """JSON ``data`` of a BYTES input (nested lists of base64 strings) -> its elements."""
    flat: List[Any] = []
    stack = [data]
    while stack:  # iterative: the depth is already bounded, but no recursion is needed
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    out = []
    for e in flat:
        if not isinstance(e, str):
            raise InvalidArgument(f"input {name!r}: BYTES data must be base64 strings, got {type(e).__name__}")
        try:
            out.append(base64.b64decode(e, validate=True))
        except (binascii.Error, ValueError) as err:
            raise InvalidArgument(f"input {name!r}: data is not valid base64: {err}") from None
    return out
