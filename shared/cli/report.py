"""``splitinfer report``: rebuild results.md, rd.png and the summary from an existing results.json.

Nothing is re-measured: the points (``ladders`` and ``baselines``) are copied unchanged into
``DIR/results.json``, next to a freshly computed ``summary`` section.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="results.json written by 'splitinfer eval'")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and rd.png")
    p.add_argument("--bd-variant", default="pchip", choices=["pchip", "cubic", "linear"],
                   help="interpolant of log(bpp) against accuracy for the BD-rate (default: pchip)")


def run(args) -> int:
    from .eval import summary_text, write_report

    path = Path(args.results)
    try:
        data = json.loads(path.read_text())
        ladders, baselines = data["ladders"], data["baselines"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        print(f"error: {path} is not a results.json of 'splitinfer eval' ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = write_report(out, ladders, baselines, bd_variant=args.bd_variant)
    print(summary_text(summary))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'rd.png'}")
    return 0
