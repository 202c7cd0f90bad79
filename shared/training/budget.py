"""The clock of ``splitinfer train --time-budget``: one deadline for the whole command, shared out to its phases.

The budget counts from the start of the process (``splitinfer train``) or of the call (Python), so importing
torch, loading the model and scanning the images are paid from it too. Each later phase asks for its time when
it starts (:meth:`Budget.phase`) and gets at most what is left, so a phase that ran over on a loaded machine
shortens the ones after it instead of the command running over. What each phase was given and used is kept
(``Budget.record``) and written to the manifest (``training.budget``).

What comes after the rungs (refit, export, measurement) is planned before them (:func:`plan_after`), from
shares of what is left and measured costs, so the rungs are trained with the rest.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

__all__ = ["Budget", "Phase", "process_started", "plan_after", "AfterPlan", "buys_lines", "USEFUL_FIRST_VIEWS",
           "USEFUL_RUNG_VIEWS", "MIN_TRAIN_IMAGES", "few_images_warning"]

# Shares of what is left after start-up that the phases after the rungs may take (the rest trains):
REFIT_SHARE = 0.06  # the z-density refit: cheap; a short refit already gains most (side_density.py scales to it)
MEASURE_SHARE = 0.15  # the held-out measurement (the verdict's evidence): fewer images when it would take longer
VIEWS_SHARE = 0.4  # views may use this much of what the rungs and views share (the old rule: half the budget)
# not scalable, so estimated: writing one rung (CDF tables, safetensors) took 0.5-1.5 s on the loaded 2-core CPU
EXPORT_SECONDS_PER_RUNG = 2.0
FINISH_SECONDS = 5.0  # the verdict, the manifest and the interpreter's exit

# What a useful bottleneck needs, in training views seen (steps x batch): the shortest schedule of a measured
# ladder here, row F of the recipe ablation (900 + 3 x 500 steps of 32 at block14, docs/results.md), which still
# ended 7 points below the unsplit model. A budget that buys under half of it is called far too short.
USEFUL_FIRST_VIEWS = 900 * 32
USEFUL_RUNG_VIEWS = 500 * 32
FAR_BELOW = 0.5

# Fewer training images than this get a warning before any work: the smallest training set measured here, the
# 539 training-part images of imagenet_val (row A of the recipe ablation, docs/results.md), ended 18 points below
# the unsplit model, and 2,539 images gained 8.5 points on it; below 500 nothing was ever measured to work.
MIN_TRAIN_IMAGES = 500


def process_started() -> float:
    """The ``time.monotonic()`` value at which this process started (Linux: /proc), or now where unknown."""
    now = time.monotonic()
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])  # field 22: start time
        uptime = float(open("/proc/uptime").read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0 <= age < 3600 else now


@dataclass
class Phase:
    """One phase's share: ``given`` seconds from ``start`` (``inf`` without a budget)."""

    name: str
    given: float
    start: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> Optional[float]:
        return None if math.isinf(self.given) else self.start + self.given

    def left(self) -> float:
        return self.given - (time.monotonic() - self.start)


class Budget:
    """``seconds`` for everything from ``started`` (a ``time.monotonic()`` value; default now); 0 = no limit."""

    def __init__(self, seconds: float, started: Optional[float] = None):
        self.seconds = float(seconds)
        self.started = time.monotonic() if started is None else started
        self.record: Dict[str, Dict[str, float]] = {}

    @property
    def limited(self) -> bool:
        return self.seconds > 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed() if self.limited else math.inf

    @property
    def deadline(self) -> Optional[float]:
        return self.started + self.seconds if self.limited else None

    def mark(self, name: str) -> None:
        """Record what ran before any phase was asked for (start-up): its time, all of it used."""
        self.record[name] = {"given": round(self.elapsed(), 2), "used": round(self.elapsed(), 2)}

    @contextmanager
    def phase(self, name: str, seconds: float = math.inf, keep: float = 0.0) -> Iterator[Phase]:
        """A phase given ``seconds`` but never more than is left after ``keep`` seconds for the phases after it."""
        p = Phase(name, max(min(seconds, self.left() - keep), 0.0))
        try:
            yield p
        finally:
            used = time.monotonic() - p.start
            self.record[name] = {"given": round(p.given, 2) if math.isfinite(p.given) else None, "used": round(used, 2)}


@dataclass
class AfterPlan:
    """Seconds kept back for what follows the rungs."""

    refit: float
    export: float
    measure: float

    @property
    def total(self) -> float:
        return self.refit + self.export + self.measure + FINISH_SECONDS


def plan_after(left: float, rungs: int, refit: bool, n_eval: int, per_image: float) -> AfterPlan:
    """Shares of ``left`` seconds for the refit, the export and the measurement of ``n_eval`` images (at most
    ``per_image`` x ``n_eval``: ``per_image`` is an estimate, the measurement itself times what it can do)."""
    if math.isinf(left):
        return AfterPlan(math.inf if refit else 0.0, math.inf, math.inf)
    return AfterPlan(refit=REFIT_SHARE * left if refit else 0.0, export=EXPORT_SECONDS_PER_RUNG * rungs,
                     measure=min(MEASURE_SHARE * left, 2 * per_image * n_eval))


def useful_steps(n_rungs: int, batch_size: int) -> int:
    """Steps of ``batch_size`` a useful ladder of ``n_rungs`` needs (see :data:`USEFUL_FIRST_VIEWS`)."""
    return math.ceil((USEFUL_FIRST_VIEWS + USEFUL_RUNG_VIEWS * (n_rungs - 1)) / batch_size)


def buys_lines(step_seconds: float, train_seconds: float, planned: int, n_rungs: int, batch_size: int,
               overhead: float) -> List[str]:
    """What the rungs' time buys at the measured ``step_seconds``, and, where that is far below what a useful
    ladder needs, a warning with the budget that would train it (``overhead``: the seconds of everything else)."""
    need = useful_steps(n_rungs, batch_size)
    out = []
    if math.isinf(train_seconds):
        out.append(f"measured {step_seconds:.2f} s per training step (batch {batch_size}): the planned {planned:,} "
                   f"steps take about {planned * step_seconds / 60:.0f} min")
        steps = planned
    else:
        steps = min(planned, int(train_seconds / step_seconds))
        out.append(f"measured {step_seconds:.2f} s per training step (batch {batch_size}): {train_seconds:.0f} s "
                   f"buy about {steps:,} steps, {steps // max(n_rungs, 1):,} per rung, of the {planned:,} planned")
    if steps < FAR_BELOW * need:
        what = (f"--steps/--steps-per-rung for {need:,} steps take about {need * step_seconds / 60:.0f} min at this "
                "speed")
        if math.isfinite(overhead):
            budget = overhead + need * step_seconds
            what += f": a --time-budget of about {budget:,.0f} s ({budget / 60:.0f} min)"
        out.append(f"WARNING: {steps:,} steps are far below what a useful bottleneck needs ({need:,} steps of "
                   f"{batch_size} for {n_rungs} rung(s), as the shortest schedule of a measured ladder here, "
                   f"docs/training.md): expect a weak network; {what}")
    return out


def few_images_warning(n: int) -> Optional[str]:
    """The warning for a training set smaller than :data:`MIN_TRAIN_IMAGES`, or None."""
    if n >= MIN_TRAIN_IMAGES:
        return None
    return (f"WARNING: {n} training images are too few to train a bottleneck: use at least {MIN_TRAIN_IMAGES} "
            f"(unlabelled photos are fine; the embedded ladders used 2,539), or expect a weak network. Images held "
            "out by the rule measure the result and never train (docs/training.md)")
