"""The edge's gRPC channel options: the arguments are the one source; the environment only gives a default."""

from __future__ import annotations

import pytest


def _options_seen(monkeypatch, *args, **kwargs):
    grpc = pytest.importorskip("grpc")
    from edge_client.transports import GrpcTransport

    seen = {}
    real = grpc.insecure_channel

    def spy(target, options=None, *a, **k):
        seen["options"] = list(options or [])
        return real(target, options, *a, **k)

    monkeypatch.setattr(grpc, "insecure_channel", spy)
    GrpcTransport("dns:///localhost:1", None, False, None, 1 << 20, *args, **kwargs).channel.close()
    return seen["options"]


def test_explicit_lb_policy_option_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("SPLITINFER_GRPC_LB_POLICY", "round_robin")
    opts = _options_seen(monkeypatch, [("grpc.lb_policy_name", "pick_first")])
    assert [v for k, v in opts if k == "grpc.lb_policy_name"] == ["pick_first"]  # one value, the caller's


def test_explicit_arguments_ignore_the_environment(monkeypatch):
    monkeypatch.setenv("SPLITINFER_GRPC_LB_POLICY", "round_robin")
    assert not [k for k, _ in _options_seen(monkeypatch, (), None) if k == "grpc.lb_policy_name"]
    opts = dict(_options_seen(monkeypatch, (), "round_robin"))
    assert opts["grpc.lb_policy_name"] == "round_robin" and opts["grpc.max_send_message_length"] == 1 << 20


def test_channel_options_are_a_pure_function():
    from edge_client.transports import grpc_channel_options

    assert grpc_channel_options(8, [("a", 1)], "round_robin") == [
        ("grpc.max_send_message_length", 8), ("grpc.max_receive_message_length", 8),
        ("grpc.lb_policy_name", "round_robin"), ("a", 1)]
    assert grpc_channel_options(8) == [("grpc.max_send_message_length", 8), ("grpc.max_receive_message_length", 8)]
