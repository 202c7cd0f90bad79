"""Rate control with a variable-rate bundle (issue 16), measured in one run on the torch-free edge.

1. **Per image**: for each hint B (bpp), every held-out image is encoded with ``bitrate=B`` (each message must
   fit B, headers included). Reports how many messages exceed B, the mean rate against B, the levels chosen,
   the trial encodes, and (with torch) the decoded top-1 and agreement with the unsplit model.
2. **Stream**: 300 CamVid frames in order (the test sequences, then the val ones: a real camera) under
   ``StreamRateController`` at K kbit/s and F fps; reports the sent rate over every 30-frame window against K
   and draws the rate against the target (``--plot``).
3. **A link that changes** (``--link-plot``): the same frames, sent at 10 fps over a simulated link
   (``tests/linksim.py``'s ``SimulatedLink``: one message at a time, 30 ms round trip) of K, then 0.4 K, then
   0.75 K kbit/s for a third of the stream each (K: 0.1 bpp at 10 fps), the hint asking 1.25 K: following the link
   (``LinkRateTracker``, from the answers' delays) against the hint alone. Reports the sent rate over every
   30-frame window against the link and each frame's delay beyond the round trip (its own transmission and the
   queue ahead of it), from 6 s after each change (4 s after the start).
4. **Edge time per frame**: preprocessing, head, encoder and coding with rate control (a per-image hint) against
   a fixed level, interleaved, medians of repeats.

    python benchmarks/rate_control.py --bundle runs/vbr/deep --data ../shared/data/imagenet_val \\
        --camvid ../shared/data/camvid --plot docs/bench/rate_control.png --link-plot docs/bench/link_tracking.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HINTS = (0.05, 0.1, 0.2, 0.4, 0.8)


def _frames(camvid: Path, n: int):
    frames = []
    for part in ("test", "val"):
        frames += sorted((camvid / part).glob("*.*"))
    if len(frames) < n:
        raise SystemExit(f"{camvid}: {len(frames)} frames, {n} wanted")
    return frames[:n]


def sizes(bundle: str, ladders) -> None:
    """Bytes of the weight files (what ships per bundle), the network against each ladder given."""
    from shared.bundle import load_bundle

    def weights(path) -> int:
        b = load_bundle(path)
        return sum((b.root / r.file).stat().st_size for r in b.rungs)

    mine = weights(bundle)
    print(f"\n0. size: the network's weight file {mine / 1e6:.2f} MB")
    for lad in ladders:
        n, total = len(load_bundle(lad).rungs), weights(lad)
        print(f"   against {lad} ({n} rung files, {total / 1e6:.2f} MB): {mine / total:.4f} (goal <= 1/4)")


def per_image(enc, items, hints, model=None, codec=None):
    from shared.imageprep import load_image

    pre = enc.preprocess_spec
    px = pre.input_size[0] * pre.input_size[1]
    rows = {b: {"bytes": [], "levels": [], "trials": [], "over": 0, "top1": 0, "agree": 0, "fits": 0} for b in hints}
    for path, label in items:
        x = enc.preprocess(load_image(path))
        ref = None
        if model is not None:
            import torch

            with torch.no_grad():
                xt = torch.from_numpy(x)
                ref = int(model.tail(model.head(xt), xt).argmax(1))
        for b in hints:
            c = enc.encode_variable(x, max_bytes=b * px / 8.0)  # the same path the client runs
            r = rows[b]
            r["bytes"].append(len(c.message))
            r["levels"].append(c.level)
            r["trials"].append(c.trials)
            r["over"] += len(c.message) * 8 / px > b
            r["fits"] += c.fits
            if model is not None:
                import torch

                with torch.no_grad():
                    f, _ = codec.decode(c.message)
                    pred = int(model.tail(f, torch.from_numpy(x)).argmax(1))
                r["top1"] += label is not None and pred == label
                r["agree"] += pred == ref
    n = len(items)
    print(f"\n1. per-image hints, {n} held-out images ({'with' if model is not None else 'without'} decoding)")
    print(f"{'hint bpp':>8} {'over':>5} {'mean bpp':>9} {'mean/hint':>9} {'max/hint':>8} {'levels':>9} "
          f"{'trials':>7} {'top-1':>7} {'agree':>7}")
    for b in hints:
        r = rows[b]
        bpp = np.array(r["bytes"]) * 8 / px
        print(f"{b:>8g} {r['over']:>5d} {bpp.mean():>9.4f} {bpp.mean() / b:>9.3f} {bpp.max() / b:>8.3f} "
              f"{min(r['levels']):>4d}-{max(r['levels']):<4d} {np.mean(r['trials']):>7.2f} "
              + (f"{r['top1'] / n:>7.2%} {r['agree'] / n:>7.2%}" if model is not None else f"{'-':>7} {'-':>7}"))
    return rows


def stream(enc, frames, kbps, fps, window, plot):
    from shared.imageprep import load_image
    from shared.rate import StreamRateController

    ctl = StreamRateController(kbps, fps, enc.levels)
    sent, levels = [], []
    for p in frames:
        f = enc.encode(load_image(p), controller=ctl)
        sent.append(f.n_bytes)
        levels.append(f.level)
    bits = np.array(sent) * 8.0
    win = np.convolve(bits, np.ones(window), "valid") / window * fps / 1000.0  # kbit/s over each window
    dev = win / kbps - 1
    print(f"\n2. stream: {len(frames)} CamVid frames in order at {kbps:g} kbit/s, {fps:g} fps "
          f"({kbps * 1000 / fps / 8:.0f} bytes per frame)")
    print(f"   every {window}-frame window: {win.min():.2f}-{win.max():.2f} kbit/s, deviation "
          f"{dev.min():+.2%} to {dev.max():+.2%} (goal within 5%); whole stream {bits.mean() * fps / 1000:.2f} kbit/s")
    print(f"   frame sizes {int(min(sent))}-{int(max(sent))} bytes (std/mean {np.std(sent) / np.mean(sent):.2f}); "
          f"levels {min(levels)}-{max(levels)}")
    if plot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(111)
        t = np.arange(len(bits))
        ax.plot(t, bits * fps / 1000.0, lw=0.6, color="0.6", label="each frame (kbit/s at this frame's size)")
        ax.plot(t[window - 1:], win, lw=2, label=f"sent, sliding {window}-frame window")
        ax.axhline(kbps, color="k", ls="--", lw=1, label=f"target {kbps:g} kbit/s")
        ax.fill_between(t, kbps * 0.95, kbps * 1.05, color="g", alpha=0.12, label="±5%")
        ax2 = ax.twinx()
        ax2.step(t, levels, where="mid", color="tab:orange", lw=0.8, alpha=0.7)
        ax2.set_ylabel("quality level q", color="tab:orange")
        ax.set_xlabel("frame (CamVid test, then val, in order)")
        ax.set_ylabel("kbit/s")
        ax.set_title(f"Stream rate control: {kbps:g} kbit/s at {fps:g} fps, one variable-rate bottleneck")
        ax.legend(loc="upper left", fontsize=8)
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=120, bbox_inches="tight")
        print(f"   plot: {plot}")
    return dev


def plot_link(plot, t, cap, runs, window, fps, title, delay_label, delay_offset=0.0, extra=None):
    """Both runs over a changing link (``runs``: name -> per frame (bytes, delay, rate aimed at)): the messages'
    rate over a window against the link and the tracker's rate above, the delays below (log); ``extra(ax)``
    draws more on the rates."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.add_subplot(211), fig.add_subplot(212)
    ax.step(t, [cap(x) for x in t], where="post", color="k", lw=1.5, label="link")
    for (name, run), colour in zip(runs.items(), ("tab:blue", "tab:red")):
        win = np.convolve(run[:, 0], np.ones(window), "valid") / window * 8e-3 * fps
        ax.plot(t[window - 1:], win, color=colour, lw=1.8, label=f"messages, {window}-frame window: {name}")
        ax2.plot(t, run[:, 1] - delay_offset, color=colour, lw=1.2, label=name)
    ax.plot(t, runs["following the link"][:, 2], color="tab:blue", ls=":", lw=1.2, label="rate aimed at (tracker)")
    if extra is not None:
        extra(ax)
    ax.set_ylabel("kbit/s")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel(delay_label)
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="upper left", fontsize=8)
    Path(plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=120, bbox_inches="tight")
    print(f"   plot: {plot}")


