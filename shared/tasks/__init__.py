"""Tasks: what differs between classification and segmentation, asked of one object (see :mod:`.base`).

``get_task(spec.task)`` (or ``get_task(spec)``) gives a backbone's task. The task modules register on import,
and this package imports them all, so importing anything from ``shared.tasks`` fills the registry.
"""

from .base import (DATATYPES, TOPK_INDEX, TOPK_NAME, TOPK_OUTPUTS, TOPK_SCORE, Answer, OutputSpec, OutputTensor,
                   Scores, Task, all_metrics, as_array, get_task, list_tasks, metric_labels, register_task)
from . import classification, segmentation  # noqa: E402,F401  (registration on import)

__all__ = ["Task", "Scores", "Answer", "OutputSpec", "OutputTensor", "DATATYPES", "TOPK_OUTPUTS", "TOPK_INDEX",
           "TOPK_SCORE", "TOPK_NAME", "as_array", "register_task", "get_task", "list_tasks", "all_metrics",
           "metric_labels"]
