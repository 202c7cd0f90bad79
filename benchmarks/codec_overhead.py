"""What the learned bottleneck costs on top of the split backbone, per split point, batch 1, on the CPU.

Edge:  head alone  vs  head + g_a + entropy coding (+ hyperprior) + bitstream packing (``LadderCodec.encode``).
Cloud: tail alone (on the head's own feature)  vs  parse + entropy decoding + g_s + tail
       (``LadderCodec.decode`` then ``run_tail``).
Also: entropy-coding throughput (symbols = y + z elements coded), the cloud's share spent entropy decoding,
and parameters / MACs of each side (``FlopCounterMode``; MACs = FLOPs / 2).

Every stage runs on the same real image within a repeat (images are cycled), stages are interleaved so that
load from other processes hits them alike, and each figure is the median over the repeats after warm-up.
Split points without a trained bundle get an *untrained* bottleneck (default config of ``splitinfer train``):
its transforms cost what a trained one would, its entropy-coding time and bytes are only indicative.

    python benchmarks/codec_overhead.py --bundle /tmp/stage2 --splits block1,block14 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.bitstream import pack  # noqa: E402
from shared.bundle import Bundle, BundleError, default_bundle_path, load_bundle, save_bundle  # noqa: E402
from shared.codec import Bottleneck, BottleneckConfig  # noqa: E402
from shared.codec.compressai_adapter import medians  # noqa: E402
from shared.data import eval_transform, load_image, scan_images  # noqa: E402
from shared.models import load_split_model  # noqa: E402
from shared.pipeline import LadderCodec, bits_per_pixel  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "shared" / "assets" / "samples"
GOAL = 1.15


# ------------------------------------------------------------------------------------------- helpers
def bench(stages: Dict[str, Callable[[int], object]], repeats: int, warmup: int) -> Dict[str, float]:
    """Median seconds of each stage. Repeat ``r`` runs every stage, in turn, on input ``r``."""
    times: Dict[str, List[float]] = {k: [] for k in stages}
    with torch.no_grad():
        for r in range(warmup + repeats):
            for name, fn in stages.items():
                t = time.perf_counter()
                fn(r)
                dt = time.perf_counter() - t
                if r >= warmup:
                    times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def macs(fn: Callable, *args) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2


def n_params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")  # Linux; elsewhere the platform module's (vaguer) answer
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def untrained_bundle(model, split: str, feats: List[torch.Tensor], rate_model: str, root: Path) -> Bundle:
    """One untrained rung, default config for the split's depth (``BottleneckConfig.for_split``, as ``splitinfer
    train``), feature stats from real features; the manifest's shapes and preprocessing come from the model."""
    cfg = BottleneckConfig.for_split(model.split.depth, int(feats[0].shape[1]), rate_model=rate_model)
    net = Bottleneck(cfg).eval()
    f = torch.cat(feats)
    net.set_feature_stats(f.mean(dim=(0, 2, 3)), f.std(dim=(0, 2, 3)))
    return save_bundle(root, model, split, cfg, [net], [0.0])  # runs net.update()


