"""Training throughput (images/s) of one bottleneck rung per split point: from the view store, and on the fly.

From the store: what a training step costs once the frozen parts are cached: bottleneck forward/backward,
rate estimate, frozen tail forward/backward (input gradients only). On the fly (fresh views every step, the
Beyer et al. recipe run literally): the same step plus one full forward pass of the frozen network per view
(head and teacher, no gradients, channels-last), which is also what building the store costs per view.
Medians of repeats, one run, printed side by side.

    python benchmarks/train_throughput.py --model efficientnet_lite0 --device cpu --batch-size 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.codec import Bottleneck, BottleneckConfig  # noqa: E402
from shared.models import get_backbone, load_split_model  # noqa: E402
from shared.training.objectives import Objective, bpp_from_likelihoods  # noqa: E402


def measure(model_name: str, split: str, device: str, batch: int, steps: int, repeats: int) -> float:
    m = load_split_model(model_name, split, weights="random").to(device)
    hw = m.spec.preprocess.input_size
    x = torch.randn(batch, 3, *hw, device=device)
    with torch.no_grad():
        feat = m.head(x)
        teacher = m.tail(feat, x)
    net = Bottleneck(BottleneckConfig.for_split(m.split.depth, int(feat.shape[1]))).to(device).train()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    obj = Objective()
    var = feat.var(dim=(0, 2, 3), keepdim=True) + 1e-6
    meta = torch.empty_like(x, device="meta")

    def step():
        o = net(feat)
        d = obj.distortion(m.tail(o["feat_hat"], meta), teacher, None, o["feat_hat"], feat, var)
        loss = bpp_from_likelihoods(o["likelihoods"], hw[0] * hw[1]) + d["distortion"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t) / steps)
    step_ips = batch / statistics.median(times)
    fwd = []
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            m.tail(m.head(xc), xc)
            sync()
            fwd.append(time.perf_counter() - t)
    fwd_ips = batch / statistics.median(fwd)
    return step_ips, fwd_ips, 1.0 / (1.0 / step_ips + 1.0 / fwd_ips)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--splits", default=None, help="comma-separated (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    splits = a.splits.split(",") if a.splits else list(get_backbone(a.model).split_points)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"training throughput, {a.model}, batch {a.batch_size}, {dev}, median of {a.repeats} x {a.steps} steps")
    print(f"  {'split':<10} {'from store':>12} {'on the fly':>12} {'ratio':>6} {'store build':>12}  (images/s)")
    for s in splits:
        store, build, fly = measure(a.model, s, a.device, a.batch_size, a.steps, a.repeats)
        print(f"  {s:<10} {store:12.1f} {fly:12.1f} {store / fly:5.1f}x {build:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