def link(enc, frames, kbps, fps, window, plot):
    """Section 3: following a link that changes, against the hint alone (both over the same simulated link)."""
    from shared.imageprep import load_image
    from shared.rate import LinkRateTracker, StreamRateController
    from tests.linksim import SimulatedLink

    images = [load_image(p) for p in frames]
    third = len(images) / fps / 3
    cap = lambda t: kbps * (1.0 if t < third else 0.4 if t < 2 * third else 0.75)  # noqa: E731
    runs = {}
    for name, track in (("following the link", True), ("the hint alone", False)):
        ctl = StreamRateController(1.25 * kbps, fps, enc.levels)
        tracker = LinkRateTracker(1.25 * kbps) if track else None
        runs[name] = SimulatedLink(cap, rtt_s=0.03).stream(
            len(images), fps, lambda k: enc.encode(images[k], controller=ctl).n_bytes, ctl, tracker)
    print(f"\n3. a link of {kbps:g}, {0.4 * kbps:g}, {0.75 * kbps:g} kbit/s ({third:.0f} s each), the hint asking "
          f"{1.25 * kbps:g} kbit/s, {len(images)} frames at {fps:g} fps; from 6 s after each change (4 s after the start), each frame's delay beyond the 30 ms round trip "
          "(its transmission and the queue ahead of it):")
    segments = [(4.0, third), (third + 6.0, 2 * third), (2 * third + 6.0, 3 * third)]
    for name, run in runs.items():
        win = np.convolve(run[:, 0], np.ones(window), "valid") / window * 8e-3 * fps
        t0 = np.arange(len(win)) / fps
        cells = []
        for a, b in segments:
            w = win[(t0 >= a) & (t0 + window / fps <= b)] / cap(a)
            q = run[int(a * fps):int(b * fps), 1] - 0.03
            if not len(w):
                cells.append(f"{cap(a):.0f} kbit/s: too short to settle (give more --frames)")
                continue
            cells.append(f"{cap(a):.0f} kbit/s: windows {w.min():.0%}-{w.max():.0%} (median {np.median(w):.0%}), "
                         f"delay median {np.nanmedian(q):.2f} s, max {np.nanmax(q):.2f} s, "
                         f"{int(np.isnan(q).sum())} frames skipped")
        print(f"   {name}:\n     " + "\n     ".join(cells) + f"\n     whole stream: delay max {np.nanmax(run[:, 1]) - 0.03:.2f} s, "
              f"{int(np.isnan(run[:, 1]).sum())} of {len(run)} frames skipped")
    if plot:
        plot_link(plot, np.arange(len(images)) / fps, cap, runs, window, fps,
                  f"A link that changes: {len(images)} CamVid frames at {fps:g} fps, one variable-rate bottleneck",
                  "delay beyond the round trip (s)", delay_offset=0.03)
    return runs


