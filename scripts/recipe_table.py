"""The "what moved the curve" table of issue 12, from the manifests ``splitinfer train`` wrote (each ladder was
measured on the same held-out images when it finished training; nothing is measured again here).

    python scripts/recipe_table.py runs/abl A B C D E factorized static supervised [--codecs docs/effnet/results.json]

Each row: BD-rate against the first row (pchip, log bpp over the shared accuracy range), the best rung, the bpp
within 1 and 3 points of the unsplit model, BD-rate against the best codec, training images/s, wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.summary import accuracy_at as top1_at  # noqa: E402
from shared.summary import bd_rate, bpp_to_reach  # noqa: E402


def ladder(root: Path) -> dict:
    m = json.loads((root / "manifest.json").read_text())
    return {"name": root.name, "rungs": [r["metrics"] for r in m["rungs"]], "training": m["training"],
            "reference": m["evaluation"]["reference"], "config": m["config"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root")
    p.add_argument("rows", nargs="+")
    p.add_argument("--codecs", default=None, help="results.json with codec points on the same images")
    p.add_argument("--at", default="0.05,0.08", help="bpp values to read each curve's top-1 at")
    a = p.parse_args()
    rows = [ladder(Path(a.root) / r) for r in a.rows if (Path(a.root) / r / "manifest.json").is_file()]
    codecs = {}
    if a.codecs:
        for pt in json.loads(Path(a.codecs).read_text())["baselines"]:
            codecs.setdefault(pt["method"], []).append(pt)
    anchor = rows[0]
    ref = anchor["reference"]["top1"]
    print(f"unsplit model: {100 * ref:.2f}% top-1 on {anchor['reference']['n_images']} held-out images\n")
    at = [float(v) for v in a.at.split(",")]
    print("| row | best rung | " + " | ".join(f"top-1 at {b:g} bpp" for b in at) + " | bpp within 1 point | within 3 "
          "points | BD-rate vs row " + anchor["name"] + " | BD-rate vs best codec | views | train img/s | wall s |")
    print("|---|---|" + "---:|" * len(at) + "---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        best = max(r["rungs"], key=lambda m: m["top1"])
        w1, w3 = (bpp_to_reach(r["rungs"], ref - d) for d in (0.01, 0.03))
        bd = bd_rate(r["rungs"], anchor["rungs"]) if r is not anchor else {"bd_rate": 0.0}
        vs = [(bd_rate(r["rungs"], pts)["bd_rate"], name) for name, pts in sorted(codecs.items())]
        vs = [v for v in vs if v[0] is not None]
        worst = max(vs) if vs else None  # the codec this ladder beats by the least is the best codec here
        t = r["training"]
        ips = sum(t["images_per_second"]) / len(t["images_per_second"])
        fmt = lambda w: f"{w['bpp']:.4f}" if w["reached"] else "not reached"  # noqa: E731
        acc = [top1_at(r["rungs"], b) for b in at]
        bdt = "no overlap" if bd["bd_rate"] is None else f"{bd['bd_rate']:+.1f}%"
        print(f"| {r['name']} | {100 * best['top1']:.2f}% at {best['bpp']:.4f} | "
              + " | ".join("-" if v is None else f"{100 * v:.2f}%" for v in acc)
              + f" | {fmt(w1)} | {fmt(w3)} | {bdt} | "
              + (f"{worst[0]:+.1f}% ({worst[1]})" if worst else "-") +
              f" | {t['n_images']} x ({t['views']}+{t.get('mix_views', 0)}) | {ips:.0f} | {t.get('seconds', float('nan')):.0f} |")
    print()
    for r in rows:
        print(r["name"] + ": " + ", ".join(f"{m['bpp']:.4f} bpp -> {100 * m['top1']:.2f}%" for m in r["rungs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
