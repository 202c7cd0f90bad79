"""The one reading of an API key from a request, the same on both transports.

A key travels as ``authorization: Bearer <key>`` or ``x-api-key: <key>``: HTTP headers (REST) or call metadata
(gRPC), both lists of (name, value) pairs with lower-case names. The data plane checks the key
(:meth:`~cloud_server.dataplane.DataPlane.authenticate`); each front end only finds it with :func:`api_key`.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple, Union

__all__ = ["api_key"]

_Text = Union[str, bytes]


def _text(v: _Text) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v  # ASGI headers are bytes, gRPC metadata text


def api_key(headers: Iterable[Tuple[_Text, _Text]]) -> Optional[str]:
    """The key of the first ``authorization`` or ``x-api-key`` header (None: none, or another scheme than
    Bearer)."""
    for name, value in headers or ():
        name = _text(name)
        if name == "authorization":
            scheme, _, token = _text(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        if name == "x-api-key":
            return _text(value)
    return None
