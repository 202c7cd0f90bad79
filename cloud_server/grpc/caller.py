"""Who is calling a gRPC method: the API key of its metadata and its address, checked by the data plane."""

from __future__ import annotations

from typing import Optional

import grpc

from ..auth import api_key
from ..dataplane import DataPlane

__all__ = ["peer_address", "authenticate"]


def peer_address(context: grpc.ServicerContext) -> Optional[str]:
    """The client's address without its port ("ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1"), for the failed-key
    throttle."""
    try:
        peer = context.peer() or ""
    except Exception:  # noqa: BLE001
        return None
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else (peer or None)


def authenticate(dp: DataPlane, context: grpc.ServicerContext) -> None:
    """Raise Unauthenticated unless the call carries a configured API key (none configured: open)."""
    dp.authenticate(api_key(context.invocation_metadata()), peer_address(context))
