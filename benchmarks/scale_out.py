"""Replicas behind HAProxy: throughput with 1 and 2 replicas, and a replica killed under load. One run, medians.

1. Throughput: ``splitinfer serve`` replicas (each its own process, pinned to its own core) behind HAProxy
   (``deploy/haproxy/haproxy.cfg``, rendered by ``deploy/haproxy/render.py``: HTTP/2 to the gRPC ports,
   HTTP/1.1 to the REST ports). Edge clients (:class:`edge_client.EdgeClient` over gRPC, through HAProxy) send
   pre-encoded messages of the bundle: ``--clients`` unary callers in a closed loop, and ``--streams`` camera
   streams (``EdgeClient.stream``, each with at most ``--window`` frames in flight). One replica, then two, in
   turn, ``--repeats`` times: answers per second, medians, the ratio 2 / 1 (goal: >= 1.7).
2. Kill: two replicas, the same unary load and one camera stream at ``--fps``; after ``--before`` seconds the
   replica holding the stream (its ``/metrics`` say which) gets SIGKILL, and the load goes on. Every unary
   request id and stream frame is matched to its answers: sent, answered, lost, answered twice (goal: 0 lost,
   0 twice); latency p50 / p99 before the kill, during (the ``--during`` seconds after it) and after.

The clients run in this process (threads; the gRPC core sends and waits outside the GIL), HAProxy and the
replicas in their own; all of them share the machine's cores, so with other work on the machine the ratio says
what the spare cores give, not what two idle ones would. Needs ``haproxy`` on the PATH (Debian: apt-get install
haproxy).

    python benchmarks/scale_out.py                          # the embedded ladder (efficientnet_lite0-block1)
    python benchmarks/scale_out.py --duration 10 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT / "shared" / "assets" / "samples"
EMBEDDED = ROOT / "shared" / "assets" / "bundles" / "efficientnet_lite0-block1"


def _render_module():
    spec = importlib.util.spec_from_file_location("haproxy_render", ROOT / "deploy" / "haproxy" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ processes
@dataclass
class Replica:
    index: int
    grpc_port: int
    http_port: int
    proc: subprocess.Popen
    log: Path

    def stream_calls(self) -> Optional[float]:
        """Frames this replica has answered on streams (its /metrics), or None when it does not answer."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        return sum(float(v) for v in re.findall(
            r'^splitinfer_requests_total\{[^}]*protocol="grpc-stream"[^}]*\} (\S+)$', text, re.M))


class Cluster:
    """``splitinfer serve`` replicas on loopback (replica i pinned to core ``i % cores``), and HAProxy front ends
    over any subset of them. A context manager: everything it started is stopped on exit."""

    def __init__(self, bundle: str, weights: Optional[str], workdir: Path, cores: Optional[Sequence[int]] = None,
                 log: Callable[[str], None] = lambda s: None):
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy is not on the PATH (Debian: apt-get install haproxy)")
        self.bundle, self.weights, self.dir, self.say = bundle, weights, Path(workdir), log
        self.cores = list(cores) if cores is not None else sorted(os.sched_getaffinity(0))
        self.replicas: List[Replica] = []
        self._haproxies: List[subprocess.Popen] = []

    def start_replicas(self, n: int, timeout: float = 300.0) -> List[Replica]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "SPLITINFER_LOG_LEVEL": "WARNING",
               "SPLITINFER_LOG_FORMAT": "text", "SPLITINFER_SHUTDOWN_GRACE_S": "2"}
        new = []
        for _ in range(n):
            i = len(self.replicas)
            core = self.cores[i % len(self.cores)]
            g, h = free_port(), free_port()
            cmd = [sys.executable, "-m", "splitinfer", "serve", "--bundle", self.bundle, "--grpc-port", str(g),
                   "--http-port", str(h), "--preload"] + (["--weights", self.weights] if self.weights else [])
            log = self.dir / f"replica{i}.log"
            with open(log, "w") as f:  # pinned before it starts: torch's threads inherit the core
                proc = subprocess.Popen(["taskset", "-c", str(core), *cmd], cwd=ROOT, env=env, stdout=f,
                                        stderr=subprocess.STDOUT)
            r = Replica(i, g, h, proc, log)
            self.replicas.append(r)
            new.append(r)
        end = time.monotonic() + timeout
        for r in new:
            while not self._ready(r):
                if r.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"replica {r.index} did not start: {r.log.read_text()[-2000:]}")
                time.sleep(0.2)
            self.say(f"replica {r.index}: pid {r.proc.pid}, core {self.cores[r.index % len(self.cores)]}, "
                     f"gRPC {r.grpc_port}, REST {r.http_port}")
        return new

    @staticmethod
    def _ready(r: Replica) -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{r.http_port}/v2/health/ready", timeout=2).status == 200
        except OSError:
            return False

    def haproxy(self, replicas: Sequence[Replica], timeout: float = 30.0) -> "tuple[int, int]":
        """Start HAProxy over ``replicas``; its (gRPC port, REST port) once it answers through every replica."""
        render = _render_module()
        g, h = free_port(), free_port()
        cfg = self.dir / f"haproxy-{len(self._haproxies)}.cfg"
        cfg.write_text(render.render([("127.0.0.1", r.grpc_port, r.http_port) for r in replicas],
                                     grpc_bind=f"127.0.0.1:{g}", rest_bind=f"127.0.0.1:{h}"))
        log = open(self.dir / f"haproxy-{len(self._haproxies)}.log", "w")
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        self._haproxies.append(proc)
        end, last = time.monotonic() + timeout, "no answer yet"
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{h}/v2/health/ready", timeout=2).status == 200:
                    return g, h
            except OSError as e:  # not listening yet, or no replica ready behind it: try again until the timeout
                last = str(e)
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"haproxy did not start (last readiness probe: {last}): "
                                   f"{(self.dir / cfg.with_suffix('.log').name).read_text()}")
            time.sleep(0.1)

    def kill(self, r: Replica) -> None:
        r.proc.send_signal(signal.SIGKILL)
        r.proc.wait()

    def close(self) -> None:
        for p in self._haproxies:
            p.terminate()
        for r in self.replicas:
            if r.proc.poll() is None:
                r.proc.terminate()
        for p in self._haproxies + [r.proc for r in self.replicas]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ edge load
