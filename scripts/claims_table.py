"""The claims table of issue 23 (item 7), from one ``splitinfer eval`` of the rows of ``scripts/claims_retest.sh``
(measured together on the same images; nothing is measured again here).

    python scripts/claims_table.py runs/claims/b14/eval-test/results.json --at 0.08,0.1

Each row against the first (the hyperprior, label-free): BD-rate with its paired 95% interval, and the top-1
difference at fixed rates (each curve read on its envelope, linear in log bpp) with its paired interval, which
still compares two curves whose accuracy ranges do not overlap (where BD-rate has nothing to integrate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.summary import accuracy_gap_at, fmt_interval, ladder_label, summarize  # noqa: E402


def table(results: dict, at) -> list:
    ladders = results["ladders"]
    s = summarize(ladders, [], "top1")
    head = ["row", "BD-rate vs first [95%]"] + [f"top-1 vs first at {b:g} bpp [95%]" for b in at] + ["best top-1 (bpp)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for i, lad in enumerate(ladders):
        cells = [ladder_label(lad)]
        if i == 0:
            cells += ["(anchor)"] + ["(anchor)"] * len(at)
        else:
            bd = s["bd_rate_vs_first"][i - 1]
            cells.append("no overlap" if bd["bd_rate"] is None else
                         fmt_interval(bd["bd_rate"], bd.get("interval"), "{:+.1f}%"))
            for b in at:
                g = accuracy_gap_at(lad["rungs"], ladders[0]["rungs"], b)
                cells.append("below its cheapest rung" if g["gap"] is None else fmt_interval(g["gap"], g["interval"]))
        best = max(lad["rungs"], key=lambda p: p.get("top1", 0))
        cells.append(f"{100 * best['top1']:.2f}% ({best['bpp']:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="results.json of one splitinfer eval of every row, first the anchor")
    p.add_argument("--at", default="0.08,0.1", help="comma-separated bpp at which to compare top-1")
    a = p.parse_args(argv)
    print("\n".join(table(json.loads(a.results.read_text()), [float(x) for x in a.at.split(",")])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
