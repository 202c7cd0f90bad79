"""Rate-accuracy plots (log-scale bpp) from evaluation results, and segmentation masks side by side.

Figures are plain ``matplotlib.figure.Figure`` objects drawn by an Agg canvas of their own: no pyplot, no
global backend switch (``matplotlib.use``), so calling these from a program with an interactive backend, or
from several threads, leaves matplotlib's global state alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig



def rate_accuracy_plot(
    curves: Dict[str, List[Dict]],
    out: Path | str,
    reference: Optional[float] = None,
    metric: str = "top1",
    title: str = "",
) -> Path:
    """``curves``: label -> points with ``bpp`` and ``metric`` (fractions). Writes a PNG and returns its path."""
    fig = _figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    for label, pts in curves.items():
        pts = sorted((p for p in pts if metric in p), key=lambda p: p["bpp"])
        ax.plot([p["bpp"] for p in pts], [100 * p[metric] for p in pts], "o-", ms=4, label=label)
    if reference is not None:
        ax.axhline(100 * reference, color="k", ls="--", lw=1, label=f"unsplit model ({100 * reference:.1f}%)")
        ax.axhline(100 * reference - 1, color="k", ls=":", lw=1, label="1 point below")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel of the network input (real bytes, headers included)")
    from .summary import METRIC_LABELS

    label = METRIC_LABELS.get(metric, metric)
    ax.set_ylabel(f"{label} (%)" if metric == "miou" else f"{label} accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def mask_comparison_plot(examples: List[Dict], out: Path | str, model: str, num_classes: int,
                         colours: Optional[Sequence[Tuple[int, int, int]]] = None,
                         names: Optional[Sequence[str]] = None) -> Path:
    """One row per example of :func:`shared.evaluation.segmentation_examples`: input, ground truth, unsplit
    model, each rung and the codec at equal rate, masks in the class ``colours`` (void black), bpp in the titles,
    a legend of the class ``names``. ``colours`` / ``names``: the task's (``get_task(spec).palette(spec)``,
    ``.class_names(spec)``); default: those registered with ``num_classes`` (:mod:`shared.labels`)."""
    from matplotlib.patches import Patch

    from .labels import colours_of, names_of, palette_image

    colours = list(colours) if colours is not None else colours_of(None, num_classes)
    names = list(names) if names is not None else names_of(None, num_classes)

    def panels(ex):
        draw = lambda mask: palette_image(mask, model, num_classes, colours)  # noqa: E731
        yield ex["input"], f"{ex['name']}"
        yield draw(ex["truth"]), "ground truth"
        yield draw(ex["unsplit"]), "unsplit model"
        for r in ex["rungs"]:
            yield draw(r["mask"]), f"{r['label']}, {r['bpp']:.3f} bpp"
        c = ex["codec"]
        yield draw(c["mask"]), f"{c['codec'].upper()} q={c['quality']}, {c['bpp']:.3f} bpp"

    rows = [list(panels(ex)) for ex in examples]
    n_cols = max(len(r) for r in rows)
    fig = _figure(figsize=(2.4 * n_cols, 1.9 * len(rows) + 0.5), dpi=110)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax, (img, title) in zip(ax_row, row):
            ax.imshow(img.convert("RGB"))
            ax.set_title(title, fontsize=7)
        for ax in ax_row:
            ax.axis("off")
    handles = [Patch(color=[c / 255 for c in colours[i]], label=n) for i, n in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 11), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