class FrameSource:
    """An encoder stand-in for the clients: the messages are encoded once, ahead; a stream's "image" is a frame
    name ``NAME-K`` and gets message ``K`` (mod the set). Everything else (the bundle, the class count the answers
    are checked against) is the real encoder's."""

    def __init__(self, encoder, frames):
        self._encoder, self.frames = encoder, frames

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode(self, image, point=None):
        return self.frames[int(str(image).rsplit("-", 1)[1]) % len(self.frames)]


@dataclass
class Outcome:
    """One unary request or stream frame: when it left (perf_counter), its latency (None: never answered)."""

    kind: str
    id: str
    sent: float
    latency_ms: Optional[float] = None
    error: str = ""


@dataclass
class Load:
    outcomes: List[Outcome] = field(default_factory=list)
    answers: "collections.Counter[str]" = field(default_factory=collections.Counter)  # answers per id
    wrong_id: int = 0  # answers that carried another request's id
    out_of_order: int = 0  # stream answers after a later frame's
    stream_errors: List[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, o: Outcome, answered_id: Optional[str] = None) -> None:
        with self.lock:
            self.outcomes.append(o)
            if answered_id is not None:
                self.answers[answered_id] += 1
                self.wrong_id += answered_id != o.id


def make_clients(target: str, encoder, n: int, retries: int = 3, timeout_s: float = 10.0):
    from edge_client import EdgeClient

    clients = [EdgeClient(target, encoder=encoder, retries=retries, timeout_s=timeout_s) for _ in range(n)]
    for c in clients:
        c.connect()
    return clients


def unary_loop(i: int, client, frames, stop: threading.Event, load: Load) -> None:
    from edge_client import ServiceError

    k = 0
    while not stop.is_set():
        frame = frames[(i + k) % len(frames)]
        rid = f"u{i}-{k}"
        k += 1
        t0 = time.perf_counter()
        try:
            r = client.send(frame, source=rid, request_id=rid, expected_rung=frame.rung)
        except ServiceError as e:
            load.add(Outcome("unary", rid, t0, None, str(e)[:200]))
            continue
        load.add(Outcome("unary", rid, t0, 1e3 * (time.perf_counter() - t0), "" if r.ok else str(r.error)[:200]),
                 r.request_id)


