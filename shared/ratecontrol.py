"""Moved: rate control is :mod:`shared.rate` (per image: :mod:`shared.rate.fit`; streams and links:
:mod:`shared.rate.stream`), the level coder and message sizes :mod:`shared.codec.levels`, the link simulator test
support (``tests/linksim.py``). This module keeps the old imports working."""

from .codec.levels import LevelCoder, MessageSizes, level_message
from .rate.fit import RateChoice, choose_level, encode_within
from .rate.stream import LinkRateTracker, StreamRateController

__all__ = ["LevelCoder", "RateChoice", "MessageSizes", "level_message", "encode_within", "StreamRateController",
           "LinkRateTracker", "choose_level"]
