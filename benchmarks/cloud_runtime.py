"""The cloud's two runtimes side by side (issue 25, item 2): PyTorch (``CloudDecoder`` on the bundle) against ONNX
Runtime (``OnnxCloudDecoder`` on the bundle's cloud package), same bundle, same frames, same load, one run.

1. Answers: every pre-encoded frame (every sample image at every rung) decoded by both runtimes in process: top-1
   equal on all of them, the largest difference of the top-k probabilities, and the per-request decode and tail
   times (medians; the two runtimes interleaved request by request).
2. Load: two servers in this process, one per runtime (same settings: tail batching, ``--threads`` intra-op threads
   each), driven in turn by N concurrent gRPC clients from a separate process (``service_load.py``'s client worker:
   pre-encoded frames, every rung in turn) for ``--duration`` seconds; ``--rounds`` rounds, the order of the runtimes
   alternating from round to round, so that a load the machine carries besides (training runs) falls on both alike.
   Reported: per runtime the median over rounds of throughput, p50 and p99 latency; the median of the per-round
   throughput ratios ONNX Runtime / PyTorch (goal >= 2x); errors (goal 0).

    python benchmarks/cloud_runtime.py                       # the embedded shallow ladder (block1), sample images
    python benchmarks/cloud_runtime.py --bundle DIR --package CLOUD_DIR --clients 1,8 --rounds 5 --json out.json
    python benchmarks/cloud_runtime.py --answers-only --bundle shared/assets/bundles/efficientnet_lite0-block14-vr

A variable-rate bundle's frames are every image at its coarsest, middle and finest quality level.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT / "shared" / "assets" / "samples"


def _service_load():
    spec = importlib.util.spec_from_file_location("service_load", ROOT / "benchmarks" / "service_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def answers(frames: List[bytes], ref, onnx) -> Dict:
    """Both runtimes on every frame, interleaved: top-1 agreement, probability differences, stage times."""
    same, worst, times = 0, 0.0, {"torch": {"decode": [], "tail": []}, "onnx": {"decode": [], "tail": []}}
    for i, data in enumerate(frames * 2):
        order = (("torch", ref), ("onnx", onnx)) if i % 2 == 0 else (("onnx", onnx), ("torch", ref))
        got = {}
        for name, dec in order:
            got[name] = p = dec.decode(data, topk=5)
            for k in ("decode", "tail"):
                times[name][k].append(p.timings_ms[k])
        if i < len(frames):
            same += got["torch"].label == got["onnx"].label
            worst = max(worst, max(abs(a[2] - b[2]) for a, b in zip(got["torch"].topk, got["onnx"].topk)))
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    return {"frames": len(frames), "top1_equal": same, "max_prob_diff": worst, "median_ms": med}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded shallow ladder)")
    p.add_argument("--package", default=None, help="its cloud package (default: exported into a temporary folder)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--images", default=None, help="images to encode (default: the embedded samples)")
    p.add_argument("--max-images", type=int, default=6)
    p.add_argument("--clients", default="1,8", help="concurrent clients per load run (default 1,8)")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per load run (default 6)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of both runtimes, order alternating (default 3)")
    p.add_argument("--batch-max-size", type=int, default=8)
    p.add_argument("--batch-max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each runtime (default 1, as "
                                                          "service_load.py)")
    p.add_argument("--answers-only", action="store_true", help="part 1 only (no servers, no load)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    os.environ["SPLITINFER_CLOUD_THREADS"] = str(args.threads)
    import torch

    from cloud_server.decoder import CloudDecoder
    from cloud_server.onnx_runtime import OnnxCloudDecoder
    from cloud_server.repository import RUNTIME_ENV
    from cloud_server.server import SplitInferServer
    from cloud_server.settings import BundleSpec, Settings
    from shared.bundle import resolve_bundle
    from shared.cloud_export import export_cloud
    from shared.data import scan_images
    from shared.encoder import EdgeEncoder
    from shared.models import load_split_model

    torch.set_num_threads(args.threads)
    load = _service_load()
    bundle = resolve_bundle(args.bundle)
    model = load_split_model(bundle.model, bundle.split, args.weights)
    tmp = tempfile.TemporaryDirectory()
    package = Path(args.package) if args.package else export_cloud(bundle, Path(tmp.name) / "cloud", model=model)
    enc = EdgeEncoder(bundle, model=model)
    items = scan_images(args.images or SAMPLES, labels=False)[: args.max_images]
    levels = bundle.scheme.levels
    if levels:  # one network: rung 0 at levels across its range
        lo, hi = levels
        frames = {0: [enc.encode(path, level=q).data for q in (lo, (lo + hi) // 2, hi) for path, _ in items]}
    else:
        frames = {r.index: [enc.encode(path, rung=r.index).data for path, _ in items] for r in bundle.rungs}
    flat = [d for r in sorted(frames) for d in frames[r]]
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    results: Dict = {"setup": {"bundle": bundle.bundle_id, "model": f"{bundle.model}/{bundle.split}",
                               "rungs": len(bundle.rungs), "images": len(items), "threads": args.threads,
                               "cpus": os.cpu_count(), "python": platform.python_version(),
                               "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                               "clients": clients, "duration_s": args.duration, "rounds": args.rounds,
                               "batch_max_size": args.batch_max_size, "loadavg_start": os.getloadavg()}}
    print(f"bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}), {len(items)} images x "
          f"{'3 levels' if levels else f'{len(frames)} rungs'}, "
          f"{args.threads} intra-op thread(s) per runtime, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start")

    # 1. answers and per-request stage times, in process
    ref = CloudDecoder(bundle, model=model, preload=True)
    onnx = OnnxCloudDecoder(package, preload=True)
    results["answers"] = a = answers(flat, ref, onnx)
    m = a["median_ms"]
    print(f"\nanswers: top-1 equal on {a['top1_equal']}/{a['frames']} frames, largest top-5 probability difference "
          f"{a['max_prob_diff']:.1e}")
    print(f"per request (median, in process): PyTorch decode {m['torch']['decode']:.2f} ms + tail "
          f"{m['torch']['tail']:.2f} ms; ONNX Runtime decode {m['onnx']['decode']:.2f} ms + tail {m['onnx']['tail']:.2f} ms")
    del ref, onnx
    if args.answers_only:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        tmp.cleanup()
        return 0

    # 2. load: one server per runtime, driven in turn
    base = dict(weights=args.weights, http_port=0, grpc_port=0, enable_rest=False, preload=True,
                grpc_workers=max(clients) + 4, max_concurrent_requests=1024, log_level="WARNING",
                batch_max_size=args.batch_max_size, batch_max_wait_ms=args.batch_max_wait_ms)
    servers = {}
    for name, path in (("torch", bundle.root), ("onnx", package)):
        os.environ[RUNTIME_ENV] = name
        servers[name] = SplitInferServer(Settings(bundles=[BundleSpec(path=Path(path), name="bench")], **base))
        servers[name].start()
    os.environ.pop(RUNTIME_ENV, None)
    runs: List[Dict] = []
    try:
        with tempfile.TemporaryDirectory() as t:
            frames_file = str(Path(t) / "frames.json")
            Path(frames_file).write_text(json.dumps({r: [base64.b64encode(d).decode() for d in v]
                                                     for r, v in frames.items()}))
            print(f"\n{'round':>5} {'runtime':<8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
            for rnd in range(args.rounds):
                order = ("torch", "onnx") if rnd % 2 == 0 else ("onnx", "torch")
                for n in clients:
                    for name in order:
                        r = load.run_clients(servers[name].grpc_port, "bench", n, args.duration, frames_file,
                                             "alternate")
                        r.update(runtime=name, round=rnd, loadavg=os.getloadavg()[0])
                        runs.append(r)
                        print(f"{rnd:>5} {name:<8} {n:>7} {r['throughput_rps']:>8.1f} {r['p50_ms']:>8.2f} "
                              f"{r['p99_ms']:>8.2f} {sum(r['errors'].values()):>7}")
    finally:
        for s in servers.values():
            s.stop(grace=2.0)
    results["load"] = runs
    summary = {}
    print(f"\n{'clients':>7} {'runtime':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   (medians over {args.rounds} rounds)")
    for n in clients:
        per = {name: [r for r in runs if r["runtime"] == name and r["clients"] == n] for name in ("torch", "onnx")}
        med = {name: {k: statistics.median(r[k] for r in rs) for k in ("throughput_rps", "p50_ms", "p99_ms")}
               for name, rs in per.items()}
        ratios = [o["throughput_rps"] / t["throughput_rps"] for o, t in zip(per["onnx"], per["torch"])]
        summary[str(n)] = {**med, "ratios": ratios, "ratio_median": statistics.median(ratios)}
        for name in ("torch", "onnx"):
            print(f"{n:>7} {name:<8} {med[name]['throughput_rps']:>8.1f} {med[name]['p50_ms']:>8.2f} "
                  f"{med[name]['p99_ms']:>8.2f}")
        print(f"{n:>7} ONNX Runtime / PyTorch throughput: x{statistics.median(ratios):.2f} (rounds: "
              f"{', '.join(f'x{x:.2f}' for x in ratios)}; goal >= 2x: "
              f"{'met' if statistics.median(ratios) >= 2 else 'NOT met'})")
    results["summary"] = summary
    errors = sum(sum(r["errors"].values()) for r in runs)
    results["errors"] = errors
    results["setup"]["loadavg_end"] = os.getloadavg()
    print(f"errors in all load runs: {errors} (goal: 0); load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
