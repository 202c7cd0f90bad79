"""The cloud side: entropy decoding, the bottleneck decoder and the tail, behind REST and gRPC."""

from .decoder import CloudDecoder, Prediction

__all__ = ["CloudDecoder", "Prediction"]
