"""What the service costs and what tail batching buys: one run, medians and ratios against a baseline measured
in the same run.

1. Overhead: the same pre-encoded frames through the in-process cloud pipeline (``CloudDecoder.decode``) and
   through a loopback gRPC ``Infer`` call, interleaved request by request; the p50 difference is what the
   service adds (goal: under 2 ms).
2. Load: N concurrent clients (N = 1, 8, 32 by default) for a fixed time against a local server, with tail
   batching off (``batch_max_size=1``) and on: throughput, p50 / p99 latency, errors (goal: zero).
3. Rung switching under load: every request at another rung (alternating) against a fixed rung (each rung in
   turn); throughput ratio (goal: within 5%).

The clients run in a separate process (one thread and one channel per client; they send pre-encoded frames,
so they need neither torch nor the model), the server in this one. On a small machine the client process
competes with the server for the cores: the absolute figures are a floor, the ratios are the point.

    python benchmarks/service_load.py                    # the embedded ladder on the sample images
    python benchmarks/service_load.py --bundle DIR --weights FILE --images DIR --duration 5 --json out.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT / "shared" / "assets" / "samples"


def pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


# ------------------------------------------------------------------------------------------ client worker
def client_worker(port: int, model: str, n: int, duration: float, frames_file: str, mode: str) -> Dict:
    """Runs in its own process: ``n`` threads send frames for ``duration`` seconds (``mode``: ``fixed:R`` or
    ``alternate``). Imports grpc and the stubs only."""
    import grpc

    from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

    frames = {int(r): [base64.b64decode(x) for x in v] for r, v in json.loads(Path(frames_file).read_text()).items()}
    rungs = sorted(frames)
    latencies: List[List[float]] = [[] for _ in range(n)]
    errors: Dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(n + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.SplitInferenceStub(channel)
        stub.Infer(pb.InferRequest(model=model, bitstream=frames[rungs[0]][0]), timeout=30)  # connect, warm
        start.wait()
        k = i
        while time.perf_counter() < stop_at[0]:
            rung = rungs[k % len(rungs)] if mode == "alternate" else int(mode.split(":")[1])
            data = frames[rung][k % len(frames[rung])]
            k += 1
            t0 = time.perf_counter()
            try:
                stub.Infer(pb.InferRequest(model=model, bitstream=data, expected_rung=rung), timeout=30)
                latencies[i].append(1e3 * (time.perf_counter() - t0))
            except grpc.RpcError as e:
                with lock:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
        channel.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration + 60  # until every client is connected
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = [x for per in latencies for x in per]
    return {"clients": n, "mode": mode, "seconds": elapsed, "ok": len(lat), "errors": errors,
            "throughput_rps": len(lat) / elapsed, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def run_clients(port: int, model: str, n: int, duration: float, frames_file: str, mode: str) -> Dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--client-worker", str(port), model, str(n), str(duration),
           frames_file, mode]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"client worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ benchmark
def overhead(server, model: str, frames: Dict[int, List[bytes]], decoder, requests: int) -> Dict:
    import grpc

    from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = pb_grpc.SplitInferenceStub(channel)
    flat = [d for r in sorted(frames) for d in frames[r]]
    local, remote = [], []
    for i in range(requests + 5):
        data = flat[i % len(flat)]
        t0 = time.perf_counter()
        decoder.decode(data)
        t1 = time.perf_counter()
        stub.Infer(pb.InferRequest(model=model, bitstream=data), timeout=30)
        t2 = time.perf_counter()
        if i >= 5:
            local.append(1e3 * (t1 - t0))
            remote.append(1e3 * (t2 - t1))
    channel.close()
    p50_local, p50_remote = statistics.median(local), statistics.median(remote)
    return {"requests": requests, "in_process_p50_ms": p50_local, "grpc_p50_ms": p50_remote,
            "added_p50_ms": p50_remote - p50_local, "ratio": p50_remote / p50_local, "goal_added_ms": 2.0}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--client-worker":
        port, model, n, duration, frames_file, mode = argv[1:7]
        print(json.dumps(client_worker(int(port), model, int(n), float(duration), frames_file, mode)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded ladder)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--images", default=None, help="images to encode (default: the embedded samples)")
    p.add_argument("--max-images", type=int, default=6)
    p.add_argument("--clients", default="1,8,32", help="concurrent clients per load run (default 1,8,32)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load run (default 5)")
    p.add_argument("--requests", type=int, default=200, help="sequential requests for the overhead (default 200)")
    p.add_argument("--switch-clients", type=int, default=8, help="clients in the rung-switching runs (default 8)")
    p.add_argument("--batch-max-size", type=int, default=8)
    p.add_argument("--batch-max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server (default 1)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    import torch

    from cloud_server import CloudDecoder
    from cloud_server.server import SplitInferServer
    from cloud_server.settings import BundleSpec, Settings
    from edge_client import EdgeEncoder
    from shared.bundle import resolve_bundle
    from shared.data import scan_images

    torch.set_num_threads(args.threads)
    bundle = resolve_bundle(args.bundle)
    enc = EdgeEncoder(bundle, weights=args.weights)
    items = scan_images(args.images or SAMPLES, labels=False)[: args.max_images]
    frames = {r.index: [enc.encode(path, rung=r.index).data for path, _ in items] for r in bundle.rungs}
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    base = dict(bundles=[BundleSpec(path=bundle.root, name="bench")], weights=args.weights, http_port=0, grpc_port=0,
                enable_rest=False, preload=True, grpc_workers=max(clients + [args.switch_clients]) + 4,
                max_concurrent_requests=1024, log_level="WARNING")
    results: Dict = {"setup": {"bundle": bundle.bundle_id, "model": f"{bundle.model}/{bundle.split}",
                               "rungs": len(bundle.rungs), "images": len(items), "torch_threads": args.threads,
                               "cpus": os.cpu_count(), "python": platform.python_version(),
                               "bytes_per_rung": {r: statistics.mean(len(d) for d in v) for r, v in frames.items()},
                               "duration_s": args.duration}}
    print(f"bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}), {len(items)} images, rungs "
          f"{sorted(frames)}, torch threads {args.threads}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as tmp:
        frames_file = str(Path(tmp) / "frames.json")
        Path(frames_file).write_text(json.dumps({r: [base64.b64encode(d).decode() for d in v]
                                                 for r, v in frames.items()}))
        # 1. overhead (no batching: the same work as in-process)
        with SplitInferServer(Settings(**base, batch_max_size=1)) as server:
            dec = CloudDecoder(bundle, model=server.repository.get("bench").decoder.model,
                               codec=server.repository.get("bench").codec)
            results["overhead"] = o = overhead(server, "bench", frames, dec, args.requests)
        print(f"\noverhead: in-process p50 {o['in_process_p50_ms']:.2f} ms, loopback gRPC p50 {o['grpc_p50_ms']:.2f} ms"
              f" -> added {o['added_p50_ms']:.2f} ms (goal < 2 ms: {'met' if o['added_p50_ms'] < 2 else 'NOT met'})")

        # 2. load, batching off and on
        results["load"] = []
        print(f"\n{'batching':<10} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for batching in (False, True):
            size = args.batch_max_size if batching else 1
            with SplitInferServer(Settings(**base, batch_max_size=size,
                                           batch_max_wait_ms=args.batch_max_wait_ms)) as server:
                for n in clients:
                    r = run_clients(server.grpc_port, "bench", n, args.duration, frames_file, "alternate")
                    r["batching"] = batching
                    results["load"].append(r)
                    print(f"{'on' if batching else 'off':<10} {n:>7} {r['throughput_rps']:>8.1f} {r['p50_ms']:>8.2f} "
                          f"{r['p99_ms']:>8.2f} {sum(r['errors'].values()):>7}")
        by = {(r["batching"], r["clients"]): r for r in results["load"]}
        results["batching_gain"] = {str(n): by[(True, n)]["throughput_rps"] / by[(False, n)]["throughput_rps"]
                                    for n in clients}
        print("batching throughput gain: " + ", ".join(f"N={n}: x{g:.2f}" for n, g in results["batching_gain"].items()))

        # 3. rung switching under load (batching on: the default)
        with SplitInferServer(Settings(**base, batch_max_size=args.batch_max_size,
                                       batch_max_wait_ms=args.batch_max_wait_ms)) as server:
            n = args.switch_clients
            fixed = [run_clients(server.grpc_port, "bench", n, args.duration, frames_file, f"fixed:{r}")
                     for r in sorted(frames)]
            alt = run_clients(server.grpc_port, "bench", n, args.duration, frames_file, "alternate")
        mean_fixed = statistics.mean(f["throughput_rps"] for f in fixed)
        ratio = alt["throughput_rps"] / mean_fixed
        results["switching"] = {"clients": n, "fixed": fixed, "alternate": alt, "ratio": ratio, "goal_ratio": 0.95}
        print(f"\nrung switching, {n} clients: alternating {alt['throughput_rps']:.1f} req/s vs fixed "
              f"(mean over rungs) "
              f"{mean_fixed:.1f} req/s -> ratio {ratio:.3f} (goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
    errors = sum(sum(r["errors"].values()) for r in results["load"]) + sum(alt["errors"].values())
    print(f"errors in all load runs: {errors} (goal: 0)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
