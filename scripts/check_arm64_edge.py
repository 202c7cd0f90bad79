"""The messages an edge writes, and the cloud's answers to them, for every sample x every rung of each ladder and
a set of levels and bitrate hints of each variable-rate bundle; then the comparison of two such runs.

    python check_arm64_edge.py run --packages DIR --images DIR --server HOST:PORT > RUN.jsonl
    python check_arm64_edge.py compare X86.jsonl ARM64.jsonl [--labels labels.csv] [--packages DIR] [--answers-only]
    python check_arm64_edge.py dump --package PKG --image IMG --level 12 --out X.npz   # on each machine, then
    python check_arm64_edge.py latents X86.npz ARM64.npz

``run`` uses only the edge runtime (ONNX Runtime, numpy, the rANS coder; no PyTorch), so that the same file runs
in the edge image (scripts/check_arm64_edge.sh mounts it into the arm64 container) and on the build machine. Each
line is one message: its package, image and setting (``rung``, ``level`` or ``bpp``), length, SHA-256 and the
cloud's top-1 answer (and the message itself, base64). ``compare`` sorts each message: identical, differing in N
symbols but answered alike (both decoded with ``--packages``' tables and integer h_s), or wrong (not answered, or
another top-1); it exits 1 on a wrong one, and on a differing one unless ``--answers-only``. Encode times are not written: under emulation they say nothing about an ARM board.
"""

from __future__ import annotations

import argparse
import base64
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
    from shared.codec import integer_numpy, rans

    images = sorted(p for p in glob.glob(os.path.join(args.images, "*"))
                    if p.lower().endswith((".jpeg", ".jpg", ".png")))
    packages = sorted(p for p in glob.glob(os.path.join(args.packages, "*", "")) if os.path.isfile(p + "edge.json"))
    if not images or not packages:
        print(f"no images in {args.images} or no edge packages in {args.packages}", file=sys.stderr)
        return 2
    where = {"machine": platform.machine(), "coder": rans.implementation(), "hs": integer_numpy.implementation()}
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
                                      "top1": res.topk[0][0] if res.topk else None, **where,
                                      "data": base64.b64encode(frame.data).decode()}), flush=True)
    return 0


def _load(path: str) -> Dict[Tuple, Dict]:
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    return {(r["package"], r["image"], r["kind"], r["value"]): r for r in rows}


def _symbols(encoders: Dict, package: str, data: bytes):
    """(y symbols, z symbols or None) of one message, entropy-decoded with the edge package's own tables and its
    integer hyper-decoder (exact on every machine): what the cloud decodes, without the cloud."""
    import numpy as np

    from shared.bitstream import unpack
    from shared.codec.integer_numpy import int_hyper_synthesis
    from shared.codec.rans import decode_with_indexes

    hdr, payloads = unpack(data)
    rung = encoders[package].rung(hdr.rung)

    def by_channel(shape):
        return np.ascontiguousarray(np.broadcast_to(np.arange(shape[1]).reshape(1, -1, 1, 1), shape))

    if rung.kind in ("hyperprior", "vr-hyperprior"):
        y_str, z_str = payloads
        z_sym = decode_with_indexes(z_str, by_channel((1, rung.z_medians.shape[1], *hdr.side_hw)), rung.z_tables)
        idx, _ = int_hyper_synthesis(rung.h_s, z_sym, rung.spec["levels"], rung.spec["means"], tuple(hdr.y_hw))
        if rung.variable:
            idx = np.clip(idx + int(hdr.level), 0, len(rung.y_tables.cdf) - 1)
        return decode_with_indexes(y_str, idx, rung.y_tables), z_sym
    if rung.kind == "factorized":
        return decode_with_indexes(payloads[0], by_channel((1, rung.y_medians.shape[1], *hdr.y_hw)),
                                   rung.y_tables), None
    return None, None  # static rungs: not compared symbol by symbol


def _differs(encoders: Dict, k: Tuple, ra: Dict, rb: Dict) -> str:
    """How two different messages of one setting differ, symbol by symbol (needs both messages and the packages)."""
    if not encoders or "data" not in ra or "data" not in rb or k[0] not in encoders:
        return "differs (symbols not compared: no message bytes or no --packages)"
    try:
        (ya, za), (yb, zb) = (_symbols(encoders, k[0], base64.b64decode(r["data"])) for r in (ra, rb))
    except Exception as e:  # noqa: BLE001 - a message the package cannot decode is a finding, not a crash
        return f"differs (cannot decode: {type(e).__name__}: {e})"
    if ya is None:
        return "differs (a static rung: symbols not compared)"
    if ya.shape != yb.shape:
        return f"differs in shape: y {ya.shape} vs {yb.shape}"
    ny = int((ya != yb).sum())
    nz = 0 if za is None else int((za != zb).sum())
    dmax = int(abs(ya.astype(int) - yb.astype(int)).max())
    return f"differs in {ny} of {ya.size} y symbols (by at most {dmax}) and {nz} z symbols"


