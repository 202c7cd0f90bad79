"""The hardening goals of issue 14 on loopback, printed together: admission under overload on each front end,
Health/Check while idle streams are open, and the peak memory of image uploads.

1. Overload: closed-loop clients (a separate process; one thread, one connection each) against a server with
   ``max_concurrent_requests = C``: C clients (capacity) and 4C (overload), ``--repeat`` alternating pairs, on
   gRPC and on REST. A refused client backs off as the edge client does (0.1 s x 2^attempt, jittered, and at
   least the server's retry hint) and tries again. Goals: under overload
   at least 99% of the refusals answered within 50 ms, and goodput (answers per second) at least 0.9 x the
   goodput at capacity. Each run counts ``--duration`` seconds after a 3 s warm-up (all clients start together:
   the first burst is not the steady state).
2. Health/Check latency while 100 InferStreams that send nothing are open (goal: <= 100 ms).
3. Peak RSS of the infer-image preprocessing (decode, bounds, RGB, resize + crop, as the data plane runs it for a
   224-pixel model resized at 256) for the worst uploads within the limits, and the 1x20000 PNG of the issue,
   each in a fresh process (goal: <= +300 MB).

    python benchmarks/hardening_limits.py --bundle DIR --weights FILE [--capacity 32] [--duration 10] [--json F]

Default bundle: the embedded ladder (needs its pretrained weights). On a small machine the clients compete with
the server for the cores: absolute rates are a floor, the ratios are the point.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import statistics
import struct
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
FAST_MS = 50.0


def pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


# ------------------------------------------------------------------------------------------ client process
def client_worker(transport: str, port: int, model: str, n: int, duration: float, frames_file: str,
                  honour_hint: bool = True, warmup: float = 3.0) -> Dict:
    frames = [base64.b64decode(x) for x in json.loads(Path(frames_file).read_text())]
    ok_ms: List[List[float]] = [[] for _ in range(n)]
    refused_ms: List[List[float]] = [[] for _ in range(n)]
    other: Dict[str, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(n + 1)
    stop_at = [float("inf")]
    window = [float("inf")]

    def note(kind: str) -> None:
        with lock:
            other[kind] = other.get(kind, 0) + 1

    def run(i: int) -> None:
        rng = random.Random(i)
        if transport == "grpc":
            import grpc

            from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = pb_grpc.SplitInferenceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)

            def call(data):
                try:
                    stub.Infer(pb.InferRequest(model=model, bitstream=data), timeout=10)
                    return "ok", None
                except grpc.RpcError as e:
                    md = dict(e.trailing_metadata() or ())
                    kind = md.get("splitinfer-error-kind", "")
                    hint = int(md.get("splitinfer-retry-after-ms", 0)) / 1e3 or None
                    return ("refused", hint) if kind == "overloaded" else (f"{e.code().name}/{kind}", None)
        else:
            import httpx

            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            client.get("/v2/health/live")

            def call(data):
                data = struct.pack("<I", len(data)) + data  # a BYTES element in the binary extension
                header = json.dumps({"inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                                                 "parameters": {"binary_data_size": len(data)}}]}).encode()
                try:
                    r = client.post(f"/v2/models/{model}/infer", content=header + data, headers={
                        "content-type": "application/octet-stream",
                        "inference-header-content-length": str(len(header))})
                except httpx.HTTPError as e:
                    return type(e).__name__, None
                if r.status_code == 200:
                    return "ok", None
                if r.status_code == 429:
                    ms = r.headers.get("retry-after-ms")
                    return "refused", (float(ms) / 1e3 if ms else float(r.headers.get("retry-after", 0))) or None
                return f"http-{r.status_code}", None

        barrier.wait()
        k, attempt = i, 0
        while time.perf_counter() < stop_at[0]:
            data = frames[k % len(frames)]
            k += 1
            t0 = time.perf_counter()
            outcome, hint = call(data)
            t1 = time.perf_counter()
            dt = 1e3 * (t1 - t0)
            counted = window[0] <= t0 and t1 <= stop_at[0]  # after the warm-up (the synchronised first burst)
            if outcome == "ok":
                if counted:
                    ok_ms[i].append(dt)
                attempt = 0
            elif outcome == "refused":
                if counted:
                    refused_ms[i].append(dt)
                pause = 0.1 * (2 ** min(attempt, 3)) * (0.5 + rng.random())  # the edge client's backoff ...
                if hint and honour_hint:
                    pause = max(pause, hint * (1.0 + 0.5 * rng.random()))  # ... and the server's retry hint
                time.sleep(pause)
                attempt += 1
            else:
                note(outcome)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    window[0] = time.perf_counter() + warmup
    stop_at[0] = window[0] + duration
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = duration
    ok = [x for per in ok_ms for x in per]
    refused = [x for per in refused_ms for x in per]
    return {"transport": transport, "clients": n, "seconds": elapsed, "ok": len(ok), "goodput_rps": len(ok) / elapsed,
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99), "refused": len(refused),
            "refused_p50_ms": pct(refused, 50), "refused_p99_ms": pct(refused, 99),
            "refused_fast_share": (sum(x <= FAST_MS for x in refused) / len(refused)) if refused else None,
            "other": other}


def run_clients(transport: str, port: int, model: str, n: int, duration: float, frames_file: str,
                honour_hint: bool = True, warmup: float = 3.0) -> Dict:
    import resource

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--client-worker", transport, str(port), model, str(n),
           str(duration), frames_file, "1" if honour_hint else "0", str(warmup)]
    c0, s0, m0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), _machine_cpu()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=duration + warmup + 240)
    c1, s1, m1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), _machine_cpu()
    if out.returncode != 0:
        raise RuntimeError(f"client worker failed: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["server_cpu_s"] = s1 - s0  # this process: the server (the client process's start-up included below)
    r["client_cpu_s"] = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    busy, total = m1[0] - m0[0], m1[1] - m0[1]
    r["machine_busy"] = busy / total if total else float("nan")  # every process on the machine, this run
    return r


def _machine_cpu():
    """(busy, total) jiffies of the whole machine (Linux /proc/stat), to tell our load from other processes'."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)
    except OSError:
        return 0, 0