def stream_loop(j: int, client, stop: threading.Event, load: Load, fps: Optional[float], window: int) -> None:
    """One camera: frames ``s{j}-K`` at ``fps`` (None: as fast as answers come), at most ``window`` in flight."""
    from edge_client import ServiceError

    permits = threading.Semaphore(window)
    sent: Dict[str, float] = {}

    def camera() -> Iterator[str]:
        start, k = time.perf_counter(), 0
        while not stop.is_set():
            if fps:
                time.sleep(max(0.0, start + k / fps - time.perf_counter()))
            if not permits.acquire(timeout=0.2):
                continue
            name = f"s{j}-{k:07d}"
            sent[name] = time.perf_counter()
            k += 1
            yield name

    last = -1
    try:
        for r in client.stream(camera()):
            permits.release()
            k = int(r.source.rsplit("-", 1)[1])
            with load.lock:
                load.out_of_order += k <= last
            last = max(last, k)
            o = Outcome("stream", r.source, sent.pop(r.source, time.perf_counter()), r.latency_ms,
                        "" if r.ok else str(r.error)[:200])
            # counted against the frame it answers: the client matched the answer's request id to that frame's
            load.add(o, r.source)
    except ServiceError as e:
        with load.lock:
            load.stream_errors.append(str(e)[:300])
    for name, t0 in sent.items():  # sent, never answered
        load.add(Outcome("stream", name, t0, None, "unanswered"))


