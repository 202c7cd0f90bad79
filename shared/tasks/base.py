"""The task interface and its registry: everything that differs between classification and segmentation.

A :class:`Task` is what MLServer's ``MLModel`` runtime is to a model server, narrowed to this project: one
object per kind of output that the rest of the code asks instead of testing a name, a tensor's rank or a model
name. It owns

- the label names and palette of a backbone (:meth:`Task.class_names`, :meth:`Task.palette`);
- the metric accumulator and the names of its figures (:meth:`Task.scores`, :attr:`Task.metrics`,
  :attr:`Task.metric_labels`): a new metric touches the task's own file only;
- the dataset factory (:meth:`Task.make_dataset`) and the label tensors of items (:meth:`Task.item_labels`);
- how the teacher's output is kept in the training cache and compared with the student's in the loss
  (:meth:`Task.cache_output`, :meth:`Task.cache_labels`, :meth:`Task.match_teacher`,
  :meth:`Task.supervised_loss`);
- how a tail output becomes an answer (:meth:`Task.answer`), and the outputs that answer has on the wire,
  for the Open Inference Protocol (REST and gRPC) and the project's own gRPC messages (:meth:`Task.outputs`);
- what the training and evaluation commands may do with it (:attr:`Task.view_store`,
  :attr:`Task.labels_in_views`, :attr:`Task.dense`).

A backbone names its task (``BackboneSpec.task``); :func:`get_task` takes that name or the spec. Tasks register
with :func:`register_task` when their module is imported; ``shared/tasks/__init__.py`` imports them all.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

from .. import labels as label_sets

if TYPE_CHECKING:  # torch is imported where a tensor is made: a torch-free server imports tasks for their outputs
    import numpy as np
    from torch import Tensor
    from torch.utils.data import Dataset

__all__ = ["Task", "Scores", "Answer", "OutputSpec", "OutputTensor", "DATATYPES", "TOPK_OUTPUTS", "TOPK_INDEX",
           "TOPK_SCORE", "TOPK_NAME", "as_array", "register_task", "get_task", "list_tasks",
           "all_metrics", "metric_labels"]


# the Open Inference Protocol's datatypes that answers use, and the Python type of one element of each
DATATYPES = {"INT64": int, "FP32": float, "BYTES": bytes}


@dataclass(frozen=True)
class OutputTensor:
    """One named output of an answer as every transport carries it: the Open Inference Protocol's tensor (datatype,
    shape, flat row-major data) that the task made. Transports copy it without knowing what it means."""

    datatype: str  # a key of DATATYPES
    shape: Tuple[int, ...]
    data: Tuple[Any, ...]  # flat; elements of DATATYPES[datatype]

    def __post_init__(self):
        if self.datatype not in DATATYPES:
            raise ValueError(f"datatype {self.datatype!r} is not one of {', '.join(DATATYPES)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "data", tuple(self.data))

    def problem(self) -> Optional[str]:
        """None when the data fit the shape and the datatype (a received tensor is not trusted); else what does
        not fit."""
        if any(d < 0 for d in self.shape) or math.prod(self.shape) != len(self.data):
            return f"{len(self.data)} elements for shape {list(self.shape)}"
        kinds = (int, float) if self.datatype == "FP32" else DATATYPES[self.datatype]  # an FP32 may arrive as 1
        fits = all(isinstance(v, kinds) and not isinstance(v, bool) for v in self.data)
        return None if fits else f"an element is not {self.datatype}"


@dataclass(frozen=True)
class OutputSpec:
    """One output of a model's answer, as every transport describes it: the Open Inference Protocol's tensor
    metadata (name, datatype, shape; -1 = variable), which is also its key in the answer's ``outputs`` (the data
    plane's response, the splitinfer gRPC ``InferResponse.outputs`` map, OIP's named outputs)."""

    name: str
    datatype: str  # a key of DATATYPES
    shape: Tuple[int, ...]
    description: str = ""

    def tensor(self, data: Sequence[Any]) -> OutputTensor:
        """``data`` (flat) as this output's tensor: its one variable dimension takes the length of ``data``."""
        fixed = 1
        for d in self.shape:
            fixed *= d if d >= 0 else 1
        shape = tuple(d if d >= 0 else len(data) // max(fixed, 1) for d in self.shape)
        return OutputTensor(self.datatype, shape, tuple(data))

    def of(self, outputs: Mapping[str, OutputTensor]) -> Optional[OutputTensor]:
        """This output's tensor in an answer's ``outputs``, None when the answer has none."""
        return outputs.get(self.name)


# every task answers with its classes ranked (best first; k = the request's top_k)
TOPK_INDEX = OutputSpec("topk_index", "INT64", (1, -1), "class indexes, best first")
TOPK_SCORE = OutputSpec("topk_score", "FP32", (1, -1), "their scores")
TOPK_NAME = OutputSpec("topk_name", "BYTES", (1, -1), "their names")
TOPK_OUTPUTS = (TOPK_INDEX, TOPK_SCORE, TOPK_NAME)


@dataclass
class Answer:
    """One image's answer: the ranked classes, and the task's own outputs by name (:meth:`Task.outputs` after
    the ranked classes; e.g. the class mask of segmentation), as the task made them."""

    topk: List[Tuple[int, str, float]]  # (class index, name, score)
    outputs: Dict[str, OutputTensor] = field(default_factory=dict)


def as_array(output) -> "np.ndarray":
    """A tail output as a float numpy array, from numpy (ONNX Runtime) or a torch tensor (any device): answers are
    made by the same code on every runtime."""
    import numpy as np

    if hasattr(output, "detach"):  # torch, without importing it
        output = output.detach().float().cpu().numpy()
    return np.asarray(output, dtype=np.float32)


class Scores(ABC):
    """A task's metric accumulator: ``add`` batch after batch, then ``result``.

    ``add(logits, labels, reference)``: ``labels`` as the task's dataset gives them (unknown ones marked as the
    task says); ``reference``: the unsplit model's output on the same inputs, for ``agreement`` (the share of
    images, or of pixels, where both predict the same class). ``result()``: ``agreement`` when compared, and the
    task's :attr:`Task.metrics` (fractions) when any label was known.

    ``per_image()``: the same figures image by image, in the order added, for intervals over images
    (:mod:`shared.intervals`): per figure a list of hits; with ``per_pixel`` also ``<figure>_of`` (the pixels
    counted), else each hit is 1 or 0 and ``None`` where the image's label is unknown.
    """

    per_pixel: ClassVar[bool] = False  # dense tasks count hits per pixel: per image hits *and* pixels counted

    def __init__(self, num_classes: int):
        self.c = num_classes
        self.n = self.n_labelled = 0
        self.agree = self.compared = 0
        self.records: Dict[str, List] = {}

    def add(self, logits: Tensor, labels: Tensor, reference: Optional[Tensor] = None) -> None:
        pred = logits.argmax(1)
        self.n += len(logits)
        if reference is not None:
            same = pred == reference.argmax(1)
            self.agree += int(same.sum())
            self.compared += same.numel()
            import torch

            self._keep("agreement", same.reshape(len(same), -1).sum(1), torch.full((len(same),), same[0].numel()))
        self._add(logits, pred, labels.to(logits.device))

    def _keep(self, figure: str, hits: Tensor, counted: Tensor) -> None:
        """Record one batch of a figure per image: ``hits`` out of ``counted`` (0 = unknown for this image)."""
        hits, counted = hits.tolist(), counted.tolist()
        if self.per_pixel:
            self.records.setdefault(figure, []).extend(hits)
            self.records.setdefault(figure + "_of", []).extend(counted)
        else:
            self.records.setdefault(figure, []).extend(h if c else None for h, c in zip(hits, counted))

    def per_image(self) -> Dict[str, List]:
        """The figures image by image (see the class docstring)."""
        return {k: list(v) for k, v in self.records.items()}

    @abstractmethod
    def _add(self, logits: Tensor, pred: Tensor, labels: Tensor) -> None:
        """Accumulate one batch against its labels (and count the labelled ones in ``n_labelled``)."""

    @abstractmethod
    def _figures(self) -> Dict[str, Any]:
        """The task's figures; called only when some label was known."""

    def result(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if self.compared:
            out["agreement"] = self.agree / self.compared
        if self.n_labelled:
            out.update(self._figures())
        return out


class Task(ABC):
    """What a task is made of (see the module docstring). Subclasses set the class attributes and implement the
    abstract methods; one instance per task is registered."""

    name: ClassVar[str]
    # the figures a measurement carries (fractions), the first being the one summaries compare
    metrics: ClassVar[Tuple[str, ...]]
    # how those figures read in tables and plots
    metric_labels: ClassVar[Dict[str, str]]
    # training views are kept in the view store (mixed views, tail-feature targets); otherwise in the feature cache
    view_store: ClassVar[bool] = False
    # a label-free training run records the labels of its views anyway (cheap: one integer per image)
    labels_in_views: ClassVar[bool] = False
    # answers are per pixel (a mask): evaluation can draw them
    dense: ClassVar[bool] = False

    # -- labels ------------------------------------------------------------------------------------------
    def class_names(self, spec) -> List[str]:
        """The names of ``spec``'s classes in class-index order (numbered when its backbone names no label set)."""
        return label_sets.names_of(spec.labels, spec.num_classes)

    def palette(self, spec) -> List[Tuple[int, int, int]]:
        """One RGB colour per class of ``spec`` (its data set's own, else VOC's colour map)."""
        return label_sets.colours_of(spec.labels, spec.num_classes)

    # -- data --------------------------------------------------------------------------------------------
    @abstractmethod
    def make_dataset(self, items: Sequence, pre, train: bool = False) -> Dataset:
        """The dataset the task trains (``train``: augmented views) or evaluates on: (input, label) pairs."""

    @abstractmethod
    def item_labels(self, items: Sequence, pre) -> List[Tensor]:
        """Each item's label as the evaluation dataset gives it (for measuring inputs made elsewhere)."""

    # -- metrics -----------------------------------------------------------------------------------------
    @abstractmethod
    def scores(self, num_classes: int) -> Scores:
        """A fresh metric accumulator for a model with ``num_classes`` outputs."""

    # -- training ----------------------------------------------------------------------------------------
    def cache_output(self, teacher: Tensor, input_hw: Sequence[int]) -> Tensor:
        """The teacher's output as the training cache keeps it (default: as it is)."""
        return teacher

    def cache_labels(self, labels: Tensor, keep: bool) -> Tensor:
        """A batch of labels as the training cache keeps them; ``keep`` is False when the items carry no label
        files worth keeping (label-free runs). Default: as they are."""
        return labels

    def match_teacher(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The student's output made comparable with the (cached) teacher's, for the distillation loss."""
        return student

    @abstractmethod
    def supervised_loss(self, logits: Tensor, labels: Optional[Tensor]) -> Tensor:
        """Cross-entropy against the labels; a ValueError when a label the loss needs is missing."""

    # -- serving -----------------------------------------------------------------------------------------
    @abstractmethod
    def answer(self, output, names: Sequence[str], top_k: int) -> Answer:
        """One image's tail output (1, classes[, H, W]; numpy or torch, see :func:`as_array`) -> its
        :class:`Answer`, the task's own outputs made by their :class:`OutputSpec`."""

    def outputs(self, num_classes: int) -> List[OutputSpec]:
        """The outputs of this task's answers (the ranked classes, then the task's own)."""
        return list(TOPK_OUTPUTS)

    def own_outputs(self, num_classes: int) -> Dict[str, OutputSpec]:
        """The task's own outputs (after the ranked classes), by name: the keys an answer's ``outputs`` may have."""
        return {o.name: o for o in self.outputs(num_classes)[len(TOPK_OUTPUTS):]}

    def output_problem(self, outputs: Mapping[str, OutputTensor], num_classes: int) -> Optional[str]:
        """None when a received answer's ``outputs`` are this task's, each of its datatype and consistent with its
        shape; else what is wrong (the edge does not trust the server). Tasks add their own checks."""
        own = self.own_outputs(num_classes)
        for name, t in outputs.items():
            spec = own.get(name)
            if spec is None:
                return f"output {name!r} is not one of the {self.name} task's ({', '.join(own) or 'none'})"
            if not isinstance(t, OutputTensor) or t.datatype != spec.datatype:
                return f"output {name!r} is not {spec.datatype}"
            if len(t.shape) != len(spec.shape) or any(s >= 0 and d != s for d, s in zip(t.shape, spec.shape)):
                return f"output {name!r} has shape {list(t.shape)}, not {list(spec.shape)}"
            problem = t.problem()
            if problem:
                return f"output {name!r}: {problem}"
        return None


# ------------------------------------------------------------------------------------------ registry
_TASKS: Dict[str, Task] = {}
T = TypeVar("T", bound=Type[Task])


def register_task(cls: T) -> T:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} registered twice")
    _TASKS[cls.name] = cls()
    return cls


def get_task(task: Union[str, Task, Any]) -> Task:
    """The task named ``task``, or the task of a backbone spec (anything with a ``task`` name); a task as is."""
    if isinstance(task, Task):
        return task
    name = task if isinstance(task, str) else getattr(task, "task", None)
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}") from None


def list_tasks() -> List[str]:
    return sorted(_TASKS)


def all_metrics() -> Dict[str, Tuple[str, ...]]:
    """task name -> the figures its measurements carry (the first is the one summaries compare)."""
    return {name: t.metrics for name, t in sorted(_TASKS.items())}


def metric_labels() -> Dict[str, str]:
    """Every task's figures and how they read in tables and plots."""
    out: Dict[str, str] = {}
    for t in _TASKS.values():
        out.update(t.metric_labels)
    return out
