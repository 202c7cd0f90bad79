"""Fuzzing at scale: mutated bitstreams in-process and through both front ends of a real server, every outcome counted.

Three phases, each optional (``--n-... 0`` skips it):

1. **in-process**: ``LadderCodec.decode`` of mutated real messages in worker processes (``--workers``, default one
   per core). Each worker decodes the unmutated messages itself first; a mutated message must decode to exactly
   the same feature or raise ``BitstreamError``.
2. **gRPC**: the native ``splitinfer.v1.SplitInference/Infer`` of a server started as a subprocess
   (``python -m splitinfer serve``), from ``--clients`` threads.
3. **REST**: ``POST /v2/models/{name}/infer`` on the same kind of server; the bitstream travels as the REST API
   takes it (``--rest-format``; ``auto`` probes the KServe binary framing, then the older raw framing, then
   base64 JSON), by httpx or by ``tritonclient.http`` (``--rest-client tritonclient``).

Outcome classes: ``correct`` (the answer of the unmutated message: same feature in-process; same rung and top-k
classes on the wire), ``refused`` (BitstreamError; HTTP 400/413/422; gRPC INVALID_ARGUMENT), ``other`` (any other
non-success status, e.g. 404/429, RESOURCE_EXHAUSTED), ``5xx`` (HTTP 5xx; gRPC INTERNAL/UNKNOWN/DATA_LOSS),
``timeout`` (no answer within ``--timeout``; in-process: a decode that ran over ``--hang-s``),
``transport`` (connection errors), ``crash`` (in-process: any exception other than BitstreamError, or a worker
process dying; server: the process exiting, or a health check failing), and ``corrupt`` (accepted with a
different result: silent corruption). RSS is sampled all along (workers, and the server process) to show that
memory stays flat.

Mutations are deterministic per (seed, phase, index): ``--replay PHASE:INDEX`` rebuilds one of them, decodes it
in-process and prints the outcome (``--dump FILE`` writes its bytes), so any failure reported here reproduces.

Operators (``OPS``): raw changes that leave the outer CRC stale (bit flips, byte sets, truncation, extension,
chunk duplication and deletion, splices of two messages), and changes with the CRC recomputed so that the parser
and the decoder behind it are exercised: any body edit, truncation, extension, splice, fixed header fields
(magic, version, bundle id, split tag, rung, payload count, symbol CRC), header varints (shapes and payload
lengths: other values, non-canonical and overlong encodings, merged continuation bytes), payload edits with
consistent or shifted lengths, and payloads swapped between messages, rungs and the two payload slots.

Throughput measured on the 2-core development machine (embedded block1 ladder; about a quarter of the messages
reach the entropy decoder, ~10 ms each): in-process 550-600 messages/s with 2 workers (1,000,000 in ~30 min),
gRPC ~200/s and REST ~175/s with 4 client threads (100,000 in ~8 and ~10 min): the full soak takes ~50 min there.

    python benchmarks/fuzz_soak.py                                    # full soak: 1,000,000 + 100,000 + 100,000
    python benchmarks/fuzz_soak.py --n-inprocess 20000 --n-grpc 2000 --n-rest 2000 --json out.json   # short
    python benchmarks/fuzz_soak.py --bundle DIR --weights FILE --images DIR ...                       # another ladder
    python benchmarks/fuzz_soak.py --replay inprocess:12345 --dump bad.si                             # one case
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from shared.bitstream_layout import Layout, reseal, uvarint  # noqa: E402  (service_hardening.py uses fz.uvarint)

DEFAULT_BUNDLE = ROOT / "shared" / "assets" / "bundles" / "efficientnet_lite0-block1"
SAMPLES = ROOT / "shared" / "assets" / "samples"
PHASES = {"inprocess": 0, "grpc": 1, "rest": 2}
OUTCOMES = ("correct", "refused", "other", "5xx", "timeout", "transport", "crash", "corrupt")
GOAL_INPROCESS, GOAL_FRONT_END = 1_000_000, 100_000


# ====================================================================================== mutations
def _rebuild(lay: Layout, payloads: Sequence[bytes], lengths: Optional[Sequence[int]] = None) -> bytes:
    """The original header (byte for byte up to the payload lengths) with new payloads and lengths, resealed."""
    d = lay.data
    lengths = [len(p) for p in payloads] if lengths is None else lengths
    nb = lay.fixed["n_payloads"]
    head = d[: nb[0]] + bytes([len(payloads)]) + b"".join(uvarint(k) for k in lengths)
    crc = lay.fixed["symbols_crc"]
    return reseal(head + d[crc[0]:crc[1]] + b"".join(payloads))


INTERESTING_VARINTS = [0, 1, 2, 3, 7, 8, 27, 28, 29, 55, 56, 57, 63, 64, 127, 128, 223, 224, 225, 255, 256, 1000,
                       16383, 16384, 16385, 1 << 21, (1 << 28) - 1, 1 << 28, (1 << 35) - 1]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE]


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n > 0 else b""


def _flip_bits(rng: random.Random, buf: bytearray, lo: int = 0, hi: Optional[int] = None, k: int = 0) -> None:
    hi = len(buf) if hi is None else hi
    if hi <= lo:
        return
    for _ in range(k or rng.randint(1, 8)):
        p = rng.randrange(lo, hi)
        buf[p] ^= 1 << rng.randrange(8)


def _set_bytes(rng: random.Random, buf: bytearray, lo: int = 0, hi: Optional[int] = None) -> None:
    hi = len(buf) if hi is None else hi
    if hi <= lo:
        return
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(lo, hi)] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)


def _generic_edit(rng: random.Random, buf: bytearray, header_end: int) -> bytearray:
    """One of: bit flips, byte sets, delete a chunk, insert random bytes, duplicate a chunk; half of the time
    inside the header (the first ``header_end`` bytes), so that header checks get their share."""
    hi = header_end if rng.random() < 0.5 else len(buf)
    kind = rng.randrange(5)
    if kind == 0:
        _flip_bits(rng, buf, 0, hi)
    elif kind == 1:
        _set_bytes(rng, buf, 0, hi)
    elif kind == 2 and buf:
        at = rng.randrange(hi or 1)
        del buf[at: at + rng.randint(1, 16)]
    elif kind == 3:
        at = rng.randrange(hi + 1)
        buf[at:at] = _rand_bytes(rng, rng.randint(1, 16))
    elif buf:
        a = rng.randrange(len(buf))
        b = min(len(buf), a + rng.randint(1, 64))
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = buf[a:b]
    return buf


class Mutator:
    """Deterministic mutations of a fixed list of valid messages: ``mutate(phase, index) -> (op, orig, data)``."""

    OPS: List[Tuple[str, int]] = [
        # raw: the outer CRC stays stale
        ("bitflip", 10), ("byteset", 7), ("truncate", 6), ("extend", 4), ("duplicate", 4), ("delete", 4),
        ("splice", 5),
        # resealed: the CRC is recomputed, so the parser and decoder behind it must cope
        ("body_edit+crc", 10), ("truncate+crc", 4), ("extend+crc", 3), ("splice+crc", 5),
        ("header_field+crc", 12), ("header_varint+crc", 10), ("payload_edit+crc", 8), ("payload_swap+crc", 4),
        ("length_shift+crc", 4),
    ]

    def __init__(self, messages: Sequence[bytes], seed: int, rungs: Sequence[int], split_tags: Sequence[int] = ()):
        from shared.bitstream import unpack

        self.messages = list(messages)
        self.layouts = [Layout(m) for m in self.messages]
        self.headers = [unpack(m)[0] for m in self.messages]
        self.seed = seed
        self.rungs = list(rungs)
        self.split_tags = list(split_tags)
        names, weights = zip(*self.OPS)
        self.names, self.cum = list(names), []
        total = 0
        for w in weights:
            total += w
            self.cum.append(total)
        self.total = total

    def rng(self, phase: str, index: int) -> random.Random:
        return random.Random((self.seed << 40) ^ (PHASES[phase] << 36) ^ index)

    def pick_op(self, rng: random.Random) -> str:
        x = rng.randrange(self.total)
        for name, c in zip(self.names, self.cum):
            if x < c:
                return name
        return self.names[-1]

    def mutate(self, phase: str, index: int) -> Tuple[str, int, bytes]:
        rng = self.rng(phase, index)
        k = rng.randrange(len(self.messages))
        op = self.pick_op(rng)
        data = getattr(self, "_" + op.replace("+crc", "_crc"))(rng, k)
        return op, k, bytes(data)

    # -- raw ---------------------------------------------------------------------------------------------
    def _bitflip(self, rng, k):
        buf = bytearray(self.messages[k])
        _flip_bits(rng, buf)
        return buf

    def _byteset(self, rng, k):
        buf = bytearray(self.messages[k])
        _set_bytes(rng, buf)
        return buf

    def _truncate(self, rng, k):
        m = self.messages[k]
        cut = rng.randint(1, 8) if rng.random() < 0.3 else rng.randint(1, len(m))
        return m[: len(m) - cut]

    def _extend(self, rng, k):
        m = self.messages[k]
        tail = m[-rng.randint(1, 32):] if rng.random() < 0.3 else _rand_bytes(rng, rng.randint(1, 64))
        return m + tail

    def _duplicate(self, rng, k):
        buf = bytearray(self.messages[k])
        a = rng.randrange(len(buf))
        b = min(len(buf), a + rng.randint(1, 256))
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = buf[a:b]
        return buf

    def _delete(self, rng, k):
        buf = bytearray(self.messages[k])
        at = rng.randrange(len(buf))
        del buf[at: at + rng.randint(1, 64)]
        return buf

    def _splice_bytes(self, rng, k):
        a, b = self.messages[k], self.messages[rng.randrange(len(self.messages))]
        if rng.random() < 0.5:  # cut both at the same offset (header of one, payloads of the other)
            cut = rng.randrange(min(len(a), len(b)))
            return a[:cut] + b[cut:]
        return a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1):]

    def _splice(self, rng, k):
        return self._splice_bytes(rng, k)

    # -- resealed ----------------------------------------------------------------------------------------
    def _body_edit_crc(self, rng, k):
        lay = self.layouts[k]
        buf = bytearray(self.messages[k][:-4])
        for _ in range(rng.randint(1, 3)):
            buf = _generic_edit(rng, buf, lay.header_end)
        return reseal(buf)

    def _truncate_crc(self, rng, k):
        lay = self.layouts[k]
        body = self.messages[k][:-4]
        if rng.random() < 0.5:  # inside the header
            cut = rng.randrange(0, lay.header_end + 1)
        else:
            cut = rng.randrange(lay.header_end, len(body))
        return reseal(body[:cut])

    def _extend_crc(self, rng, k):
        body = self.messages[k][:-4]
        return reseal(body + _rand_bytes(rng, rng.randint(1, 64)))

    def _splice_crc(self, rng, k):
        data = self._splice_bytes(rng, k)
        return reseal(data[:-4] if len(data) >= 4 else data)

    def _header_field_crc(self, rng, k):
        lay = self.layouts[k]
        buf = bytearray(self.messages[k][:-4])
        field = rng.choice(["magic", "version", "bundle_id", "split_tag", "rung", "rung", "rung", "n_payloads",
                            "symbols_crc"])
        a, b = lay.fixed[field]
        if field == "rung":
            others = [r for r in self.rungs if r != buf[a]]
            buf[a] = rng.choice(others) if others and rng.random() < 0.6 else rng.choice(
                [len(self.rungs), 255, rng.randrange(256)])
        elif field == "n_payloads":
            buf[a] = rng.choice([0, 1, 2, 3, 255])
        elif field == "split_tag" and self.split_tags and rng.random() < 0.5:
            buf[a:b] = struct.pack(">H", rng.choice(self.split_tags))
        elif field == "version":
            buf[a] = rng.choice([0, 2, 255, rng.randrange(256)])
        elif rng.random() < 0.5:  # one bit of the field
            buf[rng.randrange(a, b)] ^= 1 << rng.randrange(8)
        else:
            buf[a:b] = _rand_bytes(rng, b - a)
        return reseal(buf)

    def _header_varint_crc(self, rng, k):
        lay = self.layouts[k]
        data = self.messages[k]
        j = rng.randrange(len(lay.varints))
        a, b = lay.varints[j]
        value = (lay.values + lay.lengths)[j]
        how = rng.randrange(6)
        if how == 0:  # an interesting value
            enc = uvarint(rng.choice(INTERESTING_VARINTS))
        elif how == 1:  # near the current value
            enc = uvarint(max(0, value + rng.randint(-3, 3)))
        elif how == 2:  # the same value, non-canonical (padded with continuation bytes; > 5 bytes is malformed)
            enc = uvarint(value, rng.randint(1, 5))
        elif how == 3:  # continuation bit on the last byte: the next field's byte joins this varint
            enc = data[a:b - 1] + bytes([data[b - 1] | 0x80])
        elif how == 4:  # overlong: six or more continuation bytes
            enc = b"\xff" * rng.randint(5, 8) + b"\x01"
        else:  # random value, any size that fits 5 bytes
            enc = uvarint(rng.getrandbits(rng.choice([7, 14, 21, 28, 35])))
        return reseal(data[:a] + enc + data[b:-4])

    def _payload_edit_crc(self, rng, k):
        lay = self.layouts[k]
        data = self.messages[k]
        pays = [bytearray(data[a:b]) for a, b in lay.payloads]
        j = rng.randrange(len(pays))
        p = pays[j]
        how = rng.randrange(9)
        if how == 0 and p:
            _flip_bits(rng, p, k=rng.randint(1, 4))
        elif how == 1 and p:
            _set_bytes(rng, p)
        elif how == 2:  # cut the end
            del p[max(0, len(p) - rng.randint(1, max(1, len(p)))):]
        elif how == 3:  # grow
            p += _rand_bytes(rng, rng.randint(1, 64))
        elif how == 4:  # all zeros / all ones
            p[:] = bytes([rng.choice([0, 0xFF])]) * len(p)
        elif how == 5:  # random bytes, same length
            p[:] = _rand_bytes(rng, len(p))
        elif how == 6 and p:  # insert bytes in the middle
            at = rng.randrange(len(p))
            p[at:at] = _rand_bytes(rng, rng.randint(1, 8))
        elif how == 7 and p:  # delete bytes in the middle
            at = rng.randrange(len(p))
            del p[at: at + rng.randint(1, 8)]
        elif p:  # the first bytes (the rANS state) only
            for i in range(min(4, len(p))):
                p[i] = rng.randrange(256)
        return _rebuild(lay, [bytes(x) for x in pays])

    def _payload_swap_crc(self, rng, k):
        lay = self.layouts[k]
        data = self.messages[k]
        pays = [data[a:b] for a, b in lay.payloads]
        o = rng.randrange(len(self.messages))
        olay = self.layouts[o]
        opays = [self.messages[o][a:b] for a, b in olay.payloads]
        how = rng.randrange(4)
        if how == 0 and len(pays) == 2:  # y and z swapped
            new = [pays[1], pays[0]]
        elif how == 1:  # all payloads of another message (another image, or another rung)
            new = opays
        elif how == 2 and len(pays) == 2 and len(opays) == 2:  # z of another message, this y
            new = [pays[0], opays[1]]
        else:  # y of another message, this z
            new = [opays[0]] + pays[1:]
        return _rebuild(lay, new)

    def _length_shift_crc(self, rng, k):
        """The payload boundary moved (y shorter, z longer or the reverse), total unchanged: both payloads are
        wrong but every length check passes."""
        lay = self.layouts[k]
        data = self.messages[k]
        pays = [data[a:b] for a, b in lay.payloads]
        if len(pays) < 2:
            return self._payload_edit_crc(rng, k)
        s = rng.choice([-1, 1]) * rng.randint(1, 16)
        ly = min(max(0, lay.lengths[0] + s), lay.lengths[0] + lay.lengths[1])
        return _rebuild(lay, [b"".join(pays)[:ly], b"".join(pays)[ly:]], None)


# ====================================================================================== outcomes
_STAGES = [
    ("crc", re.compile(r"checksum mismatch")),
    ("framing", re.compile(r"bad magic|unsupported bitstream version|expected bytes")),
    ("symbols", re.compile(r"decoded symbols do not match")),
    ("entropy", re.compile(r"entropy decoding failed")),
    ("length", re.compile(r"truncated|trailing bytes|bad payload count")),
    ("header", re.compile(r"exceeds the limit|malformed varint|zero-sized|made for bundle|another split point|"
                          r"not in this bundle|input size|latent shapes|rung")),
]


def refusal_stage(message: str) -> str:
    for name, rx in _STAGES:
        if rx.search(message):
            return name
    return "other"


class Tally:
    """Outcome counts, by operator, with the slowest cases and the first failures kept for the report."""

    def __init__(self):
        self.outcomes: Counter = Counter()
        self.by_op: Dict[str, Counter] = defaultdict(Counter)
        self.stages: Counter = Counter()
        self.failures: List[Dict[str, Any]] = []
        self.slowest: List[Tuple[float, int, str]] = []
        self.latency_ms: List[float] = []  # a sample, for percentiles

    def add(self, outcome: str, op: str, index: int, seconds: float, stage: str = "", detail: str = "",
            keep_latency: bool = False):
        self.outcomes[outcome] += 1
        self.by_op[op][outcome] += 1
        if stage:
            self.stages[stage] += 1
        if outcome in ("5xx", "crash", "corrupt", "timeout", "transport") and len(self.failures) < 50:
            self.failures.append({"outcome": outcome, "op": op, "index": index, "detail": detail[:2000]})
        if len(self.slowest) < 5 or seconds > self.slowest[-1][0]:
            self.slowest.append((seconds, index, op))
            self.slowest.sort(reverse=True)
            del self.slowest[5:]
        if keep_latency and len(self.latency_ms) < 200_000:
            self.latency_ms.append(1e3 * seconds)

    def merge(self, d: Dict[str, Any]) -> None:
        self.outcomes.update(d["outcomes"])
        for op, c in d["by_op"].items():
            self.by_op[op].update(c)
        self.stages.update(d["stages"])
        self.failures.extend(d["failures"][: max(0, 50 - len(self.failures))])
        self.slowest = sorted(self.slowest + [tuple(x) for x in d["slowest"]], reverse=True)[:5]
        self.latency_ms.extend(d.get("latency_ms", []))

    def to_dict(self) -> Dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "by_op": {k: dict(v) for k, v in self.by_op.items()},
                "stages": dict(self.stages), "failures": self.failures, "slowest": self.slowest}


def rss_kb(pid: Optional[int] = None, field: str = "VmRSS") -> Optional[int]:
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_trend(points: Sequence[Tuple[float, float]]) -> Dict[str, Any]:
    """RSS samples ``(progress, MB)`` -> the median of the second quarter against the median of the last quarter
    (the first quarter is warm-up: allocator caches, lazily built tables), and the least-squares slope over the
    last three quarters in MB per 100,000 messages. Flat memory: both near zero."""
    pts = sorted(points)
    if len(pts) < 4:
        return {"samples": len(pts)}
    q = len(pts) // 4
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    early, late = med([m for _, m in pts[q:2 * q]]), med([m for _, m in pts[-q:]])
    tail = pts[q:]
    mx = sum(x for x, _ in tail) / len(tail)
    my = sum(y for _, y in tail) / len(tail)
    var = sum((x - mx) ** 2 for x, _ in tail)
    slope = sum((x - mx) * (y - my) for x, y in tail) / var if var else 0.0
    return {"samples": len(pts), "first_mb": pts[0][1], "early_mb": early, "late_mb": late,
            "max_mb": max(m for _, m in pts), "growth_mb": late - early, "slope_mb_per_100k": slope * 1e5}


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100.0 * (len(s) - 1))))]


# ====================================================================================== phase 1: in-process
def _inprocess_worker(wid: int, bundle_dir: str, messages: List[bytes], rungs: List[int], split_tags: List[int],
                      seed: int, conn, current, hang_s: float) -> None:
    """A worker process: takes (start, stop) chunks of indexes on its own pipe, decodes each mutated message,
    answers with the tallies. ``current[wid]`` holds the index being decoded (read by the parent when this process
    dies or hangs). One pipe per worker and no shared queue: a worker that dies holds no lock the others need."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from shared.bitstream import BitstreamError
    from shared.bundle import load_bundle
    from shared.pipeline import LadderCodec

    codec = LadderCodec(load_bundle(bundle_dir))
    codec.preload()
    ref = {m: codec.decode(m)[0] for m in messages}
    mut = Mutator(messages, seed, rungs, split_tags)
    conn.send(("ready", wid, rss_kb()))
    while True:
        task = conn.recv()
        if task is None:
            break
        start, stop = task
        tally = Tally()
        t_chunk = time.perf_counter()
        for i in range(start, stop):
            current[wid] = i
            op, k, data = mut.mutate("inprocess", i)
            expected = ref.get(data)
            if expected is None:
                expected = ref[messages[k]]
            t0 = time.perf_counter()
            try:
                feat, hdr = codec.decode(data)
            except BitstreamError as e:
                dt = time.perf_counter() - t0
                msg = str(e)
                if not msg:
                    tally.add("crash", op, i, dt, detail="BitstreamError without a message")
                else:
                    tally.add("timeout" if dt > hang_s else "refused", op, i, dt, stage=refusal_stage(msg))
                continue
            except Exception as e:  # noqa: BLE001 - exactly what this soak looks for
                tally.add("crash", op, i, time.perf_counter() - t0,
                          detail=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
                continue
            dt = time.perf_counter() - t0
            if feat.shape == expected.shape and torch.equal(feat, expected):
                tally.add("timeout" if dt > hang_s else "correct", op, i, dt)
            else:
                tally.add("corrupt", op, i, dt,
                          detail=f"decoded shape {tuple(feat.shape)} (expected {tuple(expected.shape)}), rung "
                                 f"{hdr.rung}, input {hdr.input_hw}")
        current[wid] = -1
        conn.send(("chunk", wid, (start, stop), tally.to_dict(), rss_kb(), time.perf_counter() - t_chunk))


def run_inprocess(bundle_dir: str, messages: List[bytes], rungs: List[int], split_tags: List[int], n: int,
                  seed: int, workers: int, chunk: int, hang_s: float, progress: bool) -> Dict[str, Any]:
    import multiprocessing as mp
    from collections import deque
    from multiprocessing.connection import wait

    from tqdm import tqdm

    ctx = mp.get_context("spawn")
    max_workers = 64
    current = ctx.Array("q", [-1] * max_workers, lock=False)
    pending = deque((a, min(n, a + chunk)) for a in range(0, n, chunk))
    procs: Dict[int, Any] = {}
    conns: Dict[int, Any] = {}
    assigned: Dict[int, Optional[Tuple[int, int]]] = {}
    next_wid = [0]

    def spawn() -> None:
        wid = next_wid[0]
        next_wid[0] += 1
        if wid >= max_workers:
            raise RuntimeError(f"{max_workers} workers started: too many died")
        parent, child = ctx.Pipe(duplex=True)
        p = ctx.Process(target=_inprocess_worker, args=(wid, bundle_dir, messages, rungs, split_tags, seed, child,
                                                        current, hang_s), daemon=True)
        p.start()
        child.close()
        procs[wid], conns[wid], assigned[wid] = p, parent, None

    def give_work(wid: int) -> None:
        if pending:
            assigned[wid] = pending.popleft()
            try:
                conns[wid].send(assigned[wid])
            except OSError:  # it just died: the chunk stays to do
                pending.appendleft(assigned[wid])
                assigned[wid] = None
        else:
            assigned[wid] = None
            with contextlib.suppress(OSError):
                conns[wid].send(None)

    tally = Tally()
    done_items, rss_series = 0, []
    rss_by_worker: Dict[int, List[Tuple[int, int]]] = defaultdict(list)
    last_move: Dict[int, Tuple[int, float]] = {}
    t_start = None
    bar = tqdm(total=n, desc="in-process", unit="msg", disable=not progress, smoothing=0.05, mininterval=1.0)
    mut = Mutator(messages, seed, rungs, split_tags)
    for _ in range(min(workers, max(1, len(pending)))):
        spawn()

    def lost(wid: int, hung: bool) -> None:
        """A worker died or hung: a crash (or a hang) at the index it held; the rest of its chunk goes back."""
        nonlocal done_items
        p = procs.pop(wid)
        conn = conns.pop(wid)
        if p.is_alive():
            p.kill()
        p.join(5)
        conn.close()
        cur, chunk_held = current[wid], assigned.pop(wid, None)
        if chunk_held is not None:
            if cur < chunk_held[0] or cur >= chunk_held[1]:
                cur = chunk_held[0]  # died before it started the chunk: count its first index
            op, _, _ = mut.mutate("inprocess", cur)
            what = "hung" if hung else f"died (exit code {p.exitcode})"
            tally.add("timeout" if hung else "crash", op, cur, 0.0,
                      detail=f"worker {wid} {what} at index {cur}; replay: python benchmarks/fuzz_soak.py "
                             f"--replay inprocess:{cur} --seed {seed}")
            done_items += 1
            bar.update(1)
            # what it decoded before (its tallies died with it) and what it had not reached are done again
            if cur + 1 < chunk_held[1]:
                pending.appendleft((cur + 1, chunk_held[1]))
            if chunk_held[0] < cur:
                pending.appendleft((chunk_held[0], cur))
        if done_items < n:
            spawn()

    def handle(wid: int, msg, more: bool = True) -> None:
        nonlocal done_items, t_start
        kind = msg[0]
        if kind == "ready":
            t_start = t_start or time.perf_counter()
            rss_by_worker[wid].append((done_items, msg[2]))
            if more:
                give_work(wid)
        elif kind == "chunk":
            _, _, (a, b), d, rss, _ = msg
            assigned[wid] = None
            tally.merge(d)
            done_items += b - a
            bar.update(b - a)
            rss_by_worker[wid].append((done_items, rss))
            rss_series.append((round(time.perf_counter() - (t_start or time.perf_counter()), 1), done_items,
                               wid, rss))
            bar.set_postfix(refused=tally.outcomes["refused"], correct=tally.outcomes["correct"],
                            bad=sum(tally.outcomes[o] for o in ("crash", "corrupt", "timeout")), refresh=False)
            if more:
                give_work(wid)

    while done_items < n and procs:
        ready = wait(list(conns.values()) + [p.sentinel for p in procs.values()], timeout=1.0)
        by_conn = {c: w for w, c in conns.items()}
        gone = set()
        for obj in ready:
            wid = by_conn.get(obj)
            if wid is None or wid in gone:
                continue
            try:
                msg = obj.recv()
            except (EOFError, OSError):
                gone.add(wid)  # its process is gone (every message it sent was read before the EOF)
                continue
            handle(wid, msg)
        now = time.monotonic()
        for wid in list(procs):
            p, cur = procs[wid], current[wid]
            prev = last_move.get(wid)
            if prev is None or prev[0] != cur:
                last_move[wid] = (cur, now)
                prev = last_move[wid]
            if wid in gone or not p.is_alive():
                with contextlib.suppress(EOFError, OSError):  # its last messages first
                    while conns[wid].poll():
                        handle(wid, conns[wid].recv(), more=False)
                if done_items >= n:
                    break
                if assigned.get(wid) is None and not pending:
                    procs.pop(wid).join(5)  # finished, nothing left to give it
                    conns.pop(wid).close()
                    continue
                lost(wid, hung=False)
            elif cur >= 0 and assigned.get(wid) is not None and now - prev[1] > max(60.0, 4 * hang_s):
                lost(wid, hung=True)
    bar.close()
    elapsed = time.perf_counter() - (t_start or time.perf_counter())
    for wid, conn in conns.items():
        with contextlib.suppress(OSError):
            conn.send(None)
    for wid, p in procs.items():
        p.join(10)
        if p.is_alive():
            p.kill()
    sent = sum(tally.outcomes.values())
    mem = {wid: memory_trend([(d, r / 1024) for d, r in pts if r]) for wid, pts in rss_by_worker.items()}
    full = [m for m in mem.values() if "growth_mb" in m]
    growth = max((m["growth_mb"] for m in full), default=None)
    slope = max((m["slope_mb_per_100k"] for m in full), default=None)
    return {"phase": "inprocess", "sent": sent, "seconds": elapsed, "rate_per_s": sent / elapsed if elapsed else 0,
            "workers": workers, **tally.to_dict(),
            "memory": {"workers": mem, "growth_mb": growth, "slope_mb_per_100k": slope},
            "rss_series": rss_series[:: max(1, len(rss_series) // 200)]}


# ====================================================================================== server subprocess
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m splitinfer serve`` as a subprocess on free loopback ports, with its log in a file: a crash of
    the server is the process exiting, visible here."""

    def __init__(self, bundle_dir: str, name: str, weights: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                 log_dir: Optional[str] = None, rest: bool = True, grpc_: bool = True, preload: bool = True,
                 root: Optional[Path] = None):
        self.root = Path(root or ROOT)  # the checkout whose server runs
        self.bundle_dir, self.name, self.weights = str(bundle_dir), name, weights
        self.env = {"SPLITINFER_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="splitinfer-soak-")
        self.rest, self.grpc_, self.preload = rest, grpc_, preload
        self.proc: Optional[subprocess.Popen] = None
        self.http_port = self.grpc_port = None
        self.starts = 0
        self.log_path = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 180.0) -> "ServerProcess":
        self.http_port, self.grpc_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "splitinfer", "serve", "--bundle", f"{self.name}={self.bundle_dir}",
               "--host", "127.0.0.1", "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        if self.weights:
            cmd += ["--weights", self.weights]
        if self.preload:
            cmd += ["--preload"]
        if not self.rest:
            cmd += ["--no-rest"]
        if not self.grpc_:
            cmd += ["--no-grpc"]
        self.starts += 1
        self.log_path = Path(self.log_dir) / f"server-{self.starts}.log"
        env = {**os.environ, **self.env, "PYTHONPATH": str(self.root)}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.cmd = cmd
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.alive():
                raise RuntimeError(f"the server exited at start (code {self.proc.returncode}):\n{self.log_tail()}")
            if self.ready():
                self.rss_start_kb = rss_kb(self.pid)
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the server did not become ready in {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        if self.grpc_ and not self.health_grpc(1.0)[0]:
            return False
        if self.rest and not self.health_rest(1.0)[0]:
            return False
        return True

    def health_grpc(self, timeout: float = 5.0) -> Tuple[bool, float, str]:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        t0 = time.perf_counter()
        ch = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            ok = r.status == health_pb2.HealthCheckResponse.SERVING
            return ok, time.perf_counter() - t0, "" if ok else f"status {r.status}"
        except grpc.RpcError as e:
            return False, time.perf_counter() - t0, e.code().name if e.code() else str(e)
        finally:
            ch.close()

    def health_rest(self, timeout: float = 5.0) -> Tuple[bool, float, str]:
        import httpx

        t0 = time.perf_counter()
        try:
            r = httpx.get(f"http://127.0.0.1:{self.http_port}/v2/health/live", timeout=timeout)
            return r.status_code == 200, time.perf_counter() - t0, str(r.status_code)
        except httpx.HTTPError as e:
            return False, time.perf_counter() - t0, type(e).__name__

    def rss_mb(self) -> Optional[float]:
        kb = rss_kb(self.pid) if self.alive() else None
        return kb / 1024 if kb else None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return Path(self.log_path).read_bytes()[-n:].decode(errors="replace")
        except (OSError, TypeError):
            return ""

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Monitor(threading.Thread):
    """Samples the server every ``every`` seconds: alive, gRPC and REST health checks, RSS."""

    def __init__(self, server: ServerProcess, every: float = 2.0, grpc_: bool = True, rest: bool = True):
        super().__init__(daemon=True)
        self.server, self.every, self.grpc_, self.rest = server, every, grpc_, rest
        self.stop_event = threading.Event()
        self.samples: List[Dict[str, Any]] = []
        self.health_failures: List[Dict[str, Any]] = []
        self.deaths = 0
        self.t0 = time.perf_counter()
        self.progress: Callable[[], int] = lambda: 0
        self.paused = False  # while the server restarts after a crash (already counted)

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            self.sample()

    def sample(self) -> None:
        s = self.server
        t = round(time.perf_counter() - self.t0, 1)
        if not s.alive() or self.paused:
            return
        rec = {"t": t, "done": self.progress(), "rss_mb": s.rss_mb()}
        for name, on, check in (("grpc", self.grpc_, s.health_grpc), ("rest", self.rest, s.health_rest)):
            if on:
                ok, dt, why = check(5.0)
                rec[f"{name}_health_ms"] = round(1e3 * dt, 1)
                if not ok and s.alive() and not self.paused:
                    self.health_failures.append({"t": t, "check": name, "why": why})
        self.samples.append(rec)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


# ====================================================================================== front-end senders
def grpc_answer(r) -> Tuple[int, Tuple[int, ...]]:
    return int(r.rung), tuple(int(c.index) for c in r.topk)


GRPC_CLEAN = {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"}
GRPC_5XX = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}


class GrpcSender:
    def __init__(self, port: int, model: str, timeout: float):
        import grpc

        from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

        self.grpc, self.pb = grpc, pb
        opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", opts)
        self.stub = pb_grpc.SplitInferenceStub(self.channel)
        self.model, self.timeout = model, timeout

    def send(self, data: bytes, rid: str) -> Tuple[str, Any, str]:
        """-> (class, answer or None, detail)"""
        try:
            r = self.stub.Infer(self.pb.InferRequest(model=self.model, bitstream=data, request_id=rid),
                                timeout=self.timeout)
            return "ok", grpc_answer(r), ""
        except self.grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            detail = f"{code}: {e.details()}"
            if code in GRPC_CLEAN:
                return "refused", None, detail
            if code in GRPC_5XX:
                return "5xx", None, detail
            if code == "DEADLINE_EXCEEDED":
                return "timeout", None, detail
            if code == "UNAVAILABLE":
                return "transport", None, detail
            return "other", None, detail

    def close(self):
        self.channel.close()


# --- REST: how a bitstream travels in POST /v2/models/{name}/infer. One small function per framing. ---------------
def rest_body_kserve(data: bytes, rid: str) -> Tuple[bytes, Dict[str, str]]:
    """The Open Inference Protocol binary tensor extension as specified (Triton, KServe; tritonclient's
    serialize_byte_tensor): each BYTES element is a 4-byte little-endian length followed by its bytes."""
    blob = struct.pack("<I", len(data)) + data
    header = json.dumps({"id": rid, "inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                                                "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return header + blob, {"content-type": "application/octet-stream",
                           "inference-header-content-length": str(len(header))}


def rest_body_legacy(data: bytes, rid: str) -> Tuple[bytes, Dict[str, str]]:
    """What edge_client.transports.RestTransport sends today: the raw bitstream after the JSON header, no length prefix."""
    header = json.dumps({"id": rid, "inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                                                "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, {"content-type": "application/octet-stream",
                           "inference-header-content-length": str(len(header))}


def rest_body_json(data: bytes, rid: str) -> Tuple[bytes, Dict[str, str]]:
    """JSON only: the bitstream as one base64 string."""
    doc = {"id": rid, "inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                                  "data": [base64.b64encode(data).decode()]}]}
    return json.dumps(doc).encode(), {"content-type": "application/json"}


REST_FORMATS: Dict[str, Callable[[bytes, str], Tuple[bytes, Dict[str, str]]]] = {
    "kserve": rest_body_kserve, "legacy": rest_body_legacy, "json": rest_body_json}


def rest_answer(doc: Dict[str, Any]) -> Tuple[Optional[int], Tuple[int, ...]]:
    outs = {o.get("name"): o for o in doc.get("outputs", [])}
    idx = outs.get("topk_index", {}).get("data", [])
    rung = (doc.get("parameters") or {}).get("rung")
    return (int(rung) if rung is not None else None), tuple(int(x) for x in idx)


def classify_http(status: int) -> str:
    if status == 200:
        return "ok"
    if status in (400, 413, 422):
        return "refused"
    if status >= 500:
        return "5xx"
    return "other"


class RestSender:
    def __init__(self, port: int, model: str, timeout: float, fmt: str):
        import httpx

        self.httpx = httpx
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=timeout)
        self.path = f"/v2/models/{model}/infer"
        self.body = REST_FORMATS[fmt]

    def send(self, data: bytes, rid: str) -> Tuple[str, Any, str]:
        content, headers = self.body(data, rid)
        try:
            r = self.client.post(self.path, content=content, headers=headers)
        except self.httpx.TimeoutException as e:
            return "timeout", None, repr(e)
        except self.httpx.HTTPError as e:
            return "transport", None, repr(e)
        cls = classify_http(r.status_code)
        if cls == "ok":
            try:
                return "ok", rest_answer(r.json()), ""
            except (ValueError, KeyError, TypeError) as e:
                return "5xx", None, f"200 with an unreadable body: {e}: {r.text[:200]}"
        return cls, None, f"{r.status_code}: {r.text[:300]}"

    def close(self):
        self.client.close()


class TritonRestSender:
    """tritonclient.http, unmodified, with default calls (binary BYTES input, no outputs named)."""

    def __init__(self, port: int, model: str, timeout: float, fmt: str = ""):
        import numpy as np
        import tritonclient.http as th
        from tritonclient.utils import InferenceServerException

        self.np, self.th, self.exc = np, th, InferenceServerException
        self.client = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=timeout,
                                               network_timeout=timeout)
        self.model = model

    def send(self, data: bytes, rid: str) -> Tuple[str, Any, str]:
        inp = self.th.InferInput("bitstream", [1], "BYTES")
        inp.set_data_from_numpy(self.np.array([data], dtype=self.np.object_), binary_data=True)
        try:
            res = self.client.infer(self.model, [inp], request_id=rid)
        except self.exc as e:
            status = str(e.status() or "")
            code = int(status) if status.isdigit() else None
            if code is None:
                return "transport", None, str(e)[:300]
            return classify_http(code), None, f"{code}: {e.message()[:300]}"
        except Exception as e:  # noqa: BLE001 - socket errors of geventhttpclient
            return "transport", None, repr(e)[:300]
        resp = res.get_response()
        idx = res.as_numpy("topk_index")
        rung = (resp.get("parameters") or {}).get("rung")
        return "ok", ((int(rung) if rung is not None else None),
                      tuple(int(x) for x in (idx.reshape(-1) if idx is not None else []))), ""

    def close(self):
        self.client.close()


def make_rest_sender(kind: str, port: int, model: str, timeout: float, fmt: str):
    return (TritonRestSender if kind == "tritonclient" else RestSender)(port, model, timeout, fmt)


def pick_rest_format(port: int, model: str, messages: List[bytes], want: Dict[bytes, Any], timeout: float,
                     fmt: str) -> Tuple[Optional[str], Dict[str, str]]:
    """``auto``: the first framing under which every unmutated message gets its gRPC answer (KServe first)."""
    tried = {}
    for f in (["kserve", "legacy", "json"] if fmt == "auto" else [fmt]):
        s = RestSender(port, model, timeout, f)
        try:
            bad = None
            for m in messages[:3]:
                cls, ans, detail = s.send(m, "probe")
                if cls != "ok" or (want.get(m) is not None and ans != want[m]):
                    bad = detail or f"answer {ans} != {want.get(m)}"
                    break
            tried[f] = bad or "ok"
            if bad is None:
                return f, tried
        finally:
            s.close()
    return None, tried


# ====================================================================================== phases 2-3: front ends
def run_front_end(phase: str, server: ServerProcess, model: str, mut: Mutator, n: int, clients: int,
                  timeout: float, make_sender: Callable[[], Any], reference: Dict[bytes, Any], progress: bool,
                  max_restarts: int = 3) -> Dict[str, Any]:
    from tqdm import tqdm

    tally = Tally()
    lock = threading.Lock()
    counter = iter(range(n))
    inflight: Dict[int, int] = {}
    done = [0]
    crashes: List[Dict[str, Any]] = []
    monitor = Monitor(server, every=2.0, grpc_=server.grpc_, rest=server.rest)
    monitor.progress = lambda: done[0]
    restart_lock = threading.Lock()
    stop_all = threading.Event()
    bar = tqdm(total=n, desc=phase, unit="req", disable=not progress, smoothing=0.05, mininterval=1.0)

    def ensure_server() -> bool:
        """After a transport error: if the server died, record the crash (with the requests in flight) and restart
        it (new ports: each client thread makes a new sender when it sees ``server.starts`` change). True when this
        call found it dead (the one request that counts the crash)."""
        with restart_lock:
            if server.alive():
                return False
            with lock:
                recent = sorted(inflight.values())
            crashes.append({"exit_code": server.proc.returncode, "done": done[0], "in_flight": recent,
                            "log_tail": server.log_tail(3000),
                            "replay": [f"python benchmarks/fuzz_soak.py --replay {phase}:{i} --seed {mut.seed}"
                                       for i in recent[:5]]})
            if len(crashes) > max_restarts:
                stop_all.set()
                return True
            monitor.paused = True
            try:
                server.start()
            finally:
                monitor.paused = False
            return True

    def worker(tid: int) -> None:
        sender, started = make_sender(), server.starts
        try:
            while not stop_all.is_set():
                if server.starts != started:  # restarted after a crash: new ports
                    sender.close()
                    sender, started = make_sender(), server.starts
                with lock:
                    i = next(counter, None)
                    if i is None:
                        return
                    inflight[tid] = i
                op, k, data = mut.mutate(phase, i)
                t0 = time.perf_counter()
                cls, ans, detail = sender.send(data, str(i))
                dt = time.perf_counter() - t0
                if cls == "ok":
                    want = reference.get(data, reference[mut.messages[k]])
                    if ans == want:
                        cls = "correct"
                    else:
                        cls, detail = "corrupt", f"answer {ans}, expected {want}"
                if cls == "transport" and ensure_server():
                    cls = "crash"
                with lock:
                    tally.add(cls, op, i, dt, detail=detail, keep_latency=True)
                    done[0] += 1
                    inflight.pop(tid, None)
                bar.update(1)
        finally:
            sender.close()

    monitor.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    monitor.stop()
    monitor.sample()
    bar.close()
    died = not server.alive()
    if died and not crashes:
        crashes.append({"exit_code": server.proc.returncode, "done": done[0], "log_tail": server.log_tail(3000)})
    health_fail = [h for h in monitor.health_failures]
    out = {"phase": phase, "sent": sum(tally.outcomes.values()), "seconds": elapsed,
           "rate_per_s": sum(tally.outcomes.values()) / elapsed if elapsed else 0, "clients": clients,
           **tally.to_dict(), "server_crashes": crashes, "health_failures": health_fail,
           "latency_ms": {"p50": pct(tally.latency_ms, 50), "p99": pct(tally.latency_ms, 99),
                          "max": max(tally.latency_ms, default=float("nan"))}}
    rss = [(s["done"], s["rss_mb"]) for s in monitor.samples if s.get("rss_mb")]
    if rss:
        out["memory"] = {"server_start_mb": (server.rss_start_kb or 0) / 1024, **memory_trend(rss)}
    out["rss_series"] = monitor.samples[:: max(1, len(monitor.samples) // 200)]
    # a health check failing while the server runs counts as a crash too (it stopped answering), and so does a
    # death no request noticed
    out["outcomes"]["crash"] = out["outcomes"].get("crash", 0) + len(health_fail) + \
        sum(1 for c in crashes if c.get("in_flight") is None)
    return out


# ====================================================================================== setup, report
def encode_messages(bundle_dir: str, weights: Optional[str], images: str, max_images: int) -> Tuple[List[bytes], Any]:
    import torch

    torch.set_num_threads(1)
    from edge_client import EdgeEncoder
    from shared.bundle import load_bundle
    from shared.data import scan_images

    bundle = load_bundle(bundle_dir)
    enc = EdgeEncoder(bundle, weights=weights)
    items = scan_images(images, labels=False)[:max_images]
    if not items:
        raise SystemExit(f"no images in {images}")
    msgs = [enc.encode(path, rung=r.index).data for r in bundle.rungs for path, _ in items]
    return msgs, bundle


def other_split_tags(bundle) -> List[int]:
    """Split tags of the model's other split points (a real message for another split of the same network)."""
    from shared.bitstream import split_tag

    try:
        from shared.models import get_backbone

        return [split_tag(bundle.model, s.name) for s in get_backbone(bundle.model).splits if s.name != bundle.split]
    except Exception:  # noqa: BLE001 - only a source of plausible values
        return [split_tag(bundle.model, "other")]


def fmt_row(name: str, r: Dict[str, Any]) -> str:
    o = r.get("outcomes", {})
    cells = [f"{r.get('sent', 0):>10,}"] + [f"{o.get(k, 0):>10,}" for k in OUTCOMES]
    mem = r.get("memory", {})
    g = mem.get("growth_mb")
    return (f"{name:<11}" + "".join(cells) + f" {r.get('rate_per_s', 0):>9.1f} {r.get('seconds', 0):>8.1f}"
            + (f" {g:>+9.1f}" if g is not None else f" {'-':>9}"))


def print_report(results: Dict[str, Any]) -> None:
    print()
    print(f"{'phase':<11}{'sent':>10}" + "".join(f"{k:>10}" for k in OUTCOMES)
          + f" {'msg/s':>9} {'seconds':>8} {'RSS MB':>9}")
    for ph in ("inprocess", "grpc", "rest"):
        if ph in results:
            print(fmt_row(ph, results[ph]))
    print("(RSS MB: median of the last quarter of the phase against the second quarter; the worst worker for "
          "in-process, the server for the front ends)")
    for ph in ("inprocess", "grpc", "rest"):
        r = results.get(ph)
        if not r:
            continue
        if r.get("error"):
            print(f"\n{ph}: NOT RUN: {r['error'][:2000]}")
            continue
        print(f"\n{ph}: outcomes by operator")
        cols = ["correct", "refused", "other", "5xx", "timeout", "transport", "crash", "corrupt"]
        print(f"  {'operator':<20}" + "".join(f"{c:>10}" for c in cols))
        for op in sorted(r["by_op"]):
            c = r["by_op"][op]
            print(f"  {op:<20}" + "".join(f"{c.get(k, 0):>10,}" for k in cols))
        if r.get("stages"):
            total = sum(r["stages"].values())
            print("  refusals by stage: " + ", ".join(f"{k} {v:,} ({100 * v / total:.1f}%)"
                                                     for k, v in sorted(r["stages"].items(), key=lambda x: -x[1])))
        if r.get("slowest"):
            print("  slowest: " + ", ".join(f"#{i} {op} {1e3 * s:.1f} ms" for s, i, op in r["slowest"]))
        if r.get("latency_ms"):
            lat = r["latency_ms"]
            print(f"  latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.1f} ms")
        if r.get("memory"):
            print("  memory (MB): " + json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                                                  for k, v in r["memory"].items() if k != "workers"}))
            for wid, m in (r["memory"].get("workers") or {}).items():
                print(f"    worker {wid}: " + json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                                                         for k, v in m.items()}))
        if r.get("server_crashes"):
            print(f"  SERVER CRASHES: {len(r['server_crashes'])}")
            for c in r["server_crashes"]:
                print("   ", json.dumps({k: v for k, v in c.items() if k != "log_tail"}))
                print("    log tail:", c.get("log_tail", "")[-1500:])
        if r.get("health_failures"):
            print(f"  HEALTH CHECK FAILURES: {len(r['health_failures'])}: {r['health_failures'][:5]}")
        for f in r.get("failures", [])[:10]:
            print(f"  FAILURE {f['outcome']} #{f['index']} ({f['op']}): {f['detail'][:600]}")
            print(f"    replay: python benchmarks/fuzz_soak.py --replay {ph}:{f['index']} --seed {results['seed']}")
    print()
    goal = results.get("goal")
    if goal:
        print(f"goal (>= {GOAL_INPROCESS:,} in-process + {GOAL_FRONT_END:,} per front end, 0 crashes, 0 silent "
              f"corruption): {goal}")


