"""A bundle's rate scheme: how a bitrate hint becomes an operating point, and whether a message met its hint.

Two schemes, one interface (:func:`scheme_of`, also ``Bundle.scheme``):

- :class:`LadderScheme`: one bottleneck per rate. A hint picks a rung by its *measured mean* bpp
  (:func:`select_rung`), so one image's message may take more than the hint, and a hint below the coarsest
  rung gets that rung.
- :class:`VariableRateScheme`: one network, an integer quality level per message. A hint is each message's byte
  budget (the finest level that fits, :func:`shared.rate.fit.choose_level`), a link-rate hint over a stream is
  held by a controller (:class:`shared.rate.stream.StreamRateController`); only a hint below the coarsest
  level is not met.

Callers ask the scheme (:meth:`RateScheme.point`, :meth:`RateScheme.outcome`, :meth:`RateScheme.points`) instead
of asking the bundle whether it has quality levels (``tests/test_structure.py`` holds that rule). Torch-free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .hint import BitrateHint, HintError
from .stream import StreamRateController

__all__ = ["select_rung", "default_levels", "OperatingPoint", "HintOutcome", "RateScheme", "LadderScheme",
           "VariableRateScheme", "scheme_of", "STREAM_TOLERANCE"]

# a stream holds its kbit/s when the rate sent over it is at most this much above (the stream controller keeps
# every 30-frame window within 5%: 2 * slack / window with slack 0.7)
STREAM_TOLERANCE = 0.05


def select_rung(rungs: Sequence[Any], bitrate_bpp: Optional[float]) -> int:
    """The one rule that maps a bitrate hint to a rung, shared by edge and cloud.

    Picks the most accurate rung whose measured bpp fits the hint; if none fits, the cheapest rung.
    No hint means the top rung. Rungs are ordered from highest to lowest rate, so an unmeasured
    rung counts as costlier than every rung below it.
    """
    if bitrate_bpp is None:
        return 0
    if not bitrate_bpp > 0:
        raise ValueError(f"bitrate hint must be a positive bpp, got {bitrate_bpp}")
    fitting = [r.index for r in rungs if r.bpp is not None and r.bpp <= bitrate_bpp]
    return min(fitting) if fitting else len(rungs) - 1


def default_levels(levels: Tuple[int, int], every: int = 4) -> List[int]:
    """The quality levels a variable-rate bundle is measured at: every ``every``-th, both ends included."""
    lo, hi = levels
    return sorted({*range(lo, hi + 1, every), hi})


@dataclass(frozen=True)
class OperatingPoint:
    """Where one message is coded: a ladder's ``rung``, or how a variable-rate network picks its level (a fixed
    ``level``, a byte budget ``max_bytes``, a stream ``controller``, or none: the finest). ``hint_bpp``: the most
    one message may take by the hint (None: no hint, or a rung or level forced)."""

    rung: int = 0
    level: Optional[int] = None
    max_bytes: Optional[float] = None
    controller: Optional[StreamRateController] = None
    variable: bool = False
    hint_bpp: Optional[float] = None

    def how(self) -> Dict[str, Any]:
        """The arguments of :func:`shared.rate.fit.choose_level` (a variable-rate point)."""
        return {"level": self.level, "max_bytes": self.max_bytes, "controller": self.controller}


@dataclass(frozen=True)
class HintOutcome:
    """Whether a message (or a stream) met its hint: ``met`` None when there was nothing to meet (no hint, a rung
    or level forced, a stream's frames judged together); ``reason``: why not, in words."""

    met: Optional[bool]
    reason: str = ""


def _bpp(n_bytes: int, input_hw: Tuple[int, int]) -> float:
    return 8.0 * n_bytes / (input_hw[0] * input_hw[1])


class RateScheme(ABC):
    """What a bundle's rates are and how a hint reaches one (see the module docstring). ``bundle``: read for its
    rungs, input size and recorded curve."""

    variable = False
    levels: Optional[Tuple[int, int]] = None

    def __init__(self, bundle):
        self.bundle = bundle

    @property
    def input_size(self) -> Tuple[int, int]:
        return self.bundle.input_size

    # -- hint -> operating point -------------------------------------------------------------------------
    @abstractmethod
    def point(self, hint: Optional[BitrateHint] = None, *, rung: Optional[int] = None, level: Optional[int] = None,
              controller: Optional[StreamRateController] = None) -> OperatingPoint:
        """The operating point a message is coded at: from the hint, or a forced rung / level."""

    def stream_controller(self, hint: Optional[BitrateHint]) -> Optional[StreamRateController]:
        """A controller that holds a stream to a link-rate hint; None where frames are coded one by one."""
        return None

    def check_stream(self, hint: Optional[BitrateHint], track_link: bool) -> None:
        """Refuse (:class:`HintError`) a stream this scheme cannot run: following the link needs a controller."""
        if track_link and self.stream_controller(hint) is None:
            raise HintError(f"following the link (--track-link) needs a variable-rate bundle and a kbit/s hint with "
                            f"its fps; bundle {self.bundle.bundle_id} is {self.describe()}")

    # -- the decoder's side ------------------------------------------------------------------------------
    @abstractmethod
    def level_kw(self, level: Optional[int]) -> Dict[str, int]:
        """The keyword a bottleneck codes with (``{"level": q}`` or nothing); HintError when it does not fit."""

    @abstractmethod
    def header_problem(self, level: Optional[int]) -> Optional[str]:
        """Why a bitstream's header level cannot come from this bundle (None: it can)."""

    # -- outcomes ----------------------------------------------------------------------------------------
    def outcome(self, point: OperatingPoint, n_bytes: int, input_hw: Tuple[int, int],
                level: Optional[int] = None) -> HintOutcome:
        """Whether one message of ``n_bytes`` coded at ``point`` (at quality ``level``) met its hint, and why not."""
        if point.hint_bpp is None:
            return HintOutcome(None)
        bpp = _bpp(n_bytes, input_hw)
        if bpp <= point.hint_bpp:
            return HintOutcome(True)
        return HintOutcome(False, self._over(point, bpp, level))

    @abstractmethod
    def _over(self, point: OperatingPoint, bpp: float, level: Optional[int]) -> str:
        """Why one message went over its hint."""

    def stream_outcome(self, hint: BitrateHint, sent: Sequence[int], skipped: int = 0) -> HintOutcome:
        """Whether a stream of messages ``sent`` (bytes; a skipped frame: 0) held the hint's kbit/s at its fps."""
        if hint.kbit_per_s is None or not sent:
            return HintOutcome(None)
        kbps = 8e-3 * sum(sent) / len(sent) * hint.fps
        if kbps <= hint.kbit_per_s * (1 + STREAM_TOLERANCE):
            return HintOutcome(True)
        over = f"sent {kbps:.2f} kbit/s, {100 * (kbps / hint.kbit_per_s - 1):.0f}% over {hint.kbit_per_s:g}"
        return HintOutcome(False, f"{over}: {self._stream_over(hint, skipped)}")

    @abstractmethod
    def _stream_over(self, hint: BitrateHint, skipped: int) -> str:
        """Why a stream went over its kbit/s."""

    # -- what was measured -------------------------------------------------------------------------------
    @abstractmethod
    def points(self) -> List[Tuple[str, float, Dict[str, Any]]]:
        """The measured points, as ``(where, lambda, figures)``: ``where`` a rung index or ``qN``, a level."""

    @abstractmethod
    def measure_points(self, rungs: Optional[Sequence[int]] = None,
                       levels: Optional[Sequence[int]] = None) -> List[Tuple[int, Optional[int]]]:
        """The (rung, level) points an evaluation measures (default: every rung, or :func:`default_levels`)."""

    @abstractmethod
    def describe(self) -> str:
        """The scheme in a few words (for messages)."""


class LadderScheme(RateScheme):
    """One bottleneck per rate: a hint selects a rung by its measured mean bpp (:func:`select_rung`)."""

    @property
    def rungs(self):
        return self.bundle.rungs

    def point(self, hint=None, *, rung=None, level=None, controller=None) -> OperatingPoint:
        if level is not None or controller is not None:
            raise HintError(f"quality levels and stream rate control need a variable-rate bundle; this one is "
                            f"{self.describe()}")
        if rung is not None:
            if not 0 <= rung < len(self.rungs):
                raise HintError(f"bundle {self.bundle.bundle_id} has rungs 0..{len(self.rungs) - 1}, not {rung}")
            return OperatingPoint(rung=int(rung))
        bpp = None if hint is None else hint.bpp(self.input_size)
        return OperatingPoint(rung=select_rung(self.rungs, bpp), hint_bpp=bpp)

    def level_kw(self, level):
        if level is not None:
            raise HintError("this bundle is a ladder of rungs: it takes a rung, not a quality level")
        return {}

    def header_problem(self, level):
        return None if level is None else "bitstream carries a quality level but this bundle is a ladder"

    def _over(self, point, bpp, level):
        r = self.rungs[point.rung]
        mean = f"{r.bpp:.4f} bpp" if r.bpp is not None else "an unmeasured rate"
        if r.bpp is None or r.bpp > point.hint_bpp:
            return f"below the coarsest rung: rung {r.index} averages {mean}"
        return f"a ladder's hint is a mean: rung {r.index} averages {mean}, this image took {bpp:.4f}"

    def _stream_over(self, hint, skipped):
        per_frame = hint.bpp(self.input_size)
        last = self.rungs[-1]
        if last.bpp is None or last.bpp > per_frame:
            return f"the link carries less than the coarsest rung (rung {last.index}) at {hint.fps:g} fps"
        return "a ladder's rungs hold a mean bpp per image, not a link rate (a variable-rate bundle holds it)"

    def points(self):
        return [(r.index, r.lam, r.metrics) for r in self.rungs]

    def measure_points(self, rungs=None, levels=None):
        return [(r, None) for r in (range(len(self.rungs)) if rungs is None else rungs)]

    def describe(self) -> str:
        return f"a ladder of {len(self.rungs)} rungs"


class VariableRateScheme(RateScheme):
    """One network for every rate: a quality level per message, chosen so that the message fits its hint."""

    variable = True

    def __init__(self, bundle, levels: Tuple[int, int]):
        super().__init__(bundle)
        self.levels = (int(levels[0]), int(levels[1]))

    def point(self, hint=None, *, rung=None, level=None, controller=None) -> OperatingPoint:
        if rung not in (None, 0):
            raise HintError("a variable-rate bundle has one network (rung 0); give a bitrate hint or a quality level")
        if controller is not None:  # the stream's rate, judged over the stream (stream_outcome)
            if level is not None:
                raise HintError("give either a quality level or a stream controller, not both")
            return OperatingPoint(controller=controller, variable=True)
        bpp = None if hint is None else hint.bpp(self.input_size)
        if level is not None:
            if bpp is not None:
                raise HintError("give either a quality level or a bitrate hint, not both")
            lo, hi = self.levels
            if not lo <= int(level) <= hi:
                raise HintError(f"quality level {level} is outside this bundle's {lo}..{hi}")
            return OperatingPoint(level=int(level), variable=True)
        if bpp is None:
            return OperatingPoint(variable=True)  # the finest level
        h, w = self.input_size
        return OperatingPoint(max_bytes=bpp * h * w / 8.0, variable=True, hint_bpp=bpp)

    def stream_controller(self, hint):
        if hint is None or hint.kbit_per_s is None:
            return None
        return StreamRateController(hint.kbit_per_s, hint.fps, self.levels)

    def level_kw(self, level):
        if level is None:
            raise HintError(f"this bundle is variable-rate: give a quality level in {self.levels[0]}..{self.levels[1]}")
        return {"level": int(level)}

    def header_problem(self, level):
        lo, hi = self.levels
        if level is None:
            return "bitstream carries no quality level but this bundle is variable-rate"
        if not lo <= level <= hi:
            return f"quality level {level} is outside this bundle's {lo}..{hi}"
        return None

    def _over(self, point, bpp, level):
        return (f"below the coarsest level: q{self.levels[0] if level is None else level} takes {bpp:.4f} bpp on this "
                "image")

    def _stream_over(self, hint, skipped):
        return (f"the link carries less than the coarsest level at {hint.fps:g} fps"
                + (f" ({skipped} frames skipped)" if skipped else ""))

    @property
    def curve(self) -> List[Dict[str, Any]]:
        """The measured rate-accuracy curve: one entry per level (``level``, ``bpp``, figures)."""
        return list((self.bundle.variable_rate or {}).get("curve") or [])

    def points(self):
        lam = self.bundle.rungs[0].lam
        # not measured yet: the one network's rung as recorded
        return [(f"q{p['level']}", p.get("lambda", lam), p) for p in self.curve] or \
            [(r.index, r.lam, r.metrics) for r in self.bundle.rungs]

    def measure_points(self, rungs=None, levels=None):
        return [(0, int(q)) for q in (default_levels(self.levels) if levels is None else levels)]

    def describe(self) -> str:
        return f"one variable-rate network, levels {self.levels[0]}..{self.levels[1]}"


def scheme_of(bundle) -> RateScheme:
    """The rate scheme of ``bundle`` (a :class:`shared.bundle.Bundle` or anything with its ``config``, ``rungs``,
    ``input_size``): variable rate where its bottleneck has quality levels, else a ladder."""
    levels = bundle.config.levels
    return LadderScheme(bundle) if levels is None else VariableRateScheme(bundle, levels)
