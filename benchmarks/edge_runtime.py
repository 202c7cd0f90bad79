"""The torch-free edge (ONNX Runtime + numpy) against the PyTorch edge, side by side, measured in one run.

For each bundle (default: the embedded ones, both ladders and the variable-rate bundle), on the same images:

- per-frame edge time, batch 1, from the preprocessed image to the message (head + codec), medians of
  interleaved repeats, each runtime at 1 thread (and the ONNX runtime at every ``--threads`` value), the ONNX
  edge with each ``--edge-paths`` pair of rANS coder and integer h_s (default: both compiled ``c/c``, the compiled
  coder with the numpy h_s ``c/numpy``, and neither compiled ``python/numpy``), at ``--rung`` of a ladder, at
  ``--levels`` of a variable-rate bundle (default: its lowest and highest);
- the edge overhead in each runtime: head + codec over head alone;
- the rANS coder alone on the payloads the edge writes for those images: ns per symbol to encode and to decode,
  compiled, Python and CompressAI's C++; and ms per frame of the codec's other stages (rung encoder, integer h_s
  compiled and numpy);
- agreement: messages byte-identical, cloud decodes with a checksum failure (must be 0), top-1 of the cloud's
  answers equal between the two edges, mean bpp of each;
- process start to first frame encoded, and peak RSS, of a fresh ``python`` that imports the edge and encodes
  one image (each runtime; the child reports its own peak RSS, VmHWM);
- installed size of each edge's dependencies: the distributions of ``requirements-edge.txt`` (ONNX edge) and of
  the PyTorch edge's requirement set (``git show REV:requirements-edge.txt``), as installed in ``--venv``;
- with ``--arm64``: does every pin of requirements-edge.txt resolve to a Linux arm64 wheel (``pip download``).

    python benchmarks/edge_runtime.py                       # both embedded ladders, the sample images
    python benchmarks/edge_runtime.py --images ../shared/data/imagenet_val --max-images 200 --arm64

The cloud side (decode + tail) runs in this process with PyTorch: it is the judge, not a contestant.
"""

from __future__ import annotations

import argparse
import json
import os

# numpy's BLAS (the integer h_s's sums) at 1 thread like everything else here: on a busy 2-core machine its
# worker threads wait for cores (measured under load at block1: h_s 32 ms per frame with its default threads, 12 ms
# with one)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT / "shared" / "assets" / "samples"
TORCH_EDGE_REV = "8eafb8c"  # the last commit whose edge ran PyTorch (its requirements-edge.txt)
# the ONNX edge's paths timed: (rANS coder, integer h_s), each compiled (ranscoder.c, hyperdec.c) or not
EDGE_PATHS = "c/c,c/numpy,python/numpy"
GOALS = {"image_mb": 300, "deps_mb": 250, "start_s": 1.0, "rss_mb": 150, "frame_ratio": 0.8, "overhead": 1.15}


