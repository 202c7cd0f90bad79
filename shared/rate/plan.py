"""What training makes for each rate scheme: the training use case asks its plan, not the bottleneck's levels.

- :class:`LadderPlan`: one network per lambda, trained from the largest lambda down (each warm-starts the next);
  the first gets ``steps``, each later one ``steps_per_rung``; every step trains at its network's lambda.
- :class:`VariableRatePlan`: one network over the quality levels, with the ladder's whole step budget; every step
  draws a level and trains at the lambda that goes with it (:func:`shared.training.step.level_and_lambda`); the
  bundle's one rung records the largest lambda and the manifest the level range.

:func:`training_plan` picks one from the lambdas and the levels (None: a ladder). Torch-free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .scheme import default_levels

__all__ = ["TrainingPlan", "LadderPlan", "VariableRatePlan", "training_plan"]

# draws a step's (level, lambda) from the level range and the lambdas, with the run's random generator
LevelDraw = Callable[[Tuple[int, int], Sequence[float]], Tuple[int, float]]


@dataclass(frozen=True)
class TrainingPlan(ABC):
    lambdas: Tuple[float, ...]

    @abstractmethod
    def networks(self) -> List[int]:
        """The indexes of ``lambdas`` that train a network of their own, in training order."""

    @abstractmethod
    def steps(self, pos: int, first: int, per_rung: int) -> int:
        """Steps of the ``pos``-th network trained, from ``--steps`` and ``--steps-per-rung``."""

    def steps_left(self, pos: int, first: int, per_rung: int) -> int:
        """Steps of the ``pos``-th network and of every one after it."""
        return sum(self.steps(p, first, per_rung) for p in range(pos, len(self.networks())))

    @abstractmethod
    def step_point(self, lam: float, draw: LevelDraw) -> Tuple[Optional[int], float]:
        """One training step's quality level (None: a ladder's network has none) and lambda."""

    @property
    @abstractmethod
    def probe_level(self) -> Optional[int]:
        """The level a speed probe steps at (the finest: the costliest)."""

    @abstractmethod
    def eval_points(self) -> int:
        """Rate points the held-out measurement takes (rungs, or the measured levels)."""

    @abstractmethod
    def manifest(self) -> Tuple[List[float], Dict[str, Any]]:
        """The lambdas of the bundle's rungs, and what the manifest records beyond them."""

    @property
    def level_range(self) -> Optional[List[int]]:
        """The level range as the training record writes it (None: a ladder)."""
        return None


@dataclass(frozen=True)
class LadderPlan(TrainingPlan):
    def networks(self) -> List[int]:
        return sorted(range(len(self.lambdas)), key=lambda i: -self.lambdas[i])

    def steps(self, pos: int, first: int, per_rung: int) -> int:
        return first if pos == 0 else per_rung

    def step_point(self, lam: float, draw: LevelDraw) -> Tuple[Optional[int], float]:
        return None, lam

    @property
    def probe_level(self) -> Optional[int]:
        return None

    def eval_points(self) -> int:
        return len(self.lambdas)

    def manifest(self) -> Tuple[List[float], Dict[str, Any]]:
        return list(self.lambdas), {}


@dataclass(frozen=True)
class VariableRatePlan(TrainingPlan):
    levels: Tuple[int, int] = (0, 0)

    def networks(self) -> List[int]:
        return [0]

    def steps(self, pos: int, first: int, per_rung: int) -> int:
        return first + per_rung * (len(self.lambdas) - 1)  # the ladder's whole budget, for the one network

    def step_point(self, lam: float, draw: LevelDraw) -> Tuple[Optional[int], float]:
        return draw(self.levels, self.lambdas)

    @property
    def probe_level(self) -> Optional[int]:
        return self.levels[1]

    def eval_points(self) -> int:
        return len(default_levels(self.levels))

    def manifest(self) -> Tuple[List[float], Dict[str, Any]]:
        return [max(self.lambdas)], {"variable_rate": {"levels": list(self.levels),
                                                       "lambdas": [min(self.lambdas), max(self.lambdas)]}}

    @property
    def level_range(self) -> Optional[List[int]]:
        return list(self.levels)


def training_plan(lambdas: Sequence[float], levels: Optional[Tuple[int, int]]) -> TrainingPlan:
    """The plan for ``lambdas`` and a level range (None: one network per lambda)."""
    lams = tuple(float(v) for v in lambdas)
    return LadderPlan(lams) if levels is None else VariableRatePlan(lams, tuple(levels))
