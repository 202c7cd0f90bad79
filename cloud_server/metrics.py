"""Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

from __future__ import annotations

from typing import Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BYTES = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 1048576)
_BPP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("splitinfer_requests", "Inference requests by outcome",
                                ["protocol", "model", "outcome"], registry=r)
        self.errors = Counter("splitinfer_errors", "Refused or failed requests by kind",
                              ["protocol", "kind"], registry=r)
        self.latency = Histogram("splitinfer_request_duration_seconds", "Server-side latency of inference requests",
                                 ["protocol", "model"], buckets=_LATENCY, registry=r)
        self.stage = Histogram("splitinfer_stage_duration_seconds", "Time per stage (decode, queue, tail)",
                               ["stage"], buckets=_LATENCY, registry=r)
        self.bytes = Histogram("splitinfer_bitstream_bytes", "Bitstream size of decoded requests",
                               ["model", "rung"], buckets=_BYTES, registry=r)
        self.bpp = Histogram("splitinfer_bitstream_bpp", "Bits per input pixel of decoded requests",
                             ["model", "rung"], buckets=_BPP, registry=r)
        self.batch = Histogram("splitinfer_tail_batch_size", "Requests per tail call", ["backbone"],
                               buckets=_BATCH, registry=r)
        self.inflight = Gauge("splitinfer_inflight_requests", "Inference requests being served", registry=r)
        self.resident = Gauge("splitinfer_resident_rungs", "Rungs loaded in memory", ["model"], registry=r)

    def render(self) -> Tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