# ------------------------------------------------------------------------------------------------ timings
def _median_ms(fns: Dict[str, callable], inputs: Sequence, repeats: int, warmup: int) -> Dict[str, float]:
    """Median ms of each function, and its minimum as ``"min " + name`` (on a loaded machine the least preempted
    run: closest to what an idle one gives); repeat ``i`` runs every function in turn on input ``i`` (interleaved)."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        x = inputs[i % len(inputs)]
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(x)
            if i >= warmup:
                times[k].append(1e3 * (time.perf_counter() - t))
    return {**{k: statistics.median(v) for k, v in times.items()}, **{f"min {k}": min(v) for k, v in times.items()}}


def frame_times(package, torch_encoder, images: Sequence[Path], point: int, threads: Sequence[int], repeats: int,
                warmup: int, variable: bool = False, paths: Sequence[str] = ("c/c",)) -> Dict[str, float]:
    """Median ms per frame of each edge at one rung (a ladder) or quality level (``variable``); the ONNX edge on
    each path (``onnx{t} head+codec {coder}/{h_s}``: ``c`` compiled, ``python`` / ``numpy`` not)."""
    import torch

    from edge_client import OnnxEdgeEncoder
    from shared.codec import integer_numpy, rans

    torch.set_num_threads(1)
    onnx = {t: OnnxEdgeEncoder(package, threads=t) for t in threads}
    first = onnx[threads[0]]
    inputs = [(first.preprocess(p), torch_encoder.preprocess(p)) for p in images]
    hw = tuple(inputs[0][1].shape[-2:])
    where = dict(level=point) if variable else dict(rung=point)

    def torch_full(x):
        with torch.no_grad():
            torch_encoder.codec.encode(torch_encoder.head(x[1]), hw, **where)

    def torch_head(x):
        with torch.no_grad():
            torch_encoder.head(x[1])

    def onnx_full(e, path):
        coder, h_s = path.split("/")

        def run(x):
            with rans.using(coder), integer_numpy.using(h_s):
                if variable:
                    e.encode_variable(x[0], level=point)
                else:
                    e.encode_array(x[0], point)
        return run

    fns = {"torch head": torch_head, "torch head+codec": torch_full}
    for t, enc in onnx.items():
        fns[f"onnx{t} head"] = (lambda e: lambda x: e.features(x[0]))(enc)
        for path in paths:
            fns[f"onnx{t} head+codec {path}"] = onnx_full(enc, path)
    return _median_ms(fns, inputs, repeats, warmup)


# ------------------------------------------------------------------------------------------- the coder alone
class _Recorder:
    """A rANS "implementation" that keeps what the edge codes (symbols, indexes, tables) and lets the compiled
    coder code it: the real payloads of real images, for the per-symbol timings."""

    name = "record"

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def encode_with_indexes(self, symbols, indexes, tables):
        self.calls.append((np.array(symbols, dtype=np.int64), np.array(indexes, dtype=np.int64), tables))
        return self.inner.encode_with_indexes(symbols, indexes, tables)


def coder_times(package, images: Sequence[Path], point: int, repeats: int, variable: bool = False) -> Dict:
    """ns per symbol of each rANS coder on every payload the edge codes for ``images`` (one frame = all its
    payloads; medians over ``repeats`` passes), CompressAI's C++ included (given Python lists, its API, with the
    tables converted once as ``compressai_adapter`` does), and ms per frame of the edge's codec stages."""
    from compressai.ans import RansDecoder, RansEncoder

    from edge_client import OnnxEdgeEncoder
    from shared.codec import integer_numpy, rans

    enc = OnnxEdgeEncoder(package, threads=1)
    rec = _Recorder(rans.IMPLEMENTATIONS["c"])
    rans.IMPLEMENTATIONS["record"] = rec
    frames = []
    try:
        with rans.using("record"):
            for p in images:
                x = enc.preprocess(p)
                rec.calls = []
                if variable:
                    enc.encode_variable(x, level=point)
                else:
                    enc.encode_array(x, point)
                frames.append(rec.calls)
    finally:
        del rans.IMPLEMENTATIONS["record"]
    n_sym = statistics.median(sum(s.size for s, _, _ in f) for f in frames)
    lists = {}
    for f in frames:
        for s, i, t in f:
            if id(t) not in lists:
                lists[id(t)] = (t.cdf.tolist(), t.lengths.tolist(), t.offsets.tolist())
    payloads = [[rans.IMPLEMENTATIONS["c"].encode_with_indexes(s, i, t) for s, i, t in f] for f in frames]

    def per_frame(fn) -> float:
        times = []
        for _ in range(repeats):
            for k, f in enumerate(frames):
                t0 = time.perf_counter()
                fn(k, f)
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    out: Dict = {"symbols_per_frame": n_sym}
    for name, c in rans.IMPLEMENTATIONS.items():
        out[f"encode {name}"] = per_frame(lambda k, f: [c.encode_with_indexes(s, i, t) for s, i, t in f])
        out[f"decode {name}"] = per_frame(lambda k, f: [c.decode_with_indexes(b, i, t)
                                                        for b, (s, i, t) in zip(payloads[k], f)])
    py = [[(s.ravel().tolist(), i.ravel().tolist(), lists[id(t)]) for s, i, t in f] for f in frames]
    out["encode compressai"] = per_frame(lambda k, f: [RansEncoder().encode_with_indexes(s, i, *tl)
                                                       for s, i, tl in py[k]])
    out["decode compressai"] = per_frame(lambda k, f: [RansDecoder().decode_with_indexes(b, i, *tl)
                                                       for b, (s, i, tl) in zip(payloads[k], py[k])])
    ns = {k: 1e9 * v / n_sym for k, v in out.items() if k != "symbols_per_frame"}
    # the codec's other stages, per frame: the rung's ONNX encoder and (hyperprior rungs) the integer h_s
    rung = enc.rung(0 if variable else point)
    feats = [enc.features(enc.preprocess(p)) for p in images]
    stages = {"rung encoder (ONNX)": per_frame(lambda k, f: rung.session.run(None, {"feature": feats[k]}))}
    if rung.kind in ("hyperprior", "vr-hyperprior"):
        side = [rung.session.run(None, {"feature": x}) for x in feats]
        z_syms = [np.rint(z - rung.z_medians).astype(np.int64) for _, z in side]
        for name, h_s in integer_numpy.IMPLEMENTATIONS.items():
            stages[f"integer h_s ({name})"] = per_frame(lambda k, f: h_s(
                rung.h_s, z_syms[k], rung.spec["levels"], rung.spec["means"], tuple(side[k][0].shape[-2:])))
    return {"symbols_per_frame": n_sym, "ns_per_symbol": ns, "stage_ms": {k: 1e3 * v for k, v in stages.items()}}