# ------------------------------------------------------------------------------------------- one split
def measure(model, bundle: Bundle, rung: int, xs: List[torch.Tensor], trained: bool, a) -> Dict:
    codec = LadderCodec(bundle)
    net = codec.rung(rung)
    rate = net.rate
    hyper = hasattr(rate, "h_a")
    hw = tuple(xs[0].shape[-2:])
    in_shape = (1, 3, *hw)
    with torch.no_grad():
        P = []
        for x in xs:
            feat = model.head(x)
            y = net._analysis(feat)
            data = codec.encode(feat, hw, rung)[0]
            hdr, payloads = codec.parse(data)
            y_hat, _ = rate.decompress(payloads, hdr.y_hw)
            p = SimpleNamespace(x=x, feat=feat, y=y, data=data, hdr=hdr, payloads=payloads, y_hat=y_hat)
            if hyper:
                med = medians(rate.entropy_bottleneck).reshape(1, -1, 1, 1)
                p.z_sym = rate.side_symbols(y).float()
                p.z_hat = p.z_sym + med
            P.append(p)
    n = len(P)
    fhw = tuple(P[0].feat.shape[-2:])

    def encode(x):
        return codec.encode(model.head(x), hw, rung)[0]

    def decode_and_tail(data):
        feat, hdr = codec.decode(data)
        return model.run_tail(feat, (1, 3, *hdr.input_hw))

    stages = {
        "head": lambda r: model.head(P[r % n].x),
        "edge_total": lambda r: encode(P[r % n].x),
        "g_a": lambda r: net._analysis(P[r % n].feat),
        "entropy_encode": lambda r: rate.compress(P[r % n].y),
        "pack": lambda r: pack(P[r % n].hdr, P[r % n].payloads),
        "tail": lambda r: model.run_tail(P[r % n].feat, in_shape),
        "cloud_total": lambda r: decode_and_tail(P[r % n].data),
        "parse": lambda r: codec.parse(P[r % n].data),
        "entropy_decode": lambda r: rate.decompress(P[r % n].payloads, P[r % n].hdr.y_hw),
        "g_s": lambda r: net._synthesis(P[r % n].y_hat, fhw),
    }
    if hyper:
        def h_s(p):  # what coding runs: the exact integer path, or the float h_s
            return rate.coding_params(p.z_sym, p.hdr.y_hw)

        stages["h_a+h_s"] = lambda r: (rate.h_a(P[r % n].y), h_s(P[r % n]))
        stages["h_s"] = lambda r: h_s(P[r % n])
    t = bench(stages, a.repeats, a.warmup)

    yh, yw = P[0].hdr.y_hw
    zh, zw = P[0].hdr.side_hw
    n_y, n_z = net.cfg.latent * yh * yw, (net.cfg.hyper * zh * zw if hyper else 0)
    sym = n_y + n_z
    p0 = P[0]
    enc_mods = [net.g_a] + ([rate.h_a, rate.h_s] if hyper else [])
    dec_mods = ([rate.h_s] if hyper else []) + [net.g_s]
    m_hs = macs(rate.h_s, p0.z_sym if getattr(rate, "integer", False) else p0.z_hat) if hyper else 0
    compute = {
        "head": {"params": n_params(model.head), "macs": macs(model.head, p0.x)},
        "edge_codec": {"params": n_params(*enc_mods),
                       "macs": macs(net.g_a, p0.feat) + (macs(rate.h_a, p0.y) + m_hs if hyper else 0)},
        "cloud_codec": {"params": n_params(*dec_mods), "macs": m_hs + macs(net.g_s, p0.y_hat)},
        "tail": {"params": n_params(model.tail), "macs": macs(model.run_tail, p0.feat, in_shape)},
    }
    n_bytes = statistics.mean(len(p.data) for p in P)
    res = {
        "model": model.spec.name, "split": model.split.name, "depth": model.split.depth,
        "trained": trained, "bundle_id": bundle.bundle_id if trained else None, "rung": rung,
        "lambda": bundle.rungs[rung].lam if trained else None, "config": net.cfg.to_dict(),
        "feature_shape": list(p0.feat.shape[1:]), "y_shape": [net.cfg.latent, yh, yw],
        "z_shape": [net.cfg.hyper, zh, zw] if hyper else None,
        "bytes_per_image": n_bytes, "bpp": bits_per_pixel(n_bytes, hw),
        "timings_ms": {k: 1e3 * v for k, v in t.items()},
        "edge_ratio": t["edge_total"] / t["head"],
        "cloud_ratio": t["cloud_total"] / t["tail"],
        "symbols": {"y": n_y, "z": n_z, "total": sym},
        "encode_symbols_per_s": sym / t["entropy_encode"],
        "decode_symbols_per_s": sym / t["entropy_decode"],
        "cloud_entropy_decode_share": t["entropy_decode"] / t["cloud_total"],
        "compute": compute,
    }
    if hyper:  # the rANS coder alone: the rate model's time less its hyperprior transforms (derived)
        res["encode_symbols_per_s_coder_only"] = sym / max(t["entropy_encode"] - t["h_a+h_s"], 1e-9)
        res["decode_symbols_per_s_coder_only"] = sym / max(t["entropy_decode"] - t["h_s"], 1e-9)
    return res


