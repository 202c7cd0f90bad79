"""Following a real link that changes (``--track-link``), against the hint alone: the server in a network
namespace behind a veth pair whose edge-to-cloud direction a token bucket (``tc tbf``) shapes to K, then 0.4 K,
then 0.75 K kbit/s, a third of the stream each; the real edge client and server, gRPC over TCP. Linux, as root
(``ip netns``, ``tc``); the namespace and links are removed at the end.

A camera of ``--frames`` CamVid frames in order at ``--fps`` (K: 0.1 bpp at that rate), the hint asking 1.25 K;
run once following the link and once with the hint alone. Reports, from 6 s after each change (4 s after the
start), the messages' rate over every 30-frame window and the wire's (the shaped interface's bytes: every protocol's
headers, the answers' TCP acknowledgements) against the link, each frame's answer delay (send to answer:
transmission, queue, the server's decode) and the frames skipped, and draws both runs (``--plot``).

    sudo .venv/bin/python benchmarks/shaped_link.py --bundle shared/assets/bundles/efficientnet_lite0-block14-vr \\
        --camvid ../shared/data/camvid --plot docs/bench/shaped_link.png
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NS, DEV, PEER = "splitinfer-bench", "vsib0", "vsib1"
EDGE_IP, CLOUD_IP, PORT = "10.77.9.1", "10.77.9.2", 50071


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def shape(kbps: float, first: bool = False) -> None:
    """The edge-to-cloud direction at ``kbps`` (a queue of up to 5 s; answers come back unshaped)."""
    sh("tc", "qdisc", "add" if first else "change", "dev", DEV, "root", "tbf", "rate", f"{kbps:.3f}kbit",
       "burst", "1600", "latency", "5s")


def setup(kbps: float) -> None:
    teardown()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", DEV, "type", "veth", "peer", "name", PEER)
    sh("ip", "link", "set", PEER, "netns", NS)
    sh("ip", "addr", "add", f"{EDGE_IP}/24", "dev", DEV)
    sh("ip", "link", "set", DEV, "up")
    for cmd in (("addr", "add", f"{CLOUD_IP}/24", "dev", PEER), ("link", "set", PEER, "up"), ("link", "set", "lo", "up")):
        sh("ip", "netns", "exec", NS, "ip", *cmd)
    shape(kbps, first=True)


def teardown() -> None:
    subprocess.run(["ip", "link", "del", DEV], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def run(client, frames, kbps, fps, track: bool, profile):
    """One stream: per frame (bytes, answer delay s or nan if skipped, kbit/s aimed at or nan), and the wire's
    kbit/s (the shaped interface's transmitted bytes, every protocol's headers and the answers' TCP
    acknowledgements included) sampled every 0.1 s of the stream."""
    from shared.hint import BitrateHint

    start = threading.Event()

    def camera():  # frames at fps, as a camera gives them; the link changes on the stream's clock
        t0 = time.perf_counter()
        start.set()
        for k, p in enumerate(frames):
            time.sleep(max(0.0, t0 + k / fps - time.perf_counter()))
            yield p

    def changes():
        start.wait()
        t0 = time.perf_counter()
        for at, rate in profile[1:]:
            time.sleep(max(0.0, t0 + at - time.perf_counter()))
            shape(rate)

    wire, done = [], threading.Event()

    def sample():
        start.wait()
        t0, counter = time.perf_counter(), Path(f"/sys/class/net/{DEV}/statistics/tx_bytes")
        for k in range(int(len(frames) / fps / 0.1) + 1):
            time.sleep(max(0.0, t0 + k * 0.1 - time.perf_counter()))
            wire.append(int(counter.read_text()))
            if done.is_set():
                break

    shape(profile[0][1])
    threads = [threading.Thread(target=f, daemon=True) for f in (changes, sample)]
    for th in threads:
        th.start()
    out = [(r.n_bytes, np.nan if r.skipped else r.latency_ms / 1e3, r.target_kbps if r.target_kbps is not None else np.nan)
           for r in client.stream(camera(), hint=BitrateHint(kbit_per_s=1.25 * kbps, fps=fps), track_link=track)]
    done.set()
    for th in threads:
        th.join()
    return np.array(out, float), np.diff(wire) * 8e-3 / 0.1


def wait_for(client, server, seconds: float = 180.0) -> None:
    """Until the server (starting in the namespace) answers."""
    from edge_client import ServiceError

    deadline = time.monotonic() + seconds
    while True:
        try:
            client.connect()
            return
        except ServiceError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="a variable-rate bundle")
    p.add_argument("--camvid", required=True, help="CamVid folder (test/ and val/ frames)")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
    p.add_argument("--plot", default=None, help="write the plot here (PNG)")
    p.add_argument("--drain", type=float, default=6.0, help="seconds between the runs (the queue drains)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("error: needs root (ip netns, tc)", file=sys.stderr)
        return 2

    from edge_client.client import EdgeClient
    from shared.bundle import load_bundle

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rate_control import _frames, plot_link

    bundle = load_bundle(args.bundle)
    h, w = bundle.input_size
    kbps = 0.1 * h * w * args.fps / 1000.0
    frames = _frames(Path(args.camvid), args.frames)
    third = len(frames) / args.fps / 3
    profile = [(0.0, kbps), (third, 0.4 * kbps), (2 * third, 0.75 * kbps)]
    cap = lambda t: [r for at, r in profile if at <= t][-1]  # noqa: E731
    setup(kbps)
    server = None
    try:
        cmd = [sys.executable, "-m", "splitinfer", "serve", "--bundle", args.bundle, "--host", CLOUD_IP,
               "--grpc-port", str(PORT), "--no-rest", "--preload"] + (["--weights", args.weights] if args.weights else [])
        server = subprocess.Popen(["ip", "netns", "exec", NS, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs = {}
        for name, track in (("following the link", True), ("the hint alone", False)):
            with EdgeClient(f"{CLOUD_IP}:{PORT}", bundle=args.bundle, weights=args.weights, timeout_s=120) as client:
                wait_for(client, server)
                runs[name] = run(client, frames, kbps, args.fps, track, profile)
            time.sleep(args.drain)  # the queue of the last run drains
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        teardown()
    print(f"a real link (tc tbf on a veth pair, gRPC over TCP) of {', '.join(f'{r:.1f}' for _, r in profile)} kbit/s "
          f"({third:.0f} s each), the hint asking {1.25 * kbps:.1f} kbit/s, {len(frames)} CamVid frames at {args.fps:g} "
          f"fps; from 6 s after each change (4 s after the start): the messages' bytes over every {args.window}-frame "
          "window and the wire's (the interface's bytes: protocol headers, the answers' TCP acknowledgements) "
          "against the link; each frame's answer delay (send to answer):")
    segments = [(4.0, third), (third + 6.0, 2 * third), (2 * third + 6.0, 3 * third)]
    for name, (r, wire) in runs.items():
        win = np.convolve(r[:, 0], np.ones(args.window), "valid") / args.window * 8e-3 * args.fps
        t0 = np.arange(len(win)) / args.fps
        print(f"   {name}:")
        for a, b in segments:
            wl = win[(t0 >= a) & (t0 + args.window / args.fps <= b)] / cap(a)
            d = r[int(a * args.fps):int(b * args.fps), 1]
            if not len(wl):
                print(f"     {cap(a):.1f} kbit/s: too short to settle (give more --frames)")
                continue
            wr = wire[int(a * 10):int(b * 10)].mean() / cap(a) if len(wire) >= int(b * 10) else np.nan
            print(f"     {cap(a):.1f} kbit/s: messages {wl.min():.0%}-{wl.max():.0%} (median {np.median(wl):.0%}), wire "
                  f"{wr:.0%}; delay median {np.nanmedian(d):.2f} s, max {np.nanmax(d):.2f} s; "
                  f"{int(np.isnan(d).sum())} frames skipped")
        sent, seconds = int((~np.isnan(r[:, 1])).sum()), len(r) / args.fps
        msg_kbps = r[:, 0].sum() * 8e-3 / seconds
        print(f"     whole stream: delay max {np.nanmax(r[:, 1]):.2f} s, {len(r)} frames, {len(r) - sent} skipped; "
              f"messages {msg_kbps:.1f} kbit/s, wire {wire.mean():.1f} kbit/s" + (
                  f": {(wire.mean() - msg_kbps) * seconds / 8e-3 / max(sent, 1):.0f} bytes more per frame sent"
                  if np.all(np.isnan(r[-10:, 1]) | (r[-10:, 1] < 1.0)) else " (much still queued at the end)"))
    if args.plot:
        wire = runs["following the link"][1]
        smooth = np.convolve(wire, np.ones(10), "valid") / 10
        plot_link(args.plot, np.arange(len(frames)) / args.fps, cap, {k: r for k, (r, _) in runs.items()}, args.window,
                  args.fps, f"A real shaped link: {len(frames)} CamVid frames at {args.fps:g} fps, gRPC over TCP",
                  "answer delay (s)", extra=lambda ax: ax.plot(0.1 * np.arange(len(smooth)) + 1.0, smooth, lw=1.0,
                                                               color="tab:green", label="wire, 1 s: following the link"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