def evaluate_goal(results: Dict[str, Any]) -> str:
    bad = sum(results[p]["outcomes"].get(k, 0) for p in ("inprocess", "grpc", "rest") if p in results
              for k in ("crash", "corrupt", "5xx", "timeout"))
    sizes = [results.get("inprocess", {}).get("sent", 0) >= GOAL_INPROCESS,
             results.get("grpc", {}).get("sent", 0) >= GOAL_FRONT_END,
             results.get("rest", {}).get("sent", 0) >= GOAL_FRONT_END]
    scale = "full scale" if all(sizes) else "NOT full scale (a short run)"
    return f"{'MET' if not bad and all(sizes) else 'NOT met'}: {bad} crashes/corruptions/5xx/hangs, {scale}"


def replay(spec: str, seed: int, bundle_dir: str, weights: Optional[str], images: str, max_images: int,
           dump: Optional[str]) -> int:
    phase, _, idx = spec.partition(":")
    if phase not in PHASES:
        raise SystemExit(f"--replay PHASE:INDEX with PHASE in {list(PHASES)}")
    messages, bundle = encode_messages(bundle_dir, weights, images, max_images)
    mut = Mutator(messages, seed, [r.index for r in bundle.rungs], other_split_tags(bundle))
    op, k, data = mut.mutate(phase, int(idx))
    print(f"{phase}:{idx} seed {seed}: operator {op}, from message {k} ({len(messages[k])} bytes) -> {len(data)} bytes")
    print(f"hex (first 96 bytes): {data[:96].hex()}")
    if dump:
        Path(dump).write_bytes(data)
        print(f"wrote {dump}; send it with: curl -s localhost:8000/v2/models/{bundle.model}-{bundle.split}/infer "
              f"-H 'content-type: application/json' -d \"{{\\\"inputs\\\":[{{\\\"name\\\":\\\"bitstream\\\","
              f"\\\"datatype\\\":\\\"BYTES\\\",\\\"shape\\\":[1],\\\"data\\\":[\\\"$(base64 -w0 {dump})\\\"]}}]}}\"")
    import torch

    from shared.bitstream import BitstreamError
    from shared.pipeline import LadderCodec

    codec = LadderCodec(bundle)
    ref = codec.decode(messages[k])[0]
    t0 = time.perf_counter()
    try:
        feat, hdr = codec.decode(data)
    except BitstreamError as e:
        print(f"refused ({refusal_stage(str(e))}) in {1e3 * (time.perf_counter() - t0):.1f} ms: {e}")
        return 0
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("CRASH: an exception other than BitstreamError")
        return 1
    same = feat.shape == ref.shape and torch.equal(feat, ref)
    what = "the original feature" if same else "ANOTHER FEATURE (silent corruption)"
    print(f"decoded in {1e3 * (time.perf_counter() - t0):.1f} ms: {what} (rung {hdr.rung}, input {hdr.input_hw})")
    return 0 if same else 1