def report(r: Dict, n_images: int) -> None:
    t = r["timings_ms"]
    shape = lambda s: "x".join(map(str, s)) if s else "-"  # noqa: E731
    if r["trained"]:
        what = f"rung {r['rung']} (lambda {r['lambda']:g}) of bundle {r['bundle_id']}"
    else:
        what = "UNTRAINED bottleneck (random init, default config, feature stats from real images)"
    print(f"\n== {r['model']} / {r['split']} ({r['depth']}): {what}")
    print(f"   feature {shape(r['feature_shape'])}, y {shape(r['y_shape'])}, z {shape(r['z_shape'])}; "
          f"{r['bytes_per_image']:.0f} B/image ({r['bpp']:.3f} bpp) over {n_images} images")
    if not r["trained"]:
        print("   NOTE: untrained: transform times and MACs are representative; entropy-coding time, bytes "
              "and throughput are only indicative (a trained rate model codes other symbol statistics)")
    row = lambda name, key, extra="": print(f"   {name:<44}{t[key]:9.3f} ms  {extra}")  # noqa: E731
    print("   edge")
    row("head", "head")
    row("head + g_a + entropy coding + packing", "edge_total", f"ratio {r['edge_ratio']:.3f}")
    row("  g_a (encoder transform)", "g_a")
    row("  entropy coding incl. hyperprior (compress)", "entropy_encode")
    if "h_a+h_s" in t:
        row("    of which h_a + h_s", "h_a+h_s")
    row("  bitstream packing (header + CRC32)", "pack")
    print("   cloud")
    row("tail (on the head's own feature)", "tail")
    row("parse + entropy decoding + g_s + tail", "cloud_total", f"ratio {r['cloud_ratio']:.3f}")
    row("  parse (header checks)", "parse")
    row("  entropy decoding incl. hyperprior", "entropy_decode",
        f"{r['cloud_entropy_decode_share']:.1%} of cloud total")
    if "h_s" in t:
        row("    of which h_s", "h_s")
    row("  g_s (decoder transform)", "g_s")
    s = r["symbols"]
    coder = ""
    if "encode_symbols_per_s_coder_only" in r:
        coder = (f"; coder alone (less h_a/h_s, derived) {r['encode_symbols_per_s_coder_only'] / 1e6:.2f} / "
                 f"{r['decode_symbols_per_s_coder_only'] / 1e6:.2f}")
    print(f"   entropy coding: {s['total']} symbols (y {s['y']} + z {s['z']}); Msymbols/s encode "
          f"{r['encode_symbols_per_s'] / 1e6:.2f}, decode {r['decode_symbols_per_s'] / 1e6:.2f}{coder}")
    c = r["compute"]
    print(f"   {'compute (batch 1)':<44}{'params':>10}{'MMACs':>11}")
    for name, key, ref in (("head", "head", None), ("edge codec (g_a + h_a + h_s)", "edge_codec", "head"),
                           ("cloud codec (h_s + g_s)", "cloud_codec", "tail"), ("tail", "tail", None)):
        vs = f"  {c[key]['macs'] / c[ref]['macs']:.1%} of the {ref}'s MACs" if ref and c[ref]["macs"] else ""
        print(f"   {name:<44}{c[key]['params']:>10,}{c[key]['macs'] / 1e6:>11.2f}{vs}")