# ------------------------------------------------------------------------------------ fresh processes
# the child's own peak RSS: VmHWM belongs to the exec'd process (ru_maxrss would carry the forking parent's peak)
_HWM = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
_START = {
    "onnx": ("import time; t0 = time.perf_counter()\n"
             "from edge_client import OnnxEdgeEncoder\n"
             "f = OnnxEdgeEncoder({pkg!r}).encode({img!r}, rung=0)\n"
             + _HWM),
    "torch": ("import torch; torch.set_num_threads(1)\n"
              "from edge_client import EdgeEncoder\n"
              "f = EdgeEncoder({bundle!r}, weights={weights!r}).encode({img!r}, rung=0)\n"
              + _HWM),
}


def start_to_first_frame(kind: str, repeats: int, **kw) -> Dict[str, float]:
    """Wall time from process start to the first frame's bytes (median of ``repeats`` starts; the page cache is
    warm after the first) and the child's peak RSS (max over the starts, from its /proc VmHWM)."""
    code = _START[kind].format(**kw)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    walls, rss = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise RuntimeError(f"{kind} edge process failed: {out.stderr[-2000:]}")
        rss.append(int(out.stdout.split()[-1]) / 1024)  # VmHWM is in kB
    return {"start_s": statistics.median(walls), "rss_mb": max(rss)}


