"""Helpers shared by the service tests (``test_service_*.py``): servers on loopback, ephemeral ports."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

MODEL = "cifar_resnet20-layer1"  # the tiny bundle's default model name (<backbone>-<split>)


def make_settings(bundle, weights, **overrides):
    from cloud_server.settings import BundleSpec, Settings

    kw = dict(bundles=[BundleSpec(path=bundle.root)], weights=str(weights), host="127.0.0.1", http_port=0,
              grpc_port=0, shutdown_grace_s=5.0, grpc_workers=8)
    kw.update(overrides)
    return Settings(**kw)


@contextlib.contextmanager
def running_server(bundle, weights, **overrides) -> Iterator:
    from cloud_server.server import SplitInferServer

    server = SplitInferServer(make_settings(bundle, weights, **overrides))
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=2.0)


def grpc_stub(port: int):
    import grpc

    from shared._proto import splitinfer_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.SplitInferenceStub(channel)


@contextlib.contextmanager
def slow_tail(server, seconds: float):
    """Make every tail call of ``server`` take ``seconds`` longer (in-flight requests for shutdown, limits)."""
    import time

    batchers = list(server.repository._batchers.values())
    originals = [b.fn for b in batchers]

    def slowed(fn):
        def run(*a, **kw):
            time.sleep(seconds)
            return fn(*a, **kw)

        return run

    for b in batchers:
        b.fn = slowed(b.fn)
    try:
        yield
    finally:
        for b, fn in zip(batchers, originals):
            b.fn = fn


def wait_for(predicate, timeout: float = 5.0, step: float = 0.01) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# Fixtures the gRPC and REST tests share (imported by name into each module, so they stay module-scoped).
@pytest.fixture(scope="module")
def encoder(tiny_bundle, tiny_weights):
    from edge_client import EdgeEncoder

    return EdgeEncoder(tiny_bundle, weights=str(tiny_weights))


@pytest.fixture(scope="module")
def frames(encoder, heldout_items):
    """One encoded held-out image per rung."""
    n = len(encoder.bundle.rungs)
    return [encoder.encode(heldout_items[i][0], rung=i % n) for i in range(n)]


@pytest.fixture(scope="module")
def reference(tiny_bundle, tiny_weights, frames):
    """What the in-process cloud decoder answers for each frame."""
    from cloud_server import CloudDecoder

    dec = CloudDecoder(tiny_bundle, weights=str(tiny_weights))
    return [dec.decode(f.data, topk=5) for f in frames]
