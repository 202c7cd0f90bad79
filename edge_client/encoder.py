"""The PyTorch reference encoder now lives in :mod:`shared.encoder` (beside the ladder codec it drives); this
module keeps ``from edge_client.encoder import EdgeEncoder`` working. Importing it imports torch."""

from shared.encoder import EdgeEncoder
from shared.frame import EncodedFrame

__all__ = ["EdgeEncoder", "EncodedFrame"]