def run_load(target: str, encoder, frames, clients: int, streams: int, duration: float, fps: Optional[float],
             window: int, at: Optional[Callable[[float], None]] = None) -> "tuple[Load, float, float]":
    """``clients`` unary loops and ``streams`` cameras for ``duration`` s; ``at(t0)`` runs in this thread once the
    load is going (the kill). Returns the outcomes and the load's start and end (perf_counter)."""
    load, stop = Load(), threading.Event()
    unary = make_clients(target, encoder, clients)
    cams = make_clients(target, encoder, streams)
    threads = [threading.Thread(target=unary_loop, args=(i, c, frames, stop, load)) for i, c in enumerate(unary)]
    threads += [threading.Thread(target=stream_loop, args=(j, c, stop, load, fps, window)) for j, c in enumerate(cams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    try:
        if at is not None:
            at(t0)
        time.sleep(max(0.0, t0 + duration - time.perf_counter()))
    finally:
        stop.set()
        t1 = time.perf_counter()
        for t in threads:
            t.join(60)
        for c in unary + cams:
            c.close()
    return load, t0, t1


def answered_in(load: Load, kind: str, t0: float, t1: float) -> int:
    """Answers of ``kind`` that arrived between t0 and t1."""
    return sum(1 for o in load.outcomes if o.kind == kind and o.latency_ms is not None and not o.error
               and t0 <= o.sent + o.latency_ms / 1e3 <= t1)


def tally(load: Load, kind: str) -> Dict:
    mine = [o for o in load.outcomes if o.kind == kind]
    ids = {o.id for o in mine}
    answered = sum(1 for i in ids if load.answers[i] >= 1)
    return {"sent": len(ids), "answered": answered, "lost": len(ids) - answered,
            "answered_twice": sum(1 for i in ids if load.answers[i] > 1),
            "failed": sum(1 for o in mine if o.latency_ms is not None and o.error),
            "errors": sorted({o.error for o in mine if o.error})[:5]}


def phases(load: Load, kind: str, kill: float, during: float) -> Dict[str, Dict[str, float]]:
    """Latency p50 / p99 (ms) of the answers to requests sent before the kill, in the ``during`` s after, later."""
    bounds = {"before": (float("-inf"), kill), "during": (kill, kill + during), "after": (kill + during, float("inf"))}
    out = {}
    for name, (a, b) in bounds.items():
        lat = [o.latency_ms for o in load.outcomes if o.kind == kind and o.latency_ms is not None and a <= o.sent < b]
        out[name] = {"n": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
    return out


# ------------------------------------------------------------------------------------------ scenarios
def throughput(cluster: Cluster, targets: Dict[int, str], encoder, frames, args, say) -> Dict:
    runs: Dict[int, List[Dict]] = {n: [] for n in targets}
    for rep in range(args.repeats):
        for n, target in targets.items():
            run_load(target, encoder, frames, args.clients, args.streams, args.warmup, None, args.window)
            load, t0, t1 = run_load(target, encoder, frames, args.clients, args.streams, args.duration, None,
                                    args.window)
            u, s = tally(load, "unary"), tally(load, "stream")
            lat = [o.latency_ms for o in load.outcomes if o.kind == "unary" and o.latency_ms is not None]
            r = {"unary_rps": answered_in(load, "unary", t0, t1) / (t1 - t0),
                 "stream_fps": answered_in(load, "stream", t0, t1) / (t1 - t0),
                 "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "lost": u["lost"] + s["lost"],
                 "failed": u["failed"] + s["failed"], "stream_errors": load.stream_errors}
            runs[n].append(r)
            say(f"  run {rep + 1}, {n} replica{'s' if n > 1 else ''}: {r['unary_rps']:.1f} req/s unary, "
                f"{r['stream_fps']:.1f} frames/s streamed, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                f"lost {r['lost']}, failed {r['failed']}")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("unary_rps", "stream_fps", "p50_ms", "p99_ms")}
           for n, rs in runs.items()}
    total = {n: statistics.median(r["unary_rps"] + r["stream_fps"] for r in rs) for n, rs in runs.items()}
    return {"runs": runs, "median": med, "answers_per_s": total,
            "ratio": total[2] / total[1] if total.get(1) else float("nan"),
            "ratio_unary": med[2]["unary_rps"] / med[1]["unary_rps"] if med[1]["unary_rps"] else float("nan")}


def kill_test(cluster: Cluster, target: str, encoder, frames, args, say) -> Dict:
    r0, r1 = cluster.replicas[:2]
    when: Dict[str, float] = {}

    def kill(t0: float) -> None:
        time.sleep(max(0.0, t0 + args.before - 0.5 - time.perf_counter()))
        a = {r.index: r.stream_calls() for r in (r0, r1)}
        time.sleep(0.5)
        b = {r.index: r.stream_calls() for r in (r0, r1)}
        # the replica whose stream count moved holds the camera stream
        moved = {i: (b[i] or 0) - (a[i] or 0) for i in b}
        victim = max((r0, r1), key=lambda r: moved[r.index])
        when["kill"] = time.perf_counter()
        cluster.kill(victim)
        when["victim"], when["moved"] = victim.index, moved
        say(f"  SIGKILL replica {victim.index} (pid {victim.proc.pid}) at {when['kill'] - t0:.1f} s; stream answers "
            f"per replica in the 0.5 s before: {moved}")

    load, t0, t1 = run_load(target, encoder, frames, args.kill_clients, 1, args.before + args.after, args.fps,
                            args.camera_window, at=kill)
    return {"victim": when["victim"], "stream_answers_before_kill": when["moved"], "kill_at_s": when["kill"] - t0,
            "during_s": args.during,
            "unary": {**tally(load, "unary"), "latency": phases(load, "unary", when["kill"], args.during)},
            "stream": {**tally(load, "stream"), "latency": phases(load, "stream", when["kill"], args.during),
                       "out_of_order": load.out_of_order, "errors_ending_it": load.stream_errors},
            "wrong_id": load.wrong_id}


# ------------------------------------------------------------------------------------------ main
def load_frames(bundle: str, weights: Optional[str], images: Path, max_images: int):
    """An edge encoder of the bundle and the messages to send: every image at every rung."""
    from edge_client import OnnxEdgeEncoder
    from shared.data import scan_images

    enc = OnnxEdgeEncoder(bundle, weights=weights, threads=1)
    items = scan_images(images, labels=False)[:max_images]
    return enc, [enc.encode(path, rung=r.index) for path, _ in items for r in enc.bundle.rungs]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=str(EMBEDDED), help="bundle folder the replicas serve (default: the "
                   "embedded efficientnet_lite0-block1 ladder)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--images", default=str(SAMPLES), help="images to encode (default: the embedded samples)")
    p.add_argument("--max-images", type=int, default=6)
    p.add_argument("--clients", type=int, default=8, help="unary clients (default 8)")
    p.add_argument("--streams", type=int, default=2, help="streams in the throughput runs (default 2)")
    p.add_argument("--window", type=int, default=4, help="frames in flight per stream in the throughput runs")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each throughput run")
    p.add_argument("--repeats", type=int, default=3, help="throughput runs per replica count (default 3)")
    p.add_argument("--kill-clients", type=int, default=4, help="unary clients in the kill test (default 4)")
    p.add_argument("--fps", type=float, default=5.0, help="the camera stream's frame rate in the kill test")
    p.add_argument("--camera-window", type=int, default=32, help="frames in flight the camera allows (kill test)")
    p.add_argument("--before", type=float, default=8.0, help="seconds of load before the kill (default 8)")
    p.add_argument("--during", type=float, default=2.0, help="seconds after the kill counted as 'during'")
    p.add_argument("--after", type=float, default=10.0, help="seconds of load after the kill (default 10)")
    p.add_argument("--skip-throughput", action="store_true", help="only the kill test")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if not Path(args.images).exists():
        p.error(f"--images {args.images}: no such file or folder")
    if len(os.sched_getaffinity(0)) < 2:
        print("note: fewer than 2 cores: both replicas share one", file=sys.stderr)

    say = lambda s: print(s, flush=True)  # noqa: E731
    enc, frames = load_frames(args.bundle, args.weights, Path(args.images), args.max_images)
    source = FrameSource(enc, frames)
    results: Dict = {"setup": {"bundle": enc.bundle.bundle_id, "frames": len(frames),
                               "bytes_mean": statistics.mean(f.n_bytes for f in frames), "cpus": os.cpu_count(),
                               "clients": args.clients, "streams": args.streams, "window": args.window,
                               "duration_s": args.duration, "repeats": args.repeats, "fps": args.fps,
                               "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True)
                               .stdout.splitlines()[0] if shutil.which("haproxy") else None,
                               "loadavg_start": os.getloadavg()}}
    say(f"bundle {enc.bundle.bundle_id} ({len(frames)} messages, {results['setup']['bytes_mean']:.0f} bytes mean), "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp, \
            Cluster(args.bundle, args.weights, Path(tmp), log=say) as cluster:
        reps = cluster.start_replicas(2)
        one = cluster.haproxy(reps[:1])
        two = cluster.haproxy(reps)
        targets = {1: f"127.0.0.1:{one[0]}", 2: f"127.0.0.1:{two[0]}"}
        if not args.skip_throughput:
            say(f"\nthroughput: {args.clients} unary clients + {args.streams} streams ({args.window} frames in "
                f"flight each), {args.duration:g} s per run, 1 and 2 replicas in turn, {args.repeats} times")
            results["throughput"] = t = throughput(cluster, targets, source, frames, args, say)
            say(f"\n{'replicas':<9} {'unary req/s':>12} {'stream fr/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
            for n, m in t["median"].items():
                say(f"{n:<9} {m['unary_rps']:>12.1f} {m['stream_fps']:>12.1f} {m['p50_ms']:>8.0f} {m['p99_ms']:>8.0f}")
            say(f"2 replicas / 1, answers per second (unary + stream): x{t['ratio']:.2f} (goal >= 1.7: "
                f"{'met' if t['ratio'] >= 1.7 else 'NOT met'}); unary alone x{t['ratio_unary']:.2f}")
        say(f"\nkill: {args.kill_clients} unary clients + 1 camera stream at {args.fps:g} fps through 2 replicas; "
            f"SIGKILL to the stream's replica after {args.before:g} s, then {args.after:g} s more")
        results["kill"] = k = kill_test(cluster, targets[2], source, frames, args, say)
    say(f"\n{'':<8} {'sent':>6} {'answered':>9} {'lost':>5} {'twice':>6}   {'p50 ms before/during/after':>27}   "
        f"{'p99 ms before/during/after':>27}")
    for kind in ("unary", "stream"):
        r, lat = k[kind], k[kind]["latency"]
        p50, p99 = ("/".join(f"{lat[ph][q]:.0f}" for ph in lat) for q in ("p50_ms", "p99_ms"))
        say(f"{kind:<8} {r['sent']:>6} {r['answered']:>9} {r['lost']:>5} {r['answered_twice']:>6}   {p50:>27}   "
            f"{p99:>27}")
    lost = k["unary"]["lost"] + k["stream"]["lost"]
    twice = k["unary"]["answered_twice"] + k["stream"]["answered_twice"]
    say(f"stream frames out of order: {k['stream']['out_of_order']}; answers with another id: {k['wrong_id']}; "
        f"stream ended by: {k['stream']['errors_ending_it'] or 'nothing (it ran to the end)'}")
    say(f"lost or answered twice when a replica is killed: {lost + twice} (goal 0: {'met' if lost + twice == 0 else 'NOT met'})")
    for kind in ("unary", "stream"):
        if k[kind]["errors"]:
            say(f"{kind} errors: {k[kind]['errors']}")
    results["setup"]["loadavg_end"] = os.getloadavg()
    say(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
