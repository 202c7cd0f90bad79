"""Typed accessors of the known outputs, for anything that holds an answer's ``outputs`` (the edge's
``InferResult``, the cloud's ``Prediction`` and ``InferenceResponse``): ``r.mask_png`` reads the segmentation
mask through the task module that owns the name, and is None for an answer of another task."""

from __future__ import annotations

from typing import List, Optional

from . import segmentation

__all__ = ["OutputAccessors"]


class OutputAccessors:
    """Mixin: properties over ``self.outputs`` (name -> :class:`~shared.tasks.base.OutputTensor`)."""

    @property
    def mask_png(self) -> Optional[bytes]:
        """Segmentation: the class mask (8-bit PNG of class indexes); None for other tasks."""
        return segmentation.mask_png(self.outputs)

    @property
    def class_pixels(self) -> Optional[List[int]]:
        """Segmentation: the pixels of each class in the mask, in class order; None for other tasks."""
        return segmentation.class_pixels(self.outputs)
