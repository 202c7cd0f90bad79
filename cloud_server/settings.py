"""Server configuration: pydantic-settings with the ``SPLITINFER_`` prefix.

Sources, highest priority first: keyword arguments (the ``splitinfer serve`` flags: :mod:`cloud_server.options`,
through :func:`serve_settings`), environment variables
(``SPLITINFER_HTTP_PORT=8080``, ``SPLITINFER_API_KEYS='["k1"]'``, ``SPLITINFER_BUNDLES='[{"path": "..."}]'``),
a JSON config file (``load_settings(config_file=...)``, ``splitinfer serve --config``, or
``SPLITINFER_CONFIG_FILE``), then the defaults below. Secrets can stay out of both: ``api_key_file``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Literal, Optional

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, JsonConfigSettingsSource, SettingsConfigDict

__all__ = ["BundleSpec", "Settings", "load_settings", "serve_settings"]


class BundleSpec(BaseModel):
    """One served ladder."""

    path: Optional[Path] = None
    """Bundle folder; None = the ladder embedded in the package."""
    name: Optional[str] = None
    """Model name clients use; default ``<backbone>-<split>`` (e.g. ``efficientnet_lite0-block1``)."""
    weights: Optional[str] = None
    """Backbone weights file for this bundle; default: ``Settings.weights``, else the pretrained weights."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPLITINFER_", extra="forbid", json_file=None)

    host: str = "127.0.0.1"
    """Address both front ends bind (loopback by default; 0.0.0.0 to expose)."""
    http_port: int = Field(8000, ge=0, le=65535)
    """REST port (0 = any free port)."""
    grpc_port: int = Field(50051, ge=0, le=65535)
    """gRPC port (0 = any free port)."""
    enable_rest: bool = True
    enable_grpc: bool = True

    bundles: List[BundleSpec] = Field(default_factory=list)
    """Served ladders; empty = the embedded ladder."""
    weights: Optional[str] = None
    """Default backbone weights file for bundles that name none (None = the pretrained weights)."""
    device: str = "cpu"
    preload: bool = False
    """Load every rung at start (otherwise each rung loads on first use)."""

    default_top_k: int = Field(5, ge=1, le=100)
    max_bitstream_bytes: int = Field(1 << 20, ge=64)
    """Largest bitstream accepted (larger: HTTP 413 / RESOURCE_EXHAUSTED)."""
    max_upload_bytes: int = Field(10 << 20, ge=1024)
    """Largest image accepted by the infer-image endpoint."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Largest decoded image (width x height) accepted by infer-image (decompression bombs); checked on the
    header, before anything is decoded."""
    max_image_decode_bytes: int = Field(256 << 20, ge=1 << 20)
    """Memory the decoded upload may take (PIL holds RGB, RGBA, CMYK and LA at 4 bytes a pixel, L and P at 1; an
    image that is not RGB is converted, which costs another 4 bytes a pixel): an RGB image up to 40 MP fits,
    RGBA or CMYK up to about 33 MP. Checked on the header, before decoding."""
    max_concurrent_image_decodes: int = Field(2, ge=1)
    """infer-image uploads decoded and encoded at once (each may take up to ``max_image_decode_bytes``); others
    wait up to 2 s, then get 429 / RESOURCE_EXHAUSTED (kind ``overloaded``)."""
    max_image_aspect_ratio: float = Field(20.0, ge=1.0)
    """Longest over shortest side of an infer-image upload (a 1x20000 PNG would be resized to 256 x 5,120,000)."""
    max_resized_pixels: int = Field(4_000_000, ge=1)
    """Largest image the resize before the centre crop may produce (checked before resizing)."""
    max_jpeg_scans: int = Field(64, ge=1)
    """Scans a progressive JPEG upload may have (each is another decoding pass over the image; real encoders write
    6-20): more are refused before decoding (413), counted by a marker walk (``cloud_server/image_guard.py``)."""
    max_jpeg_scan_pixels: int = Field(1_280_000_000, ge=1)
    """Largest pixels x scans of a JPEG upload (the decoder's work): a 40 MP image may have 32 scans, a 20 MP one
    64."""
    max_concurrent_requests: int = Field(64, ge=1)
    """Inference requests in flight at once, both front ends together; more are refused at once with
    429 (Retry-After) / RESOURCE_EXHAUSTED, kind ``overloaded``."""
    max_concurrent_decodes: Optional[int] = Field(None, ge=1)
    """Admitted requests that entropy-decode at once (the others wait their turn, holding their slot but not the
    CPU or the GIL, so refusals and health checks stay fast); None: the number of CPUs."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Server-side time limit per request (a client deadline, when shorter, wins); work not done by then is
    dropped."""

    batch_max_size: int = Field(8, ge=1)
    """Largest batch for one tail call; 1 disables batching."""
    batch_max_wait_ms: float = Field(2.0, ge=0)
    """How long the first request of a batch waits for others."""

    grpc_workers: Optional[int] = Field(None, ge=1)
    """Threads serving gRPC calls; a call beyond them is refused at once (RESOURCE_EXHAUSTED, kind
    ``overloaded``), never queued. None: ``max_concurrent_requests + grpc_max_streams + 8``."""
    grpc_max_streams: int = Field(16, ge=1)
    """Streaming calls open at once (InferStream, ModelStreamInfer, Health/Watch, reflection); each holds a thread.
    More are refused with RESOURCE_EXHAUSTED. At most half the workers, whatever this says."""
    grpc_max_streams_per_connection: Optional[int] = Field(None, ge=1)
    """Streams one gRPC connection may have open (HTTP/2 MAX_CONCURRENT_STREAMS); a stream counts until the server
    is done with it, even after the client reset it, so a client that opens and resets streams at once (HTTP/2
    rapid reset) is refused by the transport beyond this. None: twice the workers plus 32 (health checks), so that a
    client on one connection meets the guard's own fast refusals (workers busy, capacity), not a wait for a stream."""
    grpc_idle_timeout_s: float = Field(30.0, gt=0)
    """A stream that neither sends a message nor reads an answer for this long is cancelled."""
    grpc_stream_preempt_s: Optional[float] = Field(10.0, gt=0)
    """When every stream slot is taken, a new stream takes the slot of the open stream whose last progress (an
    answer that is not an error) is the oldest, if that was at least this long ago; that stream is cancelled. Streams
    that make no progress and open again as soon as they are cut cannot keep others out. None: never."""
    grpc_message_timeout_s: float = Field(5.0, gt=0)
    """A unary call whose request message has not arrived after this long is cancelled."""

    rest_header_timeout_s: float = Field(10.0, gt=0)
    """A REST connection must deliver a request's headers within this time of its first byte (or of opening)."""
    rest_body_timeout_s: float = Field(60.0, gt=0)
    """A REST request body must arrive completely within this time (slow bodies get 408 and are cut)."""
    rest_keep_alive_s: int = Field(5, ge=1)
    """An idle keep-alive REST connection is closed after this many seconds."""
    rest_max_header_bytes: int = Field(16 * 1024, ge=1024)
    """Largest request line + headers accepted on REST."""
    rest_max_connections: int = Field(1000, ge=1)
    """REST requests in progress at once (headers received; probes and /metrics aside); beyond, 503. Connections
    that have not sent their headers do not count (the header timeout cuts them)."""
    handshake_timeout_s: float = Field(10.0, gt=0)
    """A new connection must finish its TLS handshake within this time, or it is closed (gRPC: and send the HTTP/2
    preface; gRPC core's default 120 s, asyncio's under uvicorn 60 s). A REST connection's headers are then due
    within ``rest_header_timeout_s``."""

    api_keys: List[SecretStr] = Field(default_factory=list)
    """Accepted API keys (bearer token on REST, ``authorization: Bearer`` or ``x-api-key`` metadata on gRPC).
    None configured = no authentication. Health, readiness and /metrics stay open."""
    api_key_file: Optional[Path] = None
    """File with one API key per line (added to ``api_keys``)."""

    tls_cert_file: Optional[Path] = None
    """PEM certificate chain; with ``tls_key_file``, both front ends serve TLS only."""
    tls_key_file: Optional[Path] = None

    shutdown_grace_s: float = Field(10.0, ge=0)
    """On stop, in-flight requests get this long to finish."""
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, dotenv_settings, JsonConfigSettingsSource(settings_cls), \
            file_secret_settings

    def all_api_keys(self) -> List[str]:
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_key_file is not None:
            keys += [ln.strip() for ln in Path(self.api_key_file).read_text().splitlines()
                     if ln.strip() and not ln.lstrip().startswith("#")]
        return [k for k in keys if k]

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def grpc_threads(self) -> int:
        """gRPC worker threads: ``grpc_workers``, or enough for every admitted request and stream."""
        if self.grpc_workers is not None:
            return self.grpc_workers
        return self.max_concurrent_requests + self.grpc_max_streams + 8

    @property
    def grpc_streams_per_connection(self) -> int:
        """HTTP/2 streams one gRPC connection may hold: ``grpc_max_streams_per_connection``, or twice the workers
        plus 32."""
        return self.grpc_max_streams_per_connection or 2 * self.grpc_threads + 32

    @property
    def grpc_stream_limit(self) -> int:
        """Streams open at once: ``grpc_max_streams``, at most half the workers (unary calls keep the rest)."""
        return max(1, min(self.grpc_max_streams, self.grpc_threads // 2))

    @property
    def max_request_bytes(self) -> int:
        """Largest REST body: an upload, or a base64 bitstream inside JSON."""
        return max(self.max_upload_bytes, self.max_infer_bytes)

    @property
    def max_infer_bytes(self) -> int:
        """Largest body of an OIP ``/infer`` request: one bitstream, base64 (4/3) or binary, plus 64 KiB of JSON."""
        return self.max_bitstream_bytes * 4 // 3 + 64 * 1024


def load_settings(config_file: Optional[str | Path] = None, **overrides) -> Settings:
    """Settings from ``overrides`` > environment > JSON ``config_file`` (or ``$SPLITINFER_CONFIG_FILE``) > defaults.
    ``overrides`` whose value is None are ignored (unset command-line flags)."""
    config_file = config_file or os.environ.get("SPLITINFER_CONFIG_FILE")
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if not config_file:
        return Settings(**kwargs)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "json_file": path})

    return FileSettings(**kwargs)


def serve_settings(opts) -> Settings:
    """The settings of ``splitinfer serve``: the options given (:class:`cloud_server.options.ServeOptions`; None =
    not given) over the environment, ``opts.config`` and the defaults; ``--bundle [NAME=]DIR`` values become
    :class:`BundleSpec` s. A value pydantic refuses is a :class:`~shared.errors.UserError` naming the setting."""
    from dataclasses import asdict

    from pydantic import ValidationError

    from shared.errors import UserError

    from .errors import describe_validation

    overrides = {k: v for k, v in asdict(opts).items() if k not in ("bundle", "config")}
    if opts.bundle:
        overrides["bundles"] = [BundleSpec(name=n, path=p) if sep else BundleSpec(path=v)
                                for v in opts.bundle for n, sep, p in [v.partition("=")]]
    try:
        return load_settings(opts.config, **overrides)
    except ValidationError as e:
        raise UserError(f"invalid settings: {describe_validation(e.errors(), 'settings')}") from None