def git_state() -> Dict[str, Any]:
    """The commit, and a fingerprint of the uncommitted changes to tracked files (the tree measured)."""
    import hashlib

    def run(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [ln[3:] for ln in run("status", "--porcelain", "--untracked-files=no").splitlines()]
    diff = run("diff", "HEAD")
    return {"commit": run("rev-parse", "--short", "HEAD").strip(), "dirty_files": len(dirty),
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if dirty else None, "dirty": dirty}


def git_label(g: Dict[str, Any]) -> str:
    if "commit" not in g:
        return json.dumps(g)
    dirty = f" + {g['dirty_files']} modified files (diff {g['diff_sha1']})" if g.get("dirty_files") else ""
    return g["commit"] + dirty


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (default: the embedded block1 ladder)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--images", default=str(SAMPLES), help="images whose real messages are mutated (default: samples)")
    p.add_argument("--max-images", type=int, default=6)
    p.add_argument("--n-inprocess", type=int, default=GOAL_INPROCESS)
    p.add_argument("--n-grpc", type=int, default=GOAL_FRONT_END)
    p.add_argument("--n-rest", type=int, default=GOAL_FRONT_END)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="in-process worker processes")
    p.add_argument("--chunk", type=int, default=500, help="messages per in-process work item")
    p.add_argument("--clients", type=int, default=4, help="client threads per front end")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (s)")
    p.add_argument("--hang-s", type=float, default=10.0, help="in-process: a decode slower than this is a hang")
    p.add_argument("--rest-format", default="auto", choices=["auto", *REST_FORMATS],
                   help="how the bitstream travels in REST infer (auto: probe kserve, legacy, json)")
    p.add_argument("--rest-client", default="httpx", choices=["httpx", "tritonclient"])
    p.add_argument("--batch-max-size", type=int, default=1,
                   help="server tail batching (default 1: answers are bit-exact whatever the concurrency)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the server (SPLITINFER_* settings)")
    p.add_argument("--server-root", default=None,
                   help="run the server from this checkout (e.g. an older commit from `git archive`)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replay", default=None, metavar="PHASE:INDEX", help="rebuild and decode one mutation")
    p.add_argument("--dump", default=None, help="with --replay: write the mutated bytes here")
    args = p.parse_args(argv)

    if args.replay:
        return replay(args.replay, args.seed, args.bundle, args.weights, args.images, args.max_images, args.dump)

    progress = not args.no_progress
    t_all = time.perf_counter()
    messages, bundle = encode_messages(args.bundle, args.weights, args.images, args.max_images)
    rungs = [r.index for r in bundle.rungs]
    tags = other_split_tags(bundle)
    mut = Mutator(messages, args.seed, rungs, tags)
    model = f"{bundle.model}-{bundle.split}"
    results: Dict[str, Any] = {
        "seed": args.seed, "git": git_state(), "bundle": bundle.bundle_id, "model": f"{bundle.model}/{bundle.split}",
        "messages": len(messages), "message_bytes": [min(map(len, messages)), max(map(len, messages))],
        "cpus": os.cpu_count(), "python": platform.python_version(), "ops": dict(Mutator.OPS),
        "argv": sys.argv[1:] if argv is None else argv,
        "server_root": str(Path(args.server_root).resolve()) if args.server_root else None}
    print(f"bundle {bundle.bundle_id} ({bundle.model}/{bundle.split}), {len(messages)} real messages "
          f"({len(rungs)} rungs x {len(messages) // len(rungs)} images, {min(map(len, messages))}-"
          f"{max(map(len, messages))} bytes), seed {args.seed}, {os.cpu_count()} CPUs, git {git_label(results['git'])}")

    if args.n_inprocess > 0:
        r = run_inprocess(str(bundle.root), messages, rungs, tags, args.n_inprocess, args.seed, args.workers,
                          args.chunk, args.hang_s, progress)
        results["inprocess"] = r
        rate = r["rate_per_s"]
        print(f"in-process: {r['sent']:,} messages in {r['seconds']:.1f} s = {rate:.0f}/s with {args.workers} "
              f"workers; 1,000,000 would take {GOAL_INPROCESS / rate / 60:.1f} min here" if rate else "")

    server_env = {"SPLITINFER_BATCH_MAX_SIZE": str(args.batch_max_size)}
    for kv in args.server_env:
        k, _, v = kv.partition("=")
        server_env[k] = v
    for phase, n in (("grpc", args.n_grpc), ("rest", args.n_rest)):
        if n <= 0:
            continue
        server = ServerProcess(str(bundle.root), model, args.weights, env=server_env, root=args.server_root)
        print(f"\n{phase}: starting the server ({' '.join(server_env_str(server_env))} python -m splitinfer serve ...)")
        try:
            server.start()
        except RuntimeError as e:
            results[phase] = {**_empty(phase), "error": f"the server did not start: {e}"}
            print(f"{phase}: NOT RUN: the server did not start: {e}")
            continue
        try:
            gs = GrpcSender(server.grpc_port, model, args.timeout)
            try:
                reference = {}
                for m in messages:
                    cls, ans, detail = gs.send(m, "reference")
                    if cls != "ok":
                        break
                    reference[m] = ans
            finally:
                gs.close()
            if len(reference) != len(messages):
                results[phase] = {**_empty(phase), "error": f"an unmutated message is refused over gRPC: {detail}"}
                print(f"{phase}: NOT RUN: an unmutated message is refused over gRPC: {detail}")
                continue
            if phase == "grpc":
                def make():
                    return GrpcSender(server.grpc_port, model, args.timeout)
                results["grpc"] = run_front_end("grpc", server, model, mut, n, args.clients, args.timeout, make,
                                                reference, progress)
            else:
                if args.rest_client == "tritonclient":
                    probe = TritonRestSender(server.http_port, model, args.timeout)
                    cls, ans, detail = probe.send(messages[0], "probe")
                    probe.close()
                    fmt, tried = ("tritonclient", {"tritonclient": "ok"}) if cls == "ok" else (None, {
                        "tritonclient": detail})
                else:
                    fmt, tried = pick_rest_format(server.http_port, model, messages, reference, args.timeout,
                                                  args.rest_format)
                print(f"rest: framing probe {tried} -> {fmt}")
                if fmt is None:
                    results["rest"] = {**_empty("rest"), "error": f"no framing accepted: {tried}"}
                    print(f"rest: NOT RUN: the server accepts no framing of an unmutated message: {tried}")
                    continue
                rest_ref = {m: (reference[m][0], reference[m][1]) for m in messages}

                def make():
                    return make_rest_sender(args.rest_client, server.http_port, model, args.timeout, fmt)
                results["rest"] = run_front_end("rest", server, model, mut, n, args.clients, args.timeout, make,
                                                rest_ref, progress)
                results["rest"]["framing"] = fmt
                results["rest"]["client"] = args.rest_client
        finally:
            code = server.stop()
            results.setdefault(phase, {})["server_exit_code"] = code
    results["goal"] = evaluate_goal(results)
    results["total_seconds"] = time.perf_counter() - t_all
    print_report(results)
    print(f"total {results['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {args.json}")
    bad = any(results[p]["outcomes"].get(k, 0) for p in ("inprocess", "grpc", "rest") if p in results
              for k in ("crash", "corrupt"))
    return 1 if bad else 0


def _empty(phase: str) -> Dict[str, Any]:
    return {"phase": phase, "sent": 0, "outcomes": {}, "by_op": {}, "stages": {}, "failures": [], "slowest": []}


def server_env_str(env: Dict[str, str]) -> List[str]:
    return [f"{k}={v}" for k, v in sorted(env.items())]


if __name__ == "__main__":
    sys.exit(main())