# ------------------------------------------------------------------------------------------ health, memory
def health_with_idle_streams(port: int, streams: int = 100, checks: int = 50) -> Dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shared._proto import splitinfer_pb2 as pb

    stop = threading.Event()

    def idle():
        stop.wait()
        return
        yield  # noqa: unreachable

    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    calls = [channels[i % 4].stream_stream("/splitinfer.v1.SplitInference/InferStream",
                                           request_serializer=pb.InferRequest.SerializeToString)(idle(), timeout=60)
             for i in range(streams)]
    time.sleep(1.0)
    refused = sum(c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for c in calls)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    lat = []
    for _ in range(checks):
        t0 = time.perf_counter()
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        lat.append(1e3 * (time.perf_counter() - t0))
    stop.set()
    for c in calls:
        c.cancel()
    for c in channels + [channel]:
        c.close()
    return {"idle_streams": streams, "held": streams - refused, "refused": refused, "checks": checks,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat)}


UPLOADS = {  # name: (mode, size, format)
    "1x20000 PNG (the issue's)": ("RGB", (1, 20000), "PNG"),
    "40 MP RGB PNG": ("RGB", (6324, 6324), "PNG"),
    "40 MP RGB JPEG": ("RGB", (6324, 6324), "JPEG"),
    "40 MP palette PNG": ("P", (6324, 6324), "PNG"),
    "40 MP 16-bit grey PNG": ("I;16", (6324, 6324), "PNG"),
    "33 MP RGBA PNG": ("RGBA", (5790, 5790), "PNG"),
    "33 MP CMYK JPEG": ("CMYK", (5790, 5790), "JPEG"),
    "20:1 RGB PNG, 40 MP": ("RGB", (28280, 1414), "PNG"),
    "40 MP RGBA PNG (over)": ("RGBA", (6324, 6324), "PNG"),
}


