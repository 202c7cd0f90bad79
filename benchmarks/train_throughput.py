"""Training throughput (images/s) of the real training step (``shared.training.step.TrainStep``) per split point,
under each way of running it: float32 or bfloat16 autocast, contiguous or channels-last memory, eager or
``torch.compile``. One run, medians of repeats, printed side by side with the float32 eager contiguous step
(the step before issue 23) as the baseline.

The step is the one ``splitinfer train`` runs with the embedded recipe: the bottleneck (variable-rate, at a
random level) with its rate estimate, the frozen tail with the tail-feature loss, backward, both optimizers.
The cached views are random tensors of the real shapes (a step's cost does not depend on their values).

    python benchmarks/train_throughput.py --splits block1,block14 --threads 1 --batch-size 16
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
from shared.training.objectives import Objective  # noqa: E402
from shared.training.step import StepSpeed, TrainStep, bf16_supported, level_and_lambda  # noqa: E402
from shared.training.views import capture, tail_taps, tap_modules  # noqa: E402

VARIANTS = {  # name -> (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "fp32+cl": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16+cl": ("bf16", True, False),
    "bf16+cl+compile": ("bf16", True, True),
}


def _setup(model_name: str, split: str, batch: int, variable_rate: bool, device: str):
    m = load_split_model(model_name, split, weights="random").to(device)
    hw = m.spec.preprocess.input_size
    x = torch.randn(batch, 3, *hw, device=device)
    taps = tap_modules(m, tail_taps(m))
    with torch.no_grad(), capture(taps) as acts:
        feat = m.head(x)
        teacher = m.tail(feat, x)
        targets = {k: v.clone() for k, v in acts.items()}
    levels = (-4, 40) if variable_rate else None
    cfg = BottleneckConfig.for_split(m.split.depth, int(feat.shape[1]),
                                     rate_model="vr-hyperprior" if variable_rate else "hyperprior", levels=levels)
    return m, x, feat, teacher, targets, cfg, levels


def measure(model_name: str, split: str, batch: int, steps: int, repeats: int, variant: str,
            variable_rate: bool = True, device: str = "cpu") -> float:
    precision, cl, compile_ = VARIANTS[variant]
    m, x, feat, teacher, targets, cfg, levels = _setup(model_name, split, batch, variable_rate, device)
    net = Bottleneck(cfg).to(device).train()
    var = feat.var(dim=(0, 2, 3), keepdim=True) + 1e-6
    net.set_feature_stats(feat.mean(dim=(0, 2, 3), keepdim=True), var.sqrt())
    tvar = {k: v.var(dim=[0] + list(range(2, v.dim())), keepdim=True).clamp_min(1e-6) for k, v in targets.items()}
    opt = torch.optim.Adam(net.param_groups(1e-4))
    aux_opt = torch.optim.Adam(net.aux_parameters(), lr=1e-3)
    stepper = TrainStep(m, net, Objective(), var, x.shape[-2] * x.shape[-1], x.shape[-2:], tap_modules(m, list(targets)),
                        tvar, 1.0, StepSpeed(precision, cl, compile_), device)
    gen = torch.Generator().manual_seed(0)

    def step():
        q, lam = level_and_lambda(levels, (0.06, 64), gen) if levels else (None, 1.0)
        d = stepper.loss(feat, teacher, None, lam, True, targets=targets, level=q)
        stepper.update(d["loss"], opt, aux_opt)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up (and compilation)
        step()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t) / steps)
    return batch / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--splits", default="block1,block14", help="comma-separated split points, or 'all'")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the embedded runs train one per core)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="fp32,fp32+cl,bf16,bf16+cl",
                   help=f"comma-separated, first is the baseline; known: {', '.join(VARIANTS)}")
    p.add_argument("--ladder", action="store_true", help="a ladder rung's step instead of the variable-rate network's")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    splits = list(get_backbone(a.model).split_points) if a.splits == "all" else a.splits.split(",")
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    dev = torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else f"CPU {a.threads} thread(s)"
    print(f"training step throughput, {a.model}, {'ladder rung' if a.ladder else 'variable-rate'}, batch "
          f"{a.batch_size}, {dev}, native bf16: {bf16_supported(a.device)}, "
          f"median of {a.repeats} x {a.steps} steps (images/s; x = against {variants[0]})")
    print(f"  {'split':<10}" + "".join(f"{v:>18}" for v in variants))
    for s in splits:
        ips = [measure(a.model, s, a.batch_size, a.steps, a.repeats, v, not a.ladder, a.device) for v in variants]
        print(f"  {s:<10}" + "".join(f"{r:11.1f} {r / ips[0]:4.2f}x " for r in ips), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