def goals(results: List[Dict]) -> Dict:
    shallow = [r for r in results if r["depth"] == "shallow"]
    shallow.sort(key=lambda r: not r["trained"])  # a trained ladder first
    out = {}
    for side in ("edge", "cloud"):
        key = f"{side}_ratio"
        if not shallow:
            print(f"{side} ratio goal <= {GOAL} at the shallow split: not measured (no shallow split among "
                  f"{', '.join(r['split'] for r in results)})")
            out[side] = None
            continue
        r = shallow[0]
        met = r[key] <= GOAL
        tag = f"rung {r['rung']}" if r["trained"] else "UNTRAINED bottleneck"
        print(f"{side} ratio goal <= {GOAL} at the shallow split ({r['split']}, {tag}): "
              f"{'met' if met else 'not met'} ({r[key]:.3f})")
        out[side] = {"split": r["split"], "trained": r["trained"], "ratio": r[key], "goal": GOAL, "met": met}
    return out


# ------------------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded default bundle)")
    p.add_argument("--rung", type=int, default=0, help="rung of the bundle to measure (0 = top rate)")
    p.add_argument("--splits", default="",
                   help="comma-separated further split points of the bundle's model ('all' = every one); "
                        "those without a trained bundle get an untrained bottleneck")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the model's pretrained)")
    p.add_argument("--images", default=str(SAMPLES), help="image folder or CSV (default: the embedded samples)")
    p.add_argument("--max-images", type=int, default=16, help="use at most this many images")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per stage (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repeats first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (an edge device: 1 or 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained bottlenecks")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure to this JSON file")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0 or a.threads < 1:
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(a.threads)
    try:
        bundle = load_bundle(a.bundle or default_bundle_path())
    except BundleError as e:
        print(f"error: {e} (name one with --bundle)", file=sys.stderr)
        return 2
    if not 0 <= a.rung < len(bundle.rungs):
        print(f"error: bundle {bundle.bundle_id} has rungs 0..{len(bundle.rungs) - 1}", file=sys.stderr)
        return 2
    first = load_split_model(bundle.model, bundle.split, a.weights)
    names = list(first.spec.split_points) if a.splits == "all" else [s for s in a.splits.split(",") if s]
    unknown = [s for s in names if s not in first.spec.split_points]
    if unknown:
        print(f"error: unknown split point(s) {unknown} of {bundle.model}; valid: "
              f"{', '.join(first.spec.split_points)}", file=sys.stderr)
        return 2
    splits = [bundle.split] + [s for s in dict.fromkeys(names) if s != bundle.split]
    items = scan_images(a.images, labels=False)[: a.max_images]
    transform = eval_transform(first.spec.preprocess)
    xs = [transform(load_image(path)).unsqueeze(0) for path, _ in items]

    setup = {"device": "cpu", "cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
             "batch": 1, "repeats": a.repeats, "warmup": a.warmup, "images": str(a.images), "n_images": len(xs),
             "bundle": str(bundle.root), "bundle_id": bundle.bundle_id}
    print(f"codec overhead, {bundle.model}, CPU ({setup['cpu']}), torch {torch.__version__}, "
          f"torch.set_num_threads({setup['threads']}), batch 1, median of {a.repeats} repeats after "
          f"{a.warmup} warm-up, {len(xs)} images cycled ({a.images})")

    results = []
    for split in splits:
        model = first if split == bundle.split else load_split_model(bundle.model, split, a.weights)
        if split == bundle.split:
            results.append(measure(model, bundle, a.rung, xs, True, a))
        else:
            torch.manual_seed(a.seed)
            with torch.no_grad():
                feats = [model.head(x) for x in xs]
            with tempfile.TemporaryDirectory() as tmp:
                b = untrained_bundle(model, split, feats, bundle.config.rate_model, Path(tmp))
                results.append(measure(model, b, 0, xs, False, a))
        report(results[-1], len(xs))
    print()
    out = {"setup": setup, "splits": results, "goals": goals(results)}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
