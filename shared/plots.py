"""Rate-accuracy plots (log-scale bpp) from evaluation results."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional


def rate_accuracy_plot(
    curves: Dict[str, List[Dict]],
    out: Path | str,
    reference: Optional[float] = None,
    metric: str = "top1",
    title: str = "",
) -> Path:
    """``curves``: label -> points with ``bpp`` and ``metric`` (fractions). Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, pts in curves.items():
        pts = sorted((p for p in pts if metric in p), key=lambda p: p["bpp"])
        ax.plot([p["bpp"] for p in pts], [100 * p[metric] for p in pts], "o-", ms=4, label=label)
    if reference is not None:
        ax.axhline(100 * reference, color="k", ls="--", lw=1, label=f"unsplit model ({100 * reference:.1f}%)")
        ax.axhline(100 * reference - 1, color="k", ls=":", lw=1, label="1 point below")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel of the network input (real bytes, headers included)")
    ax.set_ylabel(f"{metric.replace('top', 'top-')} accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
