"""The messages an edge writes, and the cloud's answers to them, for every sample x every rung of each ladder and
a set of levels and bitrate hints of each variable-rate bundle; then the comparison of two such runs.

    python check_arm64_edge.py run --packages DIR --images DIR --server HOST:PORT > RUN.jsonl
    python check_arm64_edge.py compare X86.jsonl ARM64.jsonl [--labels labels.csv]

``run`` uses only the edge runtime (ONNX Runtime, numpy, the rANS coder; no PyTorch), so that the same file runs
in the edge image (scripts/check_arm64_edge.sh mounts it into the arm64 container) and on the build machine. Each
line is one message: its package, image and setting (``rung``, ``level`` or ``bpp``), length, SHA-256 and the
cloud's top-1 answer. ``compare`` exits 1 unless both runs hold the same messages, byte for byte, with the same
answers. Encode times are not written: under emulation they say nothing about an ARM board.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import platform
import sys
from typing import Dict, List, Tuple

LEVELS = "-4,0,4,8,12,20,28,40"  # the levels of README's variable-rate table
BITRATES = "0.05,0.1,0.2"  # hints (bpp): the edge's rate control picks the level of each message


def _floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def run(args) -> int:
    from edge_client import EdgeClient
    from shared.codec import rans

    images = sorted(p for p in glob.glob(os.path.join(args.images, "*"))
                    if p.lower().endswith((".jpeg", ".jpg", ".png")))
    packages = sorted(p for p in glob.glob(os.path.join(args.packages, "*", "")) if os.path.isfile(p + "edge.json"))
    if not images or not packages:
        print(f"no images in {args.images} or no edge packages in {args.packages}", file=sys.stderr)
        return 2
    where = {"machine": platform.machine(), "coder": rans.implementation()}
    for pkg in packages:
        with EdgeClient(args.server, bundle=pkg, timeout_s=args.timeout_s) as client:
            name = os.path.basename(os.path.normpath(pkg))
            if client.bundle.config.levels is None:
                settings = [("rung", r) for r in range(len(client.bundle.rungs))]
            else:
                lo, hi = client.bundle.config.levels
                levels = range(lo, hi + 1) if args.levels == "all" else [int(v) for v in _floats(args.levels)]
                settings = [("level", L) for L in levels] + [("bpp", b) for b in _floats(args.bitrates)]
            for image in images:
                for kind, value in settings:
                    if kind == "level":
                        frame = client.encoder.encode(image, level=value)
                        res = client.send(frame, source=os.path.basename(image))
                    else:
                        frame, hint, _ = client.encode(image, **({"rung": value} if kind == "rung" else
                                                                 {"bitrate": value}))
                        res = client.send(frame, hint, source=os.path.basename(image),
                                          expected_rung=value if kind == "rung" else None)
                    print(json.dumps({"package": name, "image": os.path.basename(image), "kind": kind,
                                      "value": value, "bytes": len(frame.data),
                                      "sha256": hashlib.sha256(frame.data).hexdigest(), "rung": frame.rung,
                                      "level": frame.level, "ok": res.ok,
                                      "top1": res.topk[0][0] if res.topk else None, **where}), flush=True)
    return 0


def _load(path: str) -> Dict[Tuple, Dict]:
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    return {(r["package"], r["image"], r["kind"], r["value"]): r for r in rows}


def compare(args) -> int:
    a, b = _load(args.reference), _load(args.other)
    labels = {}
    if args.labels:
        labels = {r["filename"]: int(r["class_index"]) for r in csv.DictReader(open(args.labels))}
    problems = []
    if set(a) != set(b):
        problems.append(f"different settings: {len(set(a) - set(b))} only in {args.reference}, "
                        f"{len(set(b) - set(a))} only in {args.other}")
    same = [k for k in sorted(set(a) & set(b), key=str)]
    for k in same:
        ra, rb = a[k], b[k]
        if (ra["bytes"], ra["sha256"]) != (rb["bytes"], rb["sha256"]):
            problems.append(f"{k}: {ra['bytes']} B {ra['sha256'][:12]} vs {rb['bytes']} B {rb['sha256'][:12]}")
        if not (ra["ok"] and rb["ok"]):
            problems.append(f"{k}: not answered ({ra['ok']}, {rb['ok']})")
        elif ra["top1"] != rb["top1"]:
            problems.append(f"{k}: top-1 {ra['top1']} vs {rb['top1']}")
    print(f"  {args.reference}: {_where(a)}; {args.other}: {_where(b)}")
    for pkg in sorted({k[0] for k in same}):
        rows = [b[k] for k in same if k[0] == pkg]
        kinds = sorted({(r["kind"], r["value"]) for r in rows}, key=lambda kv: (kv[0], kv[1]))
        identical = sum(a[k]["sha256"] == b[k]["sha256"] for k in same if k[0] == pkg)
        line = (f"  {pkg}: {len({r['image'] for r in rows})} images x {len(kinds)} settings "
                f"({', '.join(f'{kd} {v:g}' for kd, v in kinds)}): {identical}/{len(rows)} messages byte-identical, "
                f"{sum(r['bytes'] for r in rows):,} bytes in all")
        if labels:
            known = [r for r in rows if r["image"] in labels]
            hits = sum(r["top1"] == labels[r["image"]] for r in known)
            line += f"; top-1 correct {hits}/{len(known)}"
        print(line)
    for p in problems[:20]:
        print("  MISMATCH", p)
    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        return 1
    print(f"OK: {len(same)} messages byte-identical, every one answered alike")
    return 0


def _where(rows: Dict) -> str:
    seen = sorted({(r["machine"], r["coder"]) for r in rows.values()})
    return ", ".join(f"{m} (rANS coder: {c})" for m, c in seen)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="encode and send; one JSON line per message on stdout")
    r.add_argument("--packages", required=True, help="folder of edge packages (splitinfer export-edge)")
    r.add_argument("--images", required=True, help="folder of images")
    r.add_argument("--server", required=True, help="HOST:PORT of the cloud's gRPC port")
    r.add_argument("--levels", default=LEVELS, help=f"variable-rate levels, comma-separated, or 'all' ({LEVELS})")
    r.add_argument("--bitrates", default=BITRATES, help=f"variable-rate hints in bpp ({BITRATES})")
    r.add_argument("--timeout-s", type=float, default=120.0, help="per request (an emulated edge is slow)")
    c = sub.add_parser("compare", help="two runs: the same messages and answers?")
    c.add_argument("reference")
    c.add_argument("other")
    c.add_argument("--labels", help="labels.csv (filename,class_index) for the top-1 count")
    args = ap.parse_args(argv)
    return run(args) if args.cmd == "run" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