def compare(args) -> int:
    a, b = _load(args.reference), _load(args.other)
    labels = {}
    if args.labels:
        labels = {r["filename"]: int(r["class_index"]) for r in csv.DictReader(open(args.labels))}
    encoders = {}
    if args.packages:
        from edge_client import OnnxEdgeEncoder

        for pkg in sorted(glob.glob(os.path.join(args.packages, "*", ""))):
            if os.path.isfile(pkg + "edge.json"):
                encoders[os.path.basename(os.path.normpath(pkg))] = OnnxEdgeEncoder(pkg, threads=1)
    problems, differing = [], []
    if set(a) != set(b):
        problems.append(f"different settings: {len(set(a) - set(b))} only in {args.reference}, "
                        f"{len(set(b) - set(a))} only in {args.other}")
    same = [k for k in sorted(set(a) & set(b), key=str)]
    # each message: identical, differs in N symbols but answered alike, or wrong (not answered, another answer)
    verdict = {}
    for k in same:
        ra, rb = a[k], b[k]
        identical = (ra["bytes"], ra["sha256"]) == (rb["bytes"], rb["sha256"])
        if not (ra["ok"] and rb["ok"]):
            verdict[k] = "wrong"
            problems.append(f"{k}: not answered ({ra['ok']}, {rb['ok']})")
        elif ra["top1"] != rb["top1"]:
            verdict[k] = "wrong"
            problems.append(f"{k}: top-1 {ra['top1']} vs {rb['top1']}")
        else:
            verdict[k] = "identical" if identical else "same answer"
        if not identical:
            how = _differs(encoders, k, ra, rb)
            differing.append(f"{k}: {ra['bytes']} B {ra['sha256'][:12]} vs {rb['bytes']} B {rb['sha256'][:12]}, "
                             f"level {ra.get('level')} vs {rb.get('level')}: {how}; "
                             f"top-1 {ra['top1']} vs {rb['top1']} ({verdict[k]})")
    print(f"  {args.reference}: {_where(a)}; {args.other}: {_where(b)}")
    for pkg in sorted({k[0] for k in same}):
        keys = [k for k in same if k[0] == pkg]
        rows = [b[k] for k in keys]
        kinds = sorted({(r["kind"], r["value"]) for r in rows}, key=lambda kv: (kv[0], kv[1]))
        identical = sum(verdict[k] == "identical" for k in keys)
        line = (f"  {pkg}: {len({r['image'] for r in rows})} images x {len(kinds)} settings "
                f"({', '.join(f'{kd} {v:g}' for kd, v in kinds)}): {identical}/{len(rows)} messages byte-identical, "
                f"{sum(verdict[k] == 'same answer' for k in keys)} differ but are answered alike, "
                f"{sum(verdict[k] == 'wrong' for k in keys)} wrong; {sum(r['bytes'] for r in rows):,} bytes in all")
        if labels:
            known = [r for r in rows if r["image"] in labels]
            hits = sum(r["top1"] == labels[r["image"]] for r in known)
            line += f"; top-1 correct {hits}/{len(known)}"
        print(line)
    for d in differing[:20]:
        print("  DIFFERS", d)
    for p in problems[:20]:
        print("  MISMATCH", p)
    n_same = sum(v == "identical" for v in verdict.values())
    n_diff = sum(v == "same answer" for v in verdict.values())
    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        return 1
    if n_diff and not args.answers_only:
        print(f"FAILED: {n_diff} of {len(same)} messages not byte-identical (each answered alike; "
              f"--answers-only accepts that)")
        return 1
    print(f"OK: {n_same} messages byte-identical" + (f", {n_diff} differ but are answered alike" if n_diff else "")
          + ", every one answered alike")
    return 0


def dump(args) -> int:
    """One image's float tensors on the way to a variable-rate message (or a ladder rung's), for ``latents``."""
    import numpy as np

    from edge_client import OnnxEdgeEncoder
    from shared.codec import integer_numpy

    if args.graph_opt != "all":  # an experiment: the edge's sessions at another graph optimisation level
        import onnxruntime as ort

        level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                 "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                 "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[args.graph_opt]
        base = ort.InferenceSession

        class _Session(base):
            def __init__(self, graph, sess_options=None, **kw):
                sess_options.graph_optimization_level = level
                super().__init__(graph, sess_options=sess_options, **kw)

        ort.InferenceSession = _Session
    enc = OnnxEdgeEncoder(args.package, threads=1)
    x = enc.preprocess(args.image)
    feature = enc.features(x)
    rung = enc.rung(args.rung)
    outs = rung.session.run(None, {"feature": feature})
    y, z = outs[0], (outs[1] if len(outs) > 1 else None)
    out = {"x": x, "feature": feature, "y": y, "machine": np.array(platform.machine()),
           "hs": np.array(integer_numpy.implementation())}
    if z is not None:
        z_sym, _, idx, means = rung._side(y, z)
        out.update(z=z, z_sym=z_sym, idx=idx, means=means if means is not None else np.zeros_like(y))
        if rung.variable and args.level is not None:
            coder, *_ = rung.level_coder(feature)
            out.update(step=np.float32(coder.step(args.level)), level=np.int64(args.level),
                       y_sym=coder.symbols(args.level)[None])
    np.savez(args.out, **out)
    print(f"{args.out}: {', '.join(f'{k} {np.shape(v)}' for k, v in out.items())}")
    return 0


