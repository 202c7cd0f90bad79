"""Train a ladder of bottlenecks (one per lambda) at one split point of a frozen backbone.

Rungs are trained from the highest lambda (most bits) down; each rung starts from its neighbour's
weights, so later rungs need only a fraction of the first one's steps. Only bottleneck and
rate-model parameters receive gradients; the backbone is frozen and stays in eval mode.

Runs on a CPU, a GPU, or several processes under ``torchrun`` (PyTorch DDP; gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..codec import Bottleneck, BottleneckConfig
from ..models.split import SplitModel
from ..rate.plan import training_plan
from .cache import FeatureCache
from .objectives import Objective
from .schedule import warmup_cosine_lr
from .step import StepSpeed, TrainStep, level_and_lambda
from .views import tap_modules

__all__ = ["LadderConfig", "train_ladder", "dist_info", "time_steps"]


@dataclass
class LadderConfig:
    lambdas: List[float]
    steps: int = 2000  # steps for the first (highest-rate) rung
    steps_per_rung: int = 1000  # steps for each warm-started rung after it
    batch_size: int = 32
    lr: float = 1e-3
    aux_lr: float = 5e-3
    mode: str = "distill"
    temperature: float = 1.0
    feature_weight: float = 1.0
    tail_every: int = 1  # run the tail (logit loss) on every k-th step; 0 = split-feature MSE only
    feature_warmup: float = 0.3  # share of the first rung's steps trained on the split MSE alone (cheap)
    seed: int = 0
    log_every: int = 50
    time_budget: float = 0.0  # seconds for the whole ladder (0 = none): rungs end early, schedules compress
    # weight of the tail-feature loss: the teacher's activations at later stages of the tail (the cache's
    # targets), matched on every tail step (Entropic Student stage 1); 0 = off
    tail_feature_weight: float = 0.0
    warmup: float = 0.05  # share of each rung's schedule spent ramping the learning rate up
    precision: str = "auto"  # StepSpeed: bf16 autocast where the hardware has it, else fp32
    channels_last: bool = True
    compile: bool = False  # StepSpeed: torch.compile g_a, g_s and the tail (pays at block14 on this CPU, not block1)
    checkpoint_every: float = 300.0  # seconds between mid-rung checkpoints (0 = only at the end of each rung)
    extra: Dict = field(default_factory=dict)


def dist_info():
    """(rank, world_size, is_distributed) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, world > 1


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def _save_checkpoint(out: Path, state: Dict) -> None:
    tmp = out / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, _checkpoint_path(out))


def _load_checkpoint(out: Path) -> Optional[Dict]:
    p = _checkpoint_path(out)
    # our own checkpoint, written by this function: tensors, dicts and numbers only
    return torch.load(p, map_location="cpu", weights_only=True) if p.is_file() else None


