"""The gRPC room: everything on the gRPC port, nothing of REST.

- ``server.py``: the front end (:class:`~.server.GrpcFrontEnd`): the server, its limits, TLS, health, reflection;
- ``guard.py``: the call guard every call passes (admission, worker and stream slots, the idle watchdog, request
  decoding, the call's scope);
- ``native_service.py``: ``splitinfer.v1.SplitInference``; ``oip_service.py``: the Open Inference Protocol's
  ``inference.GRPCInferenceService``;
- ``status.py``: how a refusal ends a call (status code, message, kind in the trailing metadata), and the
  decorator every servicer method wears instead of its own try/abort;
- ``caller.py``: who is calling (API key, address).

(A subpackage named ``grpc`` does not shadow the grpc library: absolute imports find the top-level one.)
"""