def latents(args) -> int:
    """Where two dumps (``dump``) of one image on two machines part: each tensor's largest difference, and for
    every y symbol that differs, its value (y - means) / step on both sides and its distance to the rounding
    boundary (a half-integer)."""
    import numpy as np

    a, b = np.load(args.reference), np.load(args.other)
    print(f"  {args.reference}: {a['machine']} (h_s {a['hs']}); {args.other}: {b['machine']} (h_s {b['hs']})")
    for k in ("x", "feature", "y", "z", "z_sym", "idx", "means", "step", "y_sym"):
        if k not in a or k not in b:
            continue
        va, vb = a[k], b[k]
        if va.dtype.kind == "f":
            d = np.abs(va.astype(np.float64) - vb.astype(np.float64))
            rel = d / np.maximum(np.abs(va.astype(np.float64)), 1e-30)
            print(f"  {k:8s} {str(va.shape):22s} {int((va != vb).sum()):7d} of {va.size} elements differ; "
                  f"max |a-b| {d.max():.3g}, max relative {rel.max():.3g}")
        else:
            print(f"  {k:8s} {str(va.shape):22s} {int((va != vb).sum()):7d} of {va.size} elements differ")
    if "y_sym" in a and "y_sym" in b:
        step = np.float32(a["step"])
        # the edge's float32 arithmetic, then float64 to measure the distances without rounding them away
        ca = ((a["y"] - a["means"]) / step).astype(np.float64)
        cb = ((b["y"] - b["means"]) / np.float32(b["step"])).astype(np.float64)
        for i in np.argwhere(a["y_sym"] != b["y_sym"])[: args.show]:
            t = tuple(int(v) for v in i)
            print(f"  y symbol {t}: {int(a['y_sym'][t])} vs {int(b['y_sym'][t])}; y {a['y'][t]!r} vs {b['y'][t]!r}; "
                  f"(y - mean) / step {ca[t]!r} vs {cb[t]!r}: {abs(abs(ca[t] - np.floor(ca[t])) - 0.5):.3g} and "
                  f"{abs(abs(cb[t] - np.floor(cb[t])) - 0.5):.3g} from the half-integer boundary")
        # how close to a boundary the latents lie in general: the share within the two runs' own difference
        frac = np.abs(np.abs(ca - np.floor(ca)) - 0.5)
        gap = np.abs(ca - cb)
        for i in np.argwhere(frac < 1e-5)[: args.show]:
            t = tuple(int(v) for v in i)
            print(f"  near a boundary: {t}: (y - mean) / step {ca[t]!r} vs {cb[t]!r}, symbol {int(a['y_sym'][t])} vs "
                  f"{int(b['y_sym'][t])}")
        print(f"  elements of (y - mean) / step within 1e-6 of a half-integer: {int((frac < 1e-6).sum())} of "
              f"{frac.size}; within the two dumps' difference of it: {int((frac <= gap).sum())}; "
              f"largest |difference| {gap.max():.3g}")
    return 0


def _where(rows: Dict) -> str:
    seen = sorted({(r["machine"], r["coder"], r.get("hs", "?")) for r in rows.values()})
    return ", ".join(f"{m} (rANS coder: {c}, h_s: {h})" for m, c, h in seen)


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
    c.add_argument("--packages", help="the edge packages of both runs: differing messages are decoded with them "
                                      "and compared symbol by symbol")
    c.add_argument("--answers-only", action="store_true",
                   help="pass when messages differ but every one is answered alike (exit 1 only when wrong)")
    d = sub.add_parser("dump", help="one image's tensors on the edge (input, feature, y, z, symbols) to a .npz")
    d.add_argument("--package", required=True, help="an edge package")
    d.add_argument("--image", required=True)
    d.add_argument("--rung", type=int, default=0)
    d.add_argument("--level", type=int, help="a variable-rate level: its step and y symbols too")
    d.add_argument("--out", required=True, help="the .npz to write")
    d.add_argument("--graph-opt", choices=["all", "extended", "basic", "disable"], default="all",
                   help="ONNX Runtime's graph optimisation level (the edge runs 'all')")
    t = sub.add_parser("latents", help="two dumps of one image: where the tensors and the y symbols differ")
    t.add_argument("reference")
    t.add_argument("other")
    t.add_argument("--show", type=int, default=20, help="differing y symbols to list")
    args = ap.parse_args(argv)
    return {"run": run, "compare": compare, "dump": dump, "latents": latents}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
