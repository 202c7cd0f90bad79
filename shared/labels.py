"""Human-readable class names per task."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import List


@lru_cache(maxsize=None)
def imagenet_classes() -> List[str]:
    """The 1,000 ILSVRC-2012 class names in the standard (sorted WordNet id) order."""
    return json.loads(resources.files("shared").joinpath("assets/imagenet_classes.json").read_text())


def class_names(model: str, num_classes: int) -> List[str]:
    if num_classes == 1000:
        return imagenet_classes()
    if model.startswith("cifar"):
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return [str(i) for i in range(num_classes)]