def train_ladder(
    model: SplitModel,
    cache: FeatureCache,
    bcfg: BottleneckConfig,
    cfg: LadderConfig,
    out: Path,
    device: str = "cpu",
    resume: bool = True,
    progress: bool = True,
    init: Optional[Dict] = None,
    init_rungs: Optional[List[Dict]] = None,
) -> List[Bottleneck]:
    """Returns one trained Bottleneck per lambda, in the order of ``cfg.lambdas``.

    ``init``: weights the first rung starts from (later rungs start from their neighbour). ``init_rungs``: one
    state per lambda, each rung starting from its own (fine-tuning an existing ladder rung by rung)."""
    rank, world, distributed = dist_info()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + rank)
    objective, feat_mean, feat_var, taps, target_var = _step_parts(model, cache, cfg, device)
    if distributed:  # every rank standardises with the statistics of all shards (DDP keeps rank 0's buffers anyway)
        second = feat_var + feat_mean**2
        for t in (feat_mean, second):
            dist.all_reduce(t)
            t /= world
        feat_var = second - feat_mean**2
    use_targets = bool(taps)
    n_pixels = cache.input_hw[0] * cache.input_hw[1]

    # a rung per lambda, or one variable-rate network (shared/codec/variable_rate.py) over the levels with the
    # ladder's whole step budget, each step at a drawn level and the lambda that goes with it (shared/rate/plan.py)
    plan = training_plan(cfg.lambdas, bcfg.levels)
    order = plan.networks()
    trained: Dict[int, Dict] = {}
    ckpt = _load_checkpoint(out) if resume else None
    if ckpt is not None:
        trained = {int(k): v for k, v in ckpt["trained"].items()}
        if rank == 0:
            print(f"resuming: {len(trained)} of {len(order)} rungs already trained")

    log_path = out / "train_log.csv"
    log_file = open(log_path, "a", newline="") if rank == 0 else None
    log = csv.writer(log_file) if log_file else None
    if log and log_path.stat().st_size == 0:
        log.writerow(["rung", "lambda", "step", "loss", "bpp", "distortion", "feature_mse", "kl_or_ce", "aux", "img_per_s",
                      "tail_mse"])

    net = Bottleneck(bcfg).to(device)
    net.set_feature_stats(feat_mean, feat_var.sqrt())
    if init is not None:  # weights (and feature statistics) of an earlier stage
        _load_train_state(net, _trainable(init))
    speed = StepSpeed(cfg.precision, cfg.channels_last, cfg.compile)
    if rank == 0 and progress:
        print(f"training step: {speed.describe(device)}, {torch.get_num_threads()} thread(s)")
    t_ladder = time.perf_counter()
    recent: deque = deque(maxlen=3)  # the last steps' seconds (across rungs): their median predicts the next
    for pos, i in enumerate(order):
        lam = cfg.lambdas[i]
        if i in trained:
            _load_train_state(net, trained[i])
            continue
        if init_rungs is not None:
            _load_train_state(net, _trainable(init_rungs[i]))
        steps = plan.steps(pos, cfg.steps, cfg.steps_per_rung)
        ddp = DDP(net, find_unused_parameters=True) if distributed else net
        opt = torch.optim.Adam(net.param_groups(cfg.lr))
        aux_opt = torch.optim.Adam(net.aux_parameters(), lr=cfg.aux_lr)
        stepper = TrainStep(model, net, objective, feat_var, n_pixels, cache.input_hw, taps, target_var,
                            cfg.tail_feature_weight, speed, device, ddp=ddp)
        # rank 0 keeps the single-process seed; other ranks are offset by a large prime so that no (rung, rank)
        # pair shares a stream (pos * 10 + rank collided from 10 ranks on)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + pos * 10 + rank * 1_000_003)
        # With a time budget each rung gets a share of what is left proportional to its steps (so a rung that ran
        # over, or under, moves the others); the schedule follows whichever of step count and elapsed time is
        # further along, so a rung always completes.
        left_steps = plan.steps_left(pos, cfg.steps, cfg.steps_per_rung)
        left_time = cfg.time_budget - (time.perf_counter() - t_ladder)
        share = max(left_time, 1e-9) * steps / max(left_steps, 1) if cfg.time_budget > 0 else float("inf")
        step, seen, spent = 0, 0, 0.0
        partial = ckpt.get("partial") if ckpt is not None else None
        if partial is not None and int(partial["rung"]) == i:  # a rung interrupted mid-way: everything it had
            _load_train_state(net, partial["net"])
            opt.load_state_dict(partial["opt"])
            aux_opt.load_state_dict(partial["aux_opt"])
            gen.set_state(partial["gen"])
            torch.set_rng_state(partial["rng"])  # the quantisation noise draws from the global generator
            step, seen, spent = int(partial["step"]), int(partial["seen"]), float(partial["seconds"])
            if rank == 0:
                print(f"resuming rung λ={lam:g} at step {step} of {steps}")
        bar = tqdm(total=steps, initial=step, desc=f"rung λ={lam:g}", disable=not (progress and rank == 0),
                   unit="step", mininterval=2.0)
        t0, due = time.perf_counter() - spent, False
        last_save = time.perf_counter()
        net.train()
        while True:
            frac = max(step / steps, (time.perf_counter() - t0) / share)
            if recent and time.perf_counter() - t0 + sorted(recent)[len(recent) // 2] > share:
                frac = max(frac, 1.0)  # a step that would end past the rung's share is not started
            if distributed:  # every process must agree on when the rung ends
                f = torch.tensor([frac], device=device)
                dist.all_reduce(f, op=dist.ReduceOp.MAX)
                frac = float(f)
            if frac >= 1.0:
                break
            # each process samples from its own shard of the views (recipe._views gives rank r the images r::world)
            t_step = time.perf_counter()
            idx = torch.randint(len(cache), (cfg.batch_size,), generator=gen)
            feat, teacher, labels = cache.batch(idx, device)
            for g in opt.param_groups:
                g["lr"] = warmup_cosine_lr(frac, cfg.lr, warmup=cfg.warmup) * g["lr_scale"]
            q, lam = plan.step_point(lam, lambda levels, lambdas: level_and_lambda(levels, lambdas, gen))
            warm = pos == 0 and frac < cfg.feature_warmup
            use_tail = cfg.tail_every > 0 and step % cfg.tail_every == 0 and not warm
            d = stepper.loss(feat, teacher, labels, lam, use_tail, level=q,
                             targets=cache.target_batch(idx, device) if use_tail and use_targets else None)
            bpp, loss = d["bpp"], d["loss"]
            aux = stepper.update(loss, opt, aux_opt, average_aux=_average_grads if distributed else None)
            seen += feat.shape[0] * world
            step += 1
            recent.append(time.perf_counter() - t_step)
            bar.update(1)
            # a due row waits for the next step that ran the tail (--tail-every k), so it shows the logit loss
            due = due or step % cfg.log_every == 0 or step == 1
            if log and due and (use_tail or cfg.tail_every <= 0 or warm):
                due = False
                ips = seen / (time.perf_counter() - t0)
                kl = d.get("kl", d.get("ce", torch.tensor(float("nan"))))
                log.writerow([pos, lam, step, f"{loss.item():.5f}", f"{bpp.item():.5f}", f"{d['distortion'].item():.5f}",
                              f"{d['feature_mse'].item():.5f}", f"{kl.item():.5f}", f"{aux.item():.3f}", f"{ips:.1f}",
                              f"{d['tail_mse'].item():.5f}" if "tail_mse" in d else ""])
                log_file.flush()
                bar.set_postfix(bpp=f"{bpp.item():.3f}", D=f"{d['distortion'].item():.3f}", ips=f"{ips:.0f}")
            if rank == 0 and cfg.checkpoint_every > 0 and time.perf_counter() - last_save > cfg.checkpoint_every:
                # a long rung survives an interruption: weights, both optimizers, the batch stream, the clock
                _save_checkpoint(out, {"trained": trained, "config": asdict(cfg), "bottleneck": bcfg.to_dict(),
                                       "partial": {"rung": i, "step": step, "seen": seen,
                                                   "seconds": time.perf_counter() - t0, "gen": gen.get_state(),
                                                   "rng": torch.get_rng_state(),
                                                   "net": _train_state(net), "opt": opt.state_dict(),
                                                   "aux_opt": aux_opt.state_dict()}})
                last_save = time.perf_counter()
        bar.close()
        net.eval()
        trained[i] = _train_state(net)
        trained[i]["__img_per_s__"] = torch.tensor(seen / max(time.perf_counter() - t0, 1e-9))
        trained[i]["__steps__"] = torch.tensor(step)
        trained[i]["__samples__"] = torch.tensor(seen)
        if rank == 0:
            _save_checkpoint(out, {"trained": trained, "config": asdict(cfg), "bottleneck": bcfg.to_dict()})
        if distributed:
            dist.barrier()
    if log_file:
        log_file.close()

    nets = []
    for i in sorted(order):
        n = Bottleneck(bcfg)
        _load_train_state(n, trained[i])
        nets.append(n.eval())
    return nets


def time_steps(model: SplitModel, cache: FeatureCache, bcfg: BottleneckConfig, cfg: LadderConfig, device: str = "cpu",
               n: int = 2, probe_batch: int = 8) -> float:
    """Seconds per training step of ``cfg.batch_size`` on this machine now, through the tail as the rungs run
    them (a feature-only warm-up step is cheaper): ``n`` real steps of a throwaway network, after an untimed one,
    at a batch of at most ``probe_batch``, scaled to the batch (the probe is paid from the time budget: on the
    loaded 2-core CPU a block1 step of 32 took 12.8 s). Leaves the global random state as it was, so a run trains
    the same with or without this probe."""
    rng = torch.get_rng_state()
    try:
        objective, feat_mean, feat_var, taps, target_var = _step_parts(model, cache, cfg, device)
        net = Bottleneck(bcfg).to(device)
        net.set_feature_stats(feat_mean, feat_var.sqrt())
        stepper = TrainStep(model, net, objective, feat_var, cache.input_hw[0] * cache.input_hw[1], cache.input_hw,
                            taps, target_var, cfg.tail_feature_weight,
                            StepSpeed(cfg.precision, cfg.channels_last, cfg.compile), device)
        opt = torch.optim.Adam(net.param_groups(cfg.lr))
        aux_opt = torch.optim.Adam(net.aux_parameters(), lr=cfg.aux_lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        lam = max(cfg.lambdas)
        level = training_plan(cfg.lambdas, bcfg.levels).probe_level
        times, batch = [], min(cfg.batch_size, probe_batch)
        for k in range(n + 1):
            t = time.perf_counter()
            idx = torch.randint(len(cache), (batch if k else min(batch, 2),), generator=gen)
            feat, teacher, labels = cache.batch(idx, device)
            d = stepper.loss(feat, teacher, labels, lam, cfg.tail_every > 0, level=level,
                             targets=cache.target_batch(idx, device) if taps else None)
            stepper.update(d["loss"], opt, aux_opt)
            if k:
                times.append(time.perf_counter() - t)
        return sum(times) / len(times) * cfg.batch_size / batch
    finally:
        torch.set_rng_state(rng)


def _step_parts(model: SplitModel, cache: FeatureCache, cfg: LadderConfig, device: str):
    """What every step of a run shares: the objective, the split feature's mean and variance, and for the
    tail-feature loss the tapped tail modules (hooked while the student's tail runs) and their targets' variance
    (both empty when the loss is off)."""
    objective = Objective(cfg.mode, cfg.temperature, cfg.feature_weight, task=model.spec.task)
    feat_mean, feat_var = (t.to(device) for t in cache.feature_stats())
    use_targets = cfg.tail_feature_weight > 0 and bool(cache.targets)
    target_var = {k: v.to(device) for k, v in cache.target_stats().items()} if use_targets else {}
    taps = tap_modules(model, list(cache.targets)) if use_targets else {}
    return objective, feat_mean, feat_var, taps, target_var


def _average_grads(params) -> None:
    """Average ``params``' gradients over the processes (the aux loss bypasses DDP)."""
    world = dist.get_world_size()
    for p in params:
        dist.all_reduce(p.grad)
        p.grad /= world


def _train_state(net: Bottleneck) -> Dict:
    """A detached CPU copy of ``net``'s state (contiguous: channels-last weights are stored in the usual order)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}


def _trainable(state: Dict) -> Dict:
    """A bundle rung's state without its frozen coding tables (rebuilt at export)."""
    from ..codec.compressai_adapter import is_table_key

    return {k: v for k, v in state.items() if not is_table_key(k)}


def _load_train_state(net: Bottleneck, state: Dict) -> None:
    """Load a training-time state (a checkpoint's, or a rung's through ``_trainable``) strictly: every other
    key must match, so a resume cannot silently keep part of the weights. Our bookkeeping entries (``__*``)
    are skipped; coding tables the state leaves out keep ``net``'s own (empty until export)."""
    from ..codec.compressai_adapter import is_table_key

    sd = {k: v for k, v in state.items() if not k.startswith("__")}
    own_tables = {k: v for k, v in net.state_dict().items() if is_table_key(k) and k not in sd}
    net.load_state_dict({**own_tables, **sd}, strict=True)


def _per_rung(out: Path, key: str) -> List[float]:
    ck = _load_checkpoint(Path(out))
    return [] if ck is None else [float(v[key]) if key in v else 0.0 for _, v in sorted(ck["trained"].items())]


def images_per_second(out: Path) -> List[float]:
    """Training images per second of each finished rung of the checkpoint in ``out``."""
    return _per_rung(out, "__img_per_s__")


def samples_trained(out: Path) -> List[int]:
    """Training samples (images x steps, all processes) each finished rung of the checkpoint in ``out`` saw."""
    return [int(v) for v in _per_rung(out, "__samples__")]


def write_args(out: Path, args: Dict) -> None:
    (Path(out) / "args.json").write_text(json.dumps(args, indent=2, default=str) + "\n")
