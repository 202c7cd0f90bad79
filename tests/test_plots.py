"""shared.plots draws PNGs without touching matplotlib's global backend."""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image


def test_plots_write_pngs_without_switching_the_backend(tmp_path):
    from shared.plots import mask_comparison_plot, rate_accuracy_plot

    before = matplotlib.get_backend()
    curves = {"ours": [{"bpp": 0.05, "top1": 0.8}, {"bpp": 0.2, "top1": 0.9}], "jpeg": [{"bpp": 0.5, "top1": 0.7}]}
    p = rate_accuracy_plot(curves, tmp_path / "rd" / "plot.png", reference=0.92, title="t")
    assert Image.open(p).size == (840, 540)
    mask = np.zeros((8, 8), dtype=np.int64)
    ex = {"name": "a", "input": Image.new("RGB", (8, 8)), "truth": mask, "unsplit": mask,
          "rungs": [{"rung": 0, "level": None, "label": "rung 0", "mask": mask, "bpp": 0.1}], "codec": {"codec": "jpeg", "quality": 5, "mask": mask, "bpp": 0.2}}
    q = mask_comparison_plot([ex, ex], tmp_path / "masks.png", "deeplab", 4)
    assert Image.open(q).format == "PNG"
    assert matplotlib.get_backend() == before
