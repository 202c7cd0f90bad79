"""Rate: how a bundle turns a bitrate hint into bytes on the wire, and whether they met the hint. Torch-free.

- :mod:`.hint`: :class:`BitrateHint` (bpp, or a link rate with its fps);
- :mod:`.scheme`: a bundle's :class:`RateScheme` (a ladder, or one variable-rate network): hint -> operating
  point, the outcome of each message against its hint, the measured points; :func:`select_rung`;
- :mod:`.fit`: one variable-rate message held to a byte budget (:func:`choose_level`);
- :mod:`.stream`: a stream held to a link rate (:class:`StreamRateController`) and the link followed
  (:class:`LinkRateTracker`);
- :mod:`.plan`: what training makes for each scheme (:func:`training_plan`: a network per lambda, or one over the
  levels), so the training use case never asks the bottleneck for its levels either.

The level coder and the message sizes it searches are the codec's (:mod:`shared.codec.levels`).
"""

from .fit import RateChoice, choose_level, encode_within
from .hint import BitrateHint, HintError
from .plan import LadderPlan, TrainingPlan, VariableRatePlan, training_plan
from .scheme import (STREAM_TOLERANCE, HintOutcome, LadderScheme, OperatingPoint, RateScheme, VariableRateScheme,
                     default_levels, scheme_of, select_rung)
from .stream import LinkRateTracker, StreamRateController

__all__ = ["BitrateHint", "HintError", "RateScheme", "LadderScheme", "VariableRateScheme", "OperatingPoint",
           "HintOutcome", "scheme_of", "select_rung", "default_levels", "STREAM_TOLERANCE", "RateChoice",
           "choose_level", "encode_within", "StreamRateController", "LinkRateTracker", "TrainingPlan", "LadderPlan",
           "VariableRatePlan", "training_plan"]
