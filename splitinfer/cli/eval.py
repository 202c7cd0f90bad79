"""``splitinfer eval`` (every rung of one or more bundles, and codecs, on held-out images) and ``report`` (rebuild
the report files from a results.json); the use case and the rendering live in :mod:`shared.reporting`, the
options of ``report`` (it only calls the library) here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.options import option, options


@dataclass
class ReportOptions:
    """What ``splitinfer report`` rebuilds (:func:`shared.reporting.read_results`, then
    :func:`shared.reporting.write_report`)."""

    results: str = option(help="results.json written by 'splitinfer eval'", positional=True)
    out: str = option(help="folder for results.json, results.md and rd.png")
    bd_variant: str = option("pchip", "interpolant of log(bpp) against accuracy for the BD-rate (default: pchip)",
                             choices=["pchip", "cubic", "linear"])


def run_eval(args) -> int:
    from shared.reporting import EvalOptions, evaluate_bundles

    evaluate_bundles(options(EvalOptions, args))
    return 0


def run_report(args) -> int:
    from shared.reporting import read_results, summary_text, write_report

    ladders, baselines = read_results(args.results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(summary_text(write_report(out, ladders, baselines, bd_variant=args.bd_variant)))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'rd.png'}")
    return 0
