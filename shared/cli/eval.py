"""``splitinfer eval`` (every rung of one or more bundles, and codecs, on held-out images) and ``report`` (rebuild
the report files from a results.json); the use case and the rendering live in :mod:`shared.reporting`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..options import add_options, options


def setup_eval(p: argparse.ArgumentParser) -> None:
    from ..reporting import EvalOptions

    add_options(p, EvalOptions)


def run_eval(args) -> int:
    from ..reporting import EvalOptions, evaluate_bundles

    evaluate_bundles(options(EvalOptions, args))
    return 0


def setup_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="results.json written by 'splitinfer eval'")
    p.add_argument("--out", required=True, help="folder for results.json, results.md and rd.png")
    p.add_argument("--bd-variant", default="pchip", choices=["pchip", "cubic", "linear"],
                   help="interpolant of log(bpp) against accuracy for the BD-rate (default: pchip)")


def run_report(args) -> int:
    from ..reporting import summary_text, write_report

    path = Path(args.results)
    try:
        data = json.loads(path.read_text())
        ladders, baselines = data["ladders"], data["baselines"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a results.json of 'splitinfer eval' ({type(e).__name__}: {e})") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(summary_text(write_report(out, ladders, baselines, bd_variant=args.bd_variant)))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'rd.png'}")
    return 0