# --------------------------------------------------------------------------------------------- sizes
def _pins(text: str) -> List[str]:
    return [ln.split("==")[0].strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def installed_mb(names: Sequence[str], venv: Path) -> Dict:
    """Bytes on disk of the named distributions' files in ``venv`` (missing ones listed)."""
    from importlib import metadata

    site = next((venv / "lib").glob("python3*/site-packages"))
    dists = {d.metadata["Name"].lower().replace("_", "-"): d for d in metadata.distributions(path=[str(site)])}
    total, missing = 0, []
    for n in names:
        d = dists.get(n.lower().replace("_", "-"))
        if d is None:
            missing.append(n)
            continue
        for f in d.files or []:
            p = Path(d.locate_file(f))
            if p.is_file():
                total += p.stat().st_size
    return {"mb": total / 1e6, "missing": missing, "n": len(names)}


def arm64_check(req: Path) -> Dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
               "--implementation", "cp", "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
               "-d", d, "-q", "-r", str(req)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = sorted(p.name for p in Path(d).glob("*.whl"))
    return {"ok": out.returncode == 0, "wheels": wheels, "error": out.stderr[-1500:] if out.returncode else ""}


# ----------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", nargs="*", default=None, help="bundle folders (default: both embedded ladders)")
    ap.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    ap.add_argument("--images", default=str(SAMPLES), help="image folder (default: the bundled samples)")
    ap.add_argument("--max-images", type=int, default=0, help="at most this many images for agreement (0: all)")
    ap.add_argument("--rung", type=int, default=0, help="rung timed per frame (default 0)")
    ap.add_argument("--levels", default=None,
                    help="quality levels timed per frame for a variable-rate bundle (default: its lowest and highest)")
    ap.add_argument("--threads", default="1,2", help="ONNX Runtime thread counts to time (default 1,2)")
    ap.add_argument("--edge-paths", default=EDGE_PATHS,
                    help=f"ONNX edge paths timed, rANS coder/integer h_s, c or python / c or numpy (default {EDGE_PATHS})")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per stage (default 30)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--starts", type=int, default=3, help="fresh processes per runtime for start time / RSS")
    ap.add_argument("--venv", default=str(Path(sys.executable).parents[1]), help="venv whose installed sizes count")
    ap.add_argument("--arm64", action="store_true", help="check that requirements-edge.txt resolves for linux/arm64")
    ap.add_argument("--no-agreement", action="store_true", help="skip the agreement pass")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args(argv)

    import torch

    from cloud_server.decoder import CloudDecoder
    from edge_client import EdgeEncoder, OnnxEdgeEncoder, find_package
    from shared.bundle import embedded_bundle_paths, load_bundle
    from shared.data import scan_images, spread
    from shared.edge_agreement import compare_edges

    from shared.codec import integer_numpy, rans

    torch.set_num_threads(1)
    threads = [int(t) for t in args.threads.split(",")]
    paths_asked = [p.strip() for p in args.edge_paths.split(",") if p.strip()]
    for p in paths_asked:
        if p.count("/") != 1 or p.split("/")[0] not in ("c", "python") or p.split("/")[1] not in ("c", "numpy"):
            ap.error(f"--edge-paths: {p!r} is not rANS coder/h_s (c or python / c or numpy)")
    # a compiled part that is not built here is left out (the header says why)
    edge_paths = [p for p in paths_asked if p.split("/")[0] in rans.IMPLEMENTATIONS
                  and p.split("/")[1] in integer_numpy.IMPLEMENTATIONS]
    coders = [c for c in ("c", "python") if c in rans.IMPLEMENTATIONS]
    paths = [Path(b) for b in args.bundles] if args.bundles else embedded_bundle_paths()
    images = [p for p, _ in spread(scan_images(args.images, labels=False), args.max_images)]
    print(f"# edge runtime benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}; {len(images)} images from {args.images}; "
          f"load average {os.getloadavg()[0]:.1f}; rANS coders {', '.join(coders)}"
          + (f" (compiled: {rans.COMPILED_ERROR})" if rans.COMPILED_ERROR else "")
          + f"; integer h_s {', '.join(integer_numpy.IMPLEMENTATIONS)}"
          + (f" (compiled: {integer_numpy.COMPILED_ERROR})" if integer_numpy.COMPILED_ERROR else "")
          + f"; ONNX edge paths (rANS/h_s) {', '.join(edge_paths)}")
    report: Dict = {"images": len(images), "ladders": {}}
    for path in paths:
        bundle = load_bundle(path)
        pkg = find_package(bundle, weights=args.weights)
        # a variable-rate bundle shares its model and split with a ladder: its own key in the report
        name = f"{bundle.model}/{bundle.split}" + (" variable-rate" if bundle.config.levels is not None else "")
        torch_enc = EdgeEncoder(bundle, weights=args.weights)
        levels = bundle.config.levels
        if levels is None:
            points, what = [args.rung], "rung"
        else:  # a variable-rate bundle: its coarsest and finest quality levels unless --levels says
            what = "level"
            points = [int(q) for q in args.levels.split(",")] if args.levels else [levels[0], levels[1]]
        row: Dict = {"bundle_id": bundle.bundle_id, "package_id": pkg.package_id, "frame_ms": {}, "coder": {}}
        timed = images[: max(1, min(len(images), 8))]
        for point in points:
            ft = frame_times(pkg, torch_enc, timed, point, threads, args.repeats, args.warmup, levels is not None,
                             edge_paths)
            row["frame_ms"][point] = ft
            print(f"\n## {name} (bundle {bundle.bundle_id}, edge package {pkg.package_id}), {what} {point}, batch 1")
            cols = [("PyTorch edge", "torch head", "torch head+codec")]
            cols += [(f"ONNX {t}thr {p}", f"onnx{t} head", f"onnx{t} head+codec {p}") for t in threads for p in edge_paths]
            print(f"{'':34}" + "".join(f"{c[0]:>23}" for c in cols))
            print(f"{'head ms':34}" + "".join(f"{ft[h]:>23.2f}" for _, h, _ in cols))
            print(f"{'head + codec ms (per frame)':34}" + "".join(f"{ft[f]:>23.2f}" for _, _, f in cols))
            print(f"{'overhead (head+codec / head)':34}" + "".join(f"{ft[f] / ft[h]:>23.2f}" for _, h, f in cols))
            print(f"{'  the same from the minimums':34}"
                  + "".join(f"{ft['min ' + f] / ft['min ' + h]:>23.2f}" for _, h, f in cols))
            print(f"{'per frame vs PyTorch edge':34}"
                  + "".join(f"{ft[f] / ft['torch head+codec']:>23.2f}" for _, _, f in cols))
            if "c" in coders:
                ct = coder_times(pkg, timed, point, args.repeats, levels is not None)
                row["coder"][point] = ct
                ns = ct["ns_per_symbol"]
                print(f"rANS, ns per symbol ({ct['symbols_per_frame']:.0f} symbols a frame, real payloads): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in ns.items()))
                print("codec stages, ms per frame: " + ", ".join(f"{k} {v:.2f}" for k, v in ct["stage_ms"].items()))
        if not args.no_agreement:
            dec = CloudDecoder(bundle, weights=args.weights)
            onnx_enc = OnnxEdgeEncoder(pkg)
            t0 = time.perf_counter()
            ag = compare_edges(bundle, images, onnx_enc, torch_enc, dec, progress=True)
            row["agreement"] = ag
            print(f"agreement over {ag['pairs']} image x rung pairs ({time.perf_counter() - t0:.0f} s): "
                  f"{ag['same_bytes']} byte-identical, {ag['crc_failures']} checksum failures, top-1 agreement "
                  f"{100 * ag['top1_agree']:.2f}%, bpp differs by at most {100 * ag['bpp_rel_diff_max']:.3f}% (rung mean)")
        st_onnx = start_to_first_frame("onnx", args.starts, pkg=str(pkg.root), img=str(images[0]))
        st_torch = start_to_first_frame("torch", args.starts, bundle=str(bundle.root), img=str(images[0]),
                                        weights=args.weights)
        row["start"] = {"onnx": st_onnx, "torch": st_torch}
        print(f"{'process start -> first frame, s':34}{st_torch['start_s']:>14.2f}{st_onnx['start_s']:>14.2f}")
        print(f"{'peak RSS of that process, MB':34}{st_torch['rss_mb']:>14.0f}{st_onnx['rss_mb']:>14.0f}")
        report["ladders"][name] = row

    venv = Path(args.venv)
    edge_pins = _pins((ROOT / "requirements-edge.txt").read_text())
    try:
        old = subprocess.run(["git", "show", f"{TORCH_EDGE_REV}:requirements-edge.txt"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        torch_pins = _pins(old)
    except (subprocess.CalledProcessError, FileNotFoundError):
        torch_pins = []
    sizes = {"onnx": installed_mb(edge_pins, venv)}
    if torch_pins:
        sizes["torch"] = installed_mb(torch_pins, venv)
    report["installed"] = sizes
    print(f"\n## installed edge dependencies (files of each requirement set's distributions in {venv})")
    for k, v in sizes.items():
        miss = f" ({len(v['missing'])} not installed here: {', '.join(v['missing'][:6])})" if v["missing"] else ""
        print(f"{'ONNX edge' if k == 'onnx' else 'PyTorch edge':14} {v['n']:>3} pins {v['mb']:>9.1f} MB{miss}")
    if args.arm64:
        a = arm64_check(ROOT / "requirements-edge.txt")
        report["arm64"] = a
        print(f"linux/arm64 wheels for every pin of requirements-edge.txt: {'yes' if a['ok'] else 'NO'} "
              f"({len(a['wheels'])} wheels){': ' + a['error'] if a['error'] else ''}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
