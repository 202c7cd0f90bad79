"""Continue a variable-rate network in segments that each double the samples it has seen, measuring every segment
on the selection part of the held-out images: the learning-curve table of issue 23.

Segment k starts from the bundle segment k-1 wrote (the first from ``--from``), restarts the learning-rate
schedule (a warm restart: 5% ramp, cosine decay to the floor, Loshchilov & Hutter's SGDR with period doubling),
and trains as many samples as the network has seen so far. Each segment ends at the bottom of its schedule, so
every row of the table is a converged point, and training can go on from the last row on any machine: the shipped
bundle records its samples seen (``manifest.training.samples_seen``), so ``--from`` a shipped bundle continues it.
A segment that would not end before ``--deadline`` (at the speed measured so far) is not started.

    python scripts/learning_curve.py --from shared/assets/bundles/efficientnet_lite0-block14-vr --samples 76800 \\
        --out runs/lc/b14 --segments 4 --deadline 15:20 -- --split block14 --latent 64 --levels=-4:40 ...

Arguments after ``--`` go to every ``splitinfer train`` (data, views, levels, lambdas, cache dir). Writes
``OUT/curve.csv`` (one row per segment) and each segment's bundle and evaluation under ``OUT/segK``.

``--table BASE_RESULTS`` prints the learning-curve table instead of training: per segment, the samples seen, the
BD-rate against the row before (the first against ``BASE_RESULTS``, an evaluation of ``--from`` on the same
images) with its paired 95% interval, the best level's top-1 and its gap to the unsplit model with its interval,
the agreement there, and the drop from the best level to the finest (the shipping rule).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITINFER = [sys.executable, "-m", "splitinfer"]


def _deadline(s: str) -> float:
    """The next HH:MM (UTC, the machine's clock) as a time.time() value: a time already past today means tomorrow's,
    so a run started at 22:00 with ``--deadline 00:30`` gets two and a half hours, not none."""
    h, m = (int(v) for v in s.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return (at + dt.timedelta(days=1) if at <= now else at).timestamp()


def _samples_of(bundle: Path) -> int:
    t = json.loads((bundle / "manifest.json").read_text()).get("training", {})
    return int(t.get("samples_seen") or 0)


def _ladder(results: Path) -> dict:
    return json.loads(Path(results).read_text())["ladders"][0]


def table(out: Path, base: Path) -> list:
    """The learning-curve table (markdown lines) of the segments in ``out``, the first compared with ``base``."""
    sys.path.insert(0, str(ROOT))
    from shared.summary import fmt_interval, summarize

    rows = list(csv.DictReader((out / "curve.csv").open()))
    lines = ["| segment | samples seen | train s | bundle | BD-rate vs previous [95%] | best top-1 (level, bpp) | "
             "gap to unsplit [95%] | agreement | best -> finest level |", "|---|---:|---:|---|---:|---|---:|---:|---:|"]
    prev = _ladder(base)
    for r in rows:
        cur = _ladder(Path(r["eval"]))
        s = summarize([prev, cur], [], "top1")
        bd = s["bd_rate_vs_first"][0]
        bd_txt = "n/a" if bd["bd_rate"] is None else fmt_interval(bd["bd_rate"], bd.get("interval"), "{:+.1f}%")
        gaps = s["gaps"][1]["points"]
        best = max((p for p in cur["rungs"]), key=lambda p: p.get("top1", 0))
        g = next(p for p in gaps if p.get("level") == best.get("level"))
        chk = next((c for c in s["level_check"] if c["ladder"] == s["gaps"][1]["ladder"]), None)
        drop = "n/a" if not chk or chk["drop_points"] is None else \
            fmt_interval(chk["drop_points"], chk.get("interval")) + (" ok" if chk["ok"] else " FAILS")
        agree = g.get("agreement", {}).get("value")
        lines.append(f"| {r['segment']} | {int(r['samples_seen']):,} | {r['train_seconds']} | {r['bundle_id'][:8]} | "
                     f"{bd_txt} | {100 * best['top1']:.2f}% (q{best.get('level')}, {best['bpp']:.3f}) | "
                     f"{fmt_interval(g['gap'], g.get('interval')) if 'gap' in g else 'n/a'} | "
                     f"{'n/a' if agree is None else f'{100 * agree:.1f}%'} | {drop} |")
        prev = cur
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", help="bundle the first segment starts from")
    p.add_argument("--table", metavar="BASE_RESULTS", default=None,
                   help="print the learning-curve table of --out (BASE_RESULTS: results.json of --from on the same "
                        "images) and exit")
    p.add_argument("--samples", type=int, default=0,
                   help="samples the source has seen (default: its manifest's training.samples_seen)")
    p.add_argument("--from-rung", type=int, default=0, help="rung of --from to start from (a ladder's)")
    p.add_argument("--out", required=True)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--first-samples", type=int, default=0,
                   help="samples of the first segment (default: as many as the source has seen: a doubling)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--deadline", type=_deadline, default=None, help="HH:MM (UTC): start no segment that would end later")
    p.add_argument("--speed", type=float, default=0.0, help="expected images/s before the first segment measures it")
    p.add_argument("--eval-data", default="../shared/data/imagenet_val")
    p.add_argument("--eval-part", default="selection")
    a = p.parse_args(ours)
    out = Path(a.out)
    if a.table:
        print("\n".join(table(out, Path(a.table))))
        return 0
    if not a.source:
        p.error("--from is required to train")
    out.mkdir(parents=True, exist_ok=True)
    prev, prev_rung = Path(a.source), a.from_rung
    seen = a.samples or _samples_of(prev)
    rows_path = out / "curve.csv"
    speed = a.speed
    for k in range(1, a.segments + 1):
        seg = out / f"seg{k}"
        add = a.first_samples if (k == 1 and a.first_samples) else seen
        steps = max(1, add // a.batch_size)
        if (seg / "manifest.json").is_file():  # done in an earlier call: continue after it
            prev, prev_rung, seen = seg, 0, _samples_of(seg)
            continue
        if a.deadline and speed > 0 and time.time() + add / speed > a.deadline:
            print(f"segment {k} ({add} samples, ~{add / speed / 60:.0f} min at {speed:.0f} img/s) would end after the "
                  "deadline: stopping", flush=True)
            break
        cmd = SPLITINFER + ["train", *train_args, "--init-from", f"{prev}:{prev_rung}", "--steps", str(steps),
                            "--steps-per-rung", "0", "--batch-size", str(a.batch_size), "--feature-warmup", "0",
                            "--samples-before", str(seen), "--no-eval", "--out", str(seg)]
        print(f"segment {k}: {steps} steps of {a.batch_size} from {prev} ({seen} samples seen before)", flush=True)
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        wall = time.time() - t0
        speed = add / wall
        ev = seg / f"eval-{a.eval_part}"
        subprocess.run(SPLITINFER + ["eval", "--bundle", str(seg), "--data", a.eval_data, "--part", a.eval_part,
                                     "--out", str(ev)], cwd=ROOT, check=True)
        seen += steps * a.batch_size
        res = json.loads((ev / "results.json").read_text())
        lad = res["ladders"][0]
        best = max(lad["rungs"], key=lambda r: r.get("top1", 0))
        row = {"segment": k, "samples_seen": seen, "train_seconds": round(wall), "bundle_id": lad["bundle_id"],
               "unsplit_top1": lad["reference"].get("top1"), "best_top1": best.get("top1"),
               "best_level": best.get("level"), "best_bpp": best.get("bpp"),
               "agreement_at_best": best.get("agreement"), "eval": str(ev / "results.json")}
        new = not rows_path.is_file()
        with rows_path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        print("curve: " + json.dumps(row), flush=True)
        prev, prev_rung = seg, 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
