"""The task owns its outputs on the wire (issue 27, step 5): an answer's own outputs are named, typed tensors that
every transport copies by datatype. A task that did not exist when the transports were written (here a toy one
with a depth-like FP32 output) reaches the edge unchanged over the native gRPC message, the Open Inference
Protocol's REST JSON and gRPC, and the plain REST answer; the edge checks received outputs against the task."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.tasks import OutputSpec, OutputTensor, base, get_task, wire
from shared.tasks.classification import Classification

DEPTH = OutputSpec("depth", "FP32", (1, -1), "a value per class, for the test")
NOTE = OutputSpec("note", "BYTES", (1,), "bytes that are not text")


class _DepthTask(Classification):
    name = "depth_test"

    def answer(self, output, names, top_k):
        a = super().answer(output, names, top_k)
        z = np.asarray(output, dtype=np.float32).reshape(-1)
        a.outputs = {DEPTH.name: DEPTH.tensor([float(v) for v in z]), NOTE.name: NOTE.tensor([b"\x00\xff raw"])}
        return a

    def outputs(self, num_classes):
        return super().outputs(num_classes) + [DEPTH, NOTE]


@pytest.fixture
def depth_task(monkeypatch):
    task = _DepthTask()
    monkeypatch.setitem(base._TASKS, task.name, task)
    return task


def _response(task):
    from cloud_server.types import ClassScore, InferenceResponse

    ans = task.answer(np.array([[0.5, 1.5, -2.25]]), ["a", "b", "c"], 2)
    return ans, InferenceResponse(request_id="r", model="m", bundle_id="b", rung=0, bytes_received=10, bpp=0.1,
                                  input_hw=(8, 8), topk=[ClassScore(index=i, name=n, score=s) for i, n, s in ans.topk],
                                  outputs=ans.outputs)


def _call(task_name, binary):
    from cloud_server import oip
    from cloud_server.types import ModelMetadata

    meta = ModelMetadata(name="m", bundle_id="b", backbone="x", split="y", task=task_name, input_hw=(8, 8),
                         rate_model="r", num_classes=3, backbone_loaded=True, rungs=[])
    return oip.make_call("m", meta, None, oip.RequestParameters(binary_data_output=binary),
                         [oip.InputTensor("bitstream", "BYTES", (1,), [b"bits"])], [], 5)


def test_a_new_tasks_outputs_travel_every_transport(depth_task):
    from cloud_server import oip
    from cloud_server.grpc.native_service import from_response
    from cloud_server.rest.routes import plain_response
    from edge_client.answers import answer_problem
    from edge_client.transports import _result_from_json, _result_from_pb

    ans, r = _response(depth_task)
    assert ans.outputs[DEPTH.name] == OutputTensor("FP32", (1, 3), (0.5, 1.5, -2.25))
    # native gRPC, through real bytes
    msg = from_response(r)
    got = _result_from_pb(type(msg).FromString(msg.SerializeToString()), 0.0)
    assert got.outputs == ans.outputs
    assert answer_problem(got, rungs=1, num_classes=3, top_k=5, task=depth_task) is None
    # OIP REST, JSON (BYTES that are not text in base64)
    body, header_len = oip.render_rest(r, oip.answer_tensors(r, _call(depth_task.name, False)))
    assert header_len is None
    assert _result_from_json(json.loads(body), 0.0).outputs == ans.outputs
    # OIP gRPC, read by tritonclient
    import tritonclient.grpc as grpcclient

    from cloud_server.grpc.oip_service import from_answer

    res = grpcclient.InferResult(from_answer(r, _call(depth_task.name, None)))
    assert res.as_numpy(DEPTH.name).tolist() == [[0.5, 1.5, -2.25]] and res.as_numpy(NOTE.name)[0] == b"\x00\xff raw"
    # the plain REST answer
    doc = json.loads(json.dumps(plain_response(r)))
    assert wire.from_json(doc["outputs"]) == ans.outputs


def test_the_edge_refuses_outputs_that_are_not_the_tasks(depth_task):
    from edge_client.answers import answer_problem
    from edge_client.transports import _result_from_pb
    from cloud_server.grpc.native_service import from_response

    ans, r = _response(depth_task)
    got = _result_from_pb(from_response(r), 0.0)
    assert "not one of the classification task's" in answer_problem(got, rungs=1, num_classes=3, top_k=5,
                                                                    task=get_task("classification"))
    got.outputs[DEPTH.name] = OutputTensor("FP32", (4,), (0.0,) * 4)
    assert "shape [4], not [1, -1]" in answer_problem(got, rungs=1, num_classes=3, top_k=5, task=depth_task)


def test_a_malformed_output_is_an_answer_error_not_a_traceback():
    from shared._proto import splitinfer_pb2 as pb

    from edge_client.results import AnswerError
    from edge_client.transports import _result_from_json, _result_from_pb

    msg = pb.InferResponse(request_id="r", rung=0)
    msg.outputs["x"].datatype = "FP64"
    with pytest.raises(AnswerError, match="FP64"):
        _result_from_pb(msg, 0.0)
    body = {"id": "r", "parameters": {"rung": 0, "bytes_received": 1, "bpp": 0.1},
            "outputs": [{"name": n, "datatype": "INT64", "shape": [1, 0], "data": []}
                        for n in ("topk_index", "topk_name", "topk_score")]
            + [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["not base64!"],
                "parameters": {"content_type": "base64"}}]}
    with pytest.raises(AnswerError, match="not a tensor"):
        _result_from_json(body, 0.0)


def test_output_tensors_check_themselves():
    assert OutputTensor("INT64", (1, 2), (1, 2)).problem() is None
    assert "3 elements" in OutputTensor("INT64", (1, 2), (1, 2, 3)).problem()
    assert "not INT64" in OutputTensor("INT64", (1, 2), (1, True)).problem()
    assert "not BYTES" in OutputTensor("BYTES", (1,), ("text",)).problem()
    with pytest.raises(ValueError, match="FP64"):
        OutputTensor("FP64", (1,), (1.0,))
    assert DEPTH.tensor([1.0, 2.0]).shape == (1, 2) and NOTE.tensor([b""]).shape == (1,)
