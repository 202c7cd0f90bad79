"""``splitinfer eval`` (every rung of one or more bundles, and codecs, on held-out images) and ``report`` (rebuild
the report files from a results.json); the use case and the rendering live in :mod:`shared.reporting`."""

from __future__ import annotations

from pathlib import Path

from ..options import options


def run_eval(args) -> int:
    from ..reporting import EvalOptions, evaluate_bundles

    evaluate_bundles(options(EvalOptions, args))
    return 0


def run_report(args) -> int:
    from ..reporting import read_results, summary_text, write_report

    ladders, baselines = read_results(args.results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(summary_text(write_report(out, ladders, baselines, bd_variant=args.bd_variant)))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'rd.png'}")
    return 0