def upload_worker(name: str) -> Dict:
    """In a fresh process: peak RSS over the data plane's image path for one upload."""
    from PIL import Image

    from cloud_server.dataplane import DataPlane
    from cloud_server.settings import Settings
    from cloud_server.uploads import open_image
    from edge_client.encoder import EdgeEncoder
    from shared.data import eval_transform
    from shared.models.registry import Preprocess

    mode, size, fmt = UPLOADS[name]
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    data = buf.getvalue()
    pre = Preprocess(input_size=(224, 224), resize=256)
    settings = Settings()
    enc = EdgeEncoder.__new__(EdgeEncoder)
    enc._transform = eval_transform(pre)

    def status(key: str) -> float:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = status("VmRSS")
    t0 = time.perf_counter()
    try:
        deadline = time.monotonic() + 60  # the data plane's stage check, with no client to lose
        img = open_image(settings, data, pre, lambda stage: DataPlane._check(deadline, None, stage))
        enc.preprocess(img)
        outcome = "accepted"
    except Exception as e:  # noqa: BLE001
        outcome = f"{type(e).__name__}"
    return {"upload": name, "bytes": len(data), "outcome": outcome, "seconds": time.perf_counter() - t0,
            "peak_mb": status("VmHWM") - base}


def upload_peaks() -> List[Dict]:
    out = []
    for name in UPLOADS:
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--upload-worker", name], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--client-worker":
        transport, port, model, n, duration, frames_file, hint, warmup = argv[1:9]
        print(json.dumps(client_worker(transport, int(port), model, int(n), float(duration), frames_file,
                                       hint == "1", float(warmup))))
        return 0
    if argv and argv[0] == "--upload-worker":
        print(json.dumps(upload_worker(argv[1])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded ladder)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--images", default=None, help="images to encode (default: the embedded samples)")
    p.add_argument("--capacity", type=int, default=32, help="max_concurrent_requests of the server (default 32)")
    p.add_argument("--factor", type=int, default=4, help="overload = factor x capacity clients (default 4)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run (default 10)")
    p.add_argument("--transports", default="grpc,rest")
    p.add_argument("--repeat", type=int, default=2, help="capacity/overload run pairs per front end (default 2)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds not counted at the start of a run (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server (default 1)")
    p.add_argument("--skip-uploads", action="store_true")
    p.add_argument("--ignore-hint", action="store_true", help="refused clients ignore the server's retry hint")
    p.add_argument("--switch-interval-ms", type=float, default=None, help="sys.setswitchinterval in the server")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    import torch

    from cloud_server.server import SplitInferServer
    from cloud_server.settings import BundleSpec, Settings
    from edge_client import EdgeEncoder
    from shared.bundle import resolve_bundle
    from shared.data import scan_images

    torch.set_num_threads(args.threads)
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    bundle = resolve_bundle(args.bundle)
    enc = EdgeEncoder(bundle, weights=args.weights)
    items = scan_images(args.images or SAMPLES, labels=False)[:6]
    frames = [enc.encode(path, rung=r.index).data for path, _ in items for r in bundle.rungs]
    results: Dict = {"setup": {"bundle": bundle.bundle_id, "model": f"{bundle.model}/{bundle.split}",
                               "capacity": args.capacity, "factor": args.factor, "duration_s": args.duration,
                               "cpus": os.cpu_count(), "torch_threads": args.threads}}
    print(f"bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}), capacity {args.capacity} requests, "
          f"{os.cpu_count()} CPUs, torch threads {args.threads}")
    settings = Settings(bundles=[BundleSpec(path=bundle.root, name="bench")], weights=args.weights, http_port=0,
                        grpc_port=0, preload=True, max_concurrent_requests=args.capacity, log_level="WARNING")
    with tempfile.TemporaryDirectory() as tmp, SplitInferServer(settings) as server:
        frames_file = str(Path(tmp) / "frames.json")
        Path(frames_file).write_text(json.dumps([base64.b64encode(d).decode() for d in frames]))
        results["overload"] = []
        print(f"\n{'front end':<9} {'clients':>7} {'goodput/s':>9} {'ok p50':>8} {'refused':>8} {'ref p50':>8} "
              f"{'ref p99':>8} {'<=50ms':>7} {'srv cpu':>7} {'cli cpu':>7} {'in fl.':>6} {'busy':>6}  other")
        for transport in [t for t in args.transports.split(",") if t]:
            port = server.grpc_port if transport == "grpc" else server.http_port
            runs: Dict[str, List[Dict]] = {"capacity": [], "overload": []}
            for rep in range(args.repeat):  # alternating, so that the machine's other load hits both alike
                order = [("capacity", args.capacity), ("overload", args.factor * args.capacity)]
                for label, n in (order if rep % 2 == 0 else order[::-1]):
                    samples, stop = [], threading.Event()
                    sampler = threading.Thread(target=lambda: [samples.append(server.dataplane.admission.inflight)
                                                               for _ in iter(lambda: stop.wait(0.01), True)])
                    sampler.start()
                    r = run_clients(transport, port, "bench", n, args.duration, frames_file, not args.ignore_hint,
                                    args.warmup)
                    stop.set()
                    sampler.join()
                    r["mean_inflight"] = statistics.mean(samples) if samples else float("nan")
                    runs[label].append(r)
                    fast = r["refused_fast_share"]
                    print(f"{transport:<9} {n:>7} {r['goodput_rps']:>9.1f} {r['ok_p50_ms']:>8.1f} {r['refused']:>8} "
                          f"{r['refused_p50_ms']:>8.1f} {r['refused_p99_ms']:>8.1f} "
                          f"{'-' if fast is None else f'{100 * fast:.1f}%':>7} {r['server_cpu_s']:>7.1f} "
                          f"{r['client_cpu_s']:>7.1f} {r['mean_inflight']:>6.1f} {100 * r['machine_busy']:>5.0f}%  "
                          f"{r['other'] or ''}")
            goodput = {k: sum(r["ok"] for r in v) / sum(r["seconds"] for r in v) for k, v in runs.items()}
            per_cpu = {k: sum(r["ok"] for r in v) / max(sum(r["server_cpu_s"] for r in v), 1e-9)
                       for k, v in runs.items()}
            ratio = goodput["overload"] / max(goodput["capacity"], 1e-9)
            refused = sum(r["refused"] for r in runs["overload"])
            fast = (sum(r["refused_fast_share"] * r["refused"] for r in runs["overload"] if r["refused"]) / refused
                    if refused else None)
            results["overload"].append({"transport": transport, "runs": runs, "goodput_rps": goodput,
                                        "goodput_ratio": ratio, "goodput_per_server_cpu_s": per_cpu,
                                        "refused_within_50ms": fast})
            print(f"  {transport}: goodput at {args.factor}x / at capacity = {ratio:.2f} (goal >= 0.9: "
                  f"{'met' if ratio >= 0.9 else 'NOT met'}; per server CPU-second: "
                  f"{per_cpu['overload'] / max(per_cpu['capacity'], 1e-9):.2f}); refusals within 50 ms: "
                  f"{'-' if fast is None else f'{100 * fast:.1f}%'} of {refused} (goal >= 99%: "
                  f"{'met' if fast is not None and fast >= 0.99 else 'NOT met'})")
        h = results["health"] = health_with_idle_streams(server.grpc_port)
        print(f"\nHealth/Check with {h['idle_streams']} idle InferStreams ({h['held']} held, {h['refused']} refused): "
              f"p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms, max {h['max_ms']:.2f} ms "
              f"(goal <= 100 ms: {'met' if h['max_ms'] <= 100 else 'NOT met'})")
    if not args.skip_uploads:
        results["uploads"] = ups = upload_peaks()
        print(f"\n{'upload':<28} {'kB':>6} {'outcome':<16} {'s':>5} {'peak MB':>8}")
        for u in ups:
            print(f"{u['upload']:<28} {u['bytes'] // 1024:>6} {u['outcome']:<16} {u['seconds']:>5.2f} "
                  f"{u['peak_mb']:>8.1f}")
        worst = max(u["peak_mb"] for u in ups)
        print(f"largest peak: +{worst:.0f} MB (goal <= +300 MB: {'met' if worst <= 300 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