def timing(enc, items, hint, repeats):
    from shared.imageprep import load_image

    imgs = [load_image(p) for p, _ in items]
    fixed_level = enc.levels[1]
    t_fixed, t_ctl, trials = [], [], []
    enc.encode(imgs[0], level=fixed_level)  # warm-up
    for _ in range(repeats):
        for img in imgs:  # interleaved: both see the same machine load
            t0 = time.perf_counter()
            enc.encode(img, level=fixed_level)
            t_fixed.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            f = enc.encode(img, bitrate=hint)
            t_ctl.append(time.perf_counter() - t0)
            trials.append(f.trials)
    a, b = statistics.median(t_fixed) * 1e3, statistics.median(t_ctl) * 1e3
    print(f"\n4. edge time per frame (ONNX edge, {len(imgs)} images x {repeats}, medians): fixed level {a:.2f} ms, "
          f"rate control at {hint:g} bpp {b:.2f} ms = {b / a:.2f}x (goal <= 1.3x); mean trial encodes "
          f"{np.mean(trials):.2f}")
    return b / a


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="a variable-rate bundle (or its edge package)")
    p.add_argument("--data", required=True, help="image folder; its held-out part is measured")
    p.add_argument("--camvid", default=None, help="CamVid folder (test/ and val/ frames) for the stream test")
    p.add_argument("--hints", default=",".join(map(str, HINTS)), help="comma-separated bpp hints")
    p.add_argument("--limit", type=int, default=0, help="at most this many held-out images (0 = all)")
    p.add_argument("--kbps", type=float, default=None, help="stream target (default: 0.1 bpp at --fps)")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--timing-images", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-decode", action="store_true", help="skip decoding (no torch needed)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the model's pretrained weights)")
    p.add_argument("--plot", default=None, help="write the stream plot here (PNG)")
    p.add_argument("--link-plot", default=None, help="write the changing-link plot here (PNG)")
    p.add_argument("--no-link", action="store_true", help="skip the changing-link section")
    p.add_argument("--link-fps", type=float, default=10.0,
                   help="frame rate of the changing-link section (its K: 0.1 bpp at this rate; default 10: 300 "
                        "frames are 30 s, 10 s per link rate)")
    p.add_argument("--ladder", action="append", default=[],
                   help="a ladder bundle to compare the size with (repeatable): rung files' bytes against the network's")
    args = p.parse_args(argv)

    from edge_client.runtime import OnnxEdgeEncoder
    from shared.data import scan_images, split_items, spread

    enc = OnnxEdgeEncoder(args.bundle, weights=args.weights)
    if enc.levels is None:
        print(f"error: {args.bundle} is a ladder, not a variable-rate bundle", file=sys.stderr)
        return 2
    items = spread(split_items(scan_images(args.data), "heldout"), args.limit)
    print(f"bundle {enc.bundle.bundle_id} ({enc.bundle.model}/{enc.bundle.split}), levels {enc.levels}, "
          f"ONNX edge with {enc.threads} thread(s)")
    model = codec = None
    if not args.no_decode:
        from shared.models import load_split_model
        from shared.pipeline import LadderCodec

        from shared.bundle import load_bundle

        model = load_split_model(enc.bundle.model, enc.bundle.split, args.weights).eval()
        codec = LadderCodec(load_bundle(args.bundle))  # the cloud's side: the bundle, not the edge package
    sizes(args.bundle, args.ladder)
    per_image(enc, items, [float(v) for v in args.hints.split(",")], model, codec)
    if args.camvid:
        pre = enc.preprocess_spec
        kbps = args.kbps or 0.1 * pre.input_size[0] * pre.input_size[1] * args.fps / 1000.0
        stream(enc, _frames(Path(args.camvid), args.frames), kbps, args.fps, args.window, args.plot)
        if not args.no_link:
            link_kbps = 0.1 * pre.input_size[0] * pre.input_size[1] * args.link_fps / 1000.0
            link(enc, _frames(Path(args.camvid), args.frames), link_kbps, args.link_fps, args.window, args.link_plot)
    timing(enc, items[: args.timing_images], 0.1, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
