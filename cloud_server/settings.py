"""Server configuration: pydantic-settings with the ``SPLITINFER_`` prefix.

Sources, highest priority first: keyword arguments (the ``splitinfer serve`` flags), environment variables
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

__all__ = ["BundleSpec", "Settings", "load_settings"]


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
    """Largest decoded image (width x height) accepted by infer-image (decompression bombs)."""
    max_concurrent_requests: int = Field(64, ge=1)
    """Inference requests in flight at once, both front ends together; more get 429 / RESOURCE_EXHAUSTED."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Server-side time limit per request (a client deadline, when shorter, wins)."""

    batch_max_size: int = Field(8, ge=1)
    """Largest batch for one tail call; 1 disables batching."""
    batch_max_wait_ms: float = Field(2.0, ge=0)
    """How long the first request of a batch waits for others."""

    grpc_workers: int = Field(32, ge=1)
    """Threads serving gRPC calls (each stream holds one while open)."""

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
    def max_request_bytes(self) -> int:
        """Largest REST body: an upload, or a base64 bitstream inside JSON."""
        return max(self.max_upload_bytes, self.max_bitstream_bytes * 4 // 3 + 64 * 1024)


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
