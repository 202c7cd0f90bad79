"""The training use case: images -> views -> a trained, refitted, measured ladder bundle.

``splitinfer train`` parses its arguments into :class:`TrainOptions` and calls :func:`train_bundle`; everything
else lives here. One clock bounds the whole command (``time_budget``): building views, the rungs, the
side-density refit, the export and the held-out measurement, each with its own progress bar.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["TrainOptions", "train_bundle", "default_bottleneck", "feature_stride", "collect_items",
           "measure_heldout", "ladder_warnings"]


@dataclass
class TrainOptions:
    out: str
    data: List[str]
    model: str = "efficientnet_lite0"
    split: Optional[str] = None
    weights: Optional[str] = None
    part: str = "train"
    extra_data: List[str] = field(default_factory=list)
    eval_data: Optional[List[str]] = None  # None: the held-out part of --data, when it has one
    eval_limit: int = 0
    supervised: bool = False
    lambdas: List[float] = field(default_factory=lambda: [64, 32, 16, 8, 4, 2])
    steps: int = 2000
    steps_per_rung: int = 800
    batch_size: int = 32
    time_budget: float = 0.0
    lr: float = 1e-3
    views: int = 4
    mix_views: int = 0
    tail_features: float = 0.0
    tail_every: int = 1
    feature_warmup: float = 0.3
    feature_weight: float = 1.0
    temperature: float = 1.0
    rate_model: str = "hyperprior"
    latent: Optional[int] = None
    hidden: Optional[int] = None
    dec_hidden: Optional[int] = None
    stride: Optional[int] = None
    hyper_stride: Optional[int] = None
    hyper_decoder: str = "integer"
    latent_gain: bool = False
    side_refit_steps: int = 500
    qp: float = 1.0
    limit: int = 0
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    init_from: Optional[str] = None
    finetune: Optional[str] = None
    resume: bool = True
    cache_dir: Optional[str] = None
    command: Optional[str] = None


def default_bottleneck(depth: str, in_channels: int, opts) -> dict:
    """Sizes per split depth: shallow features are large and fine, deep ones small and semantic. ``opts``: any
    object with the size fields of :class:`TrainOptions` (None = default)."""
    deep = depth == "deep"
    g = lambda k: getattr(opts, k, None)  # noqa: E731
    return dict(
        in_channels=in_channels,
        latent=g("latent") or 32,
        hidden=g("hidden") or (max(64, in_channels // 2) if deep else 48),
        dec_hidden=g("dec_hidden") or (max(128, in_channels) if deep else 64),
        stride=g("stride") or (1 if deep else 2),
        rate_model=g("rate_model") or "hyperprior",
        hyper=32,
        hyper_stride=g("hyper_stride") or (2 if deep else 4),
        qp=g("qp") or 1.0,
        hyper_decoder=g("hyper_decoder") or "integer",
        gain=bool(g("latent_gain")),
    )


def feature_stride(input_hw, feature_hw) -> int:
    """The stride s with ceil(input / s) == feature on both axes (the relation the bitstream checks):
    360x480 -> 23x30 is stride 16, which 360 // 23 is not."""
    for s in (1, 2, 4, 8, 16, 32, 64):
        if all(math.ceil(i / s) == f for i, f in zip(input_hw, feature_hw)):
            return s
    raise ValueError(f"a {feature_hw[0]}x{feature_hw[1]} feature of a {input_hw[0]}x{input_hw[1]} input has no "
                     "power-of-two stride with ceil rounding")


def collect_items(data: Sequence[str], part: str, extra: Sequence[str], labels: bool, say=print):
    """Training items of ``data`` (the ``part`` the held-out rule leaves) and every image of ``extra``, with a
    line per source saying how many images it gave and how many the held-out rule kept out."""
    from ..data import scan_images, split_items

    items = []
    for d in data:
        every = scan_images(d, labels=labels)
        kept = split_items(every, part)
        say(f"{d}: {len(every)} images, {len(kept)} train" +
            (f", {len(every) - len(kept)} held out by the rule (never train)" if part == "train" else " (--part all)"))
        items += kept
    for d in extra:
        more = scan_images(d, labels=labels)
        say(f"{d}: {len(more)} images, all train (--extra-data)")
        items += more
    return items


def measure_heldout(model, bundle, eval_data, limit: int = 0, say=print):
    """Measure every rung on the held-out images of ``eval_data``, print the figures and record them (and the
    part measured) in the bundle's manifest (``train``, ``migrate --eval-data``)."""
    from ..bundle import update_metrics
    from ..data import scan_images, split_items, spread
    from ..evaluation import evaluate_ladder

    items = [it for d in eval_data for it in split_items(scan_images(d), "heldout")]
    items = spread(items, limit)
    say(f"measuring {len(bundle.rungs)} rungs on {len(items)} held-out images of {', '.join(map(str, eval_data))}")
    res = evaluate_ladder(model.to("cpu"), bundle, items)
    bundle = update_metrics(bundle, res["rungs"], {"evaluation": {
        "data": [str(d) for d in eval_data], "part": "heldout", "n_images": len(items),
        "reference": res["reference"]}})
    for r in res["rungs"]:
        say(json.dumps(r))
    say("unsplit reference: " + json.dumps(res["reference"]))
    return bundle


def ladder_warnings(manifest: Dict, far: float = 0.10) -> List[str]:
    """What a user must not miss about a measured ladder: rungs out of rate order, and accuracy far (``far``,
    absolute) below the unsplit model's on the same images. Empty for unmeasured ladders."""
    rungs = manifest.get("rungs", [])
    ref = manifest.get("evaluation", {}).get("reference", {})
    key = next((k for k in ("top1", "miou") if k in ref), None)
    out = []
    bpp = [r.get("metrics", {}).get("bpp") for r in rungs]
    for i in range(1, len(bpp)):
        if bpp[i] is not None and bpp[i - 1] is not None and bpp[i] >= bpp[i - 1]:
            out.append(f"rungs {i - 1} and {i} are not ordered by rate ({bpp[i - 1]:.4f} then {bpp[i]:.4f} bpp): "
                       "bitrate hints may pick a worse rung")
    if key:
        acc = [r.get("metrics", {}).get(key) for r in rungs]
        measured = [a for a in acc if a is not None]
        if measured and max(measured) < ref[key] - far:
            out.append(f"best rung {key} {max(measured):.2%} is {100 * (ref[key] - max(measured)):.1f} points below the unsplit "
                       f"model ({ref[key]:.2%}): the ladder is undertrained or broken")
    return out


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _views(model, opts: TrainOptions, items, rank: int, world: int, device: str, deadline: Optional[float], say):
    """The run's training set: the view store for classification (built or extended as needed, reused across
    rungs and runs), the per-run cache for segmentation."""
    import torch

    from ..tasks import get_task
    from .cache import build_cache
    from .views import build_view_store, tail_taps

    cache_dir = Path(opts.cache_dir) if opts.cache_dir else Path(opts.out) / "cache"
    shard = items[rank::world]
    if not get_task(model.spec).view_store:
        if opts.mix_views or opts.tail_features:
            raise ValueError("--mix-views and --tail-features need the view store (classification models)")
        tag = "-labels" if opts.supervised else ""
        path = cache_dir / f"{opts.model}-{model.split.name}-v{opts.views}-n{len(shard)}-s{opts.seed}-r{rank}{tag}.safetensors"
        return build_cache(model, shard, opts.views, device=device, seed=opts.seed + rank, path=path,
                           workers=opts.workers)
    def build():
        with torch.no_grad():
            return build_view_store(model, items, cache_dir, opts.views, opts.mix_views, seed=opts.seed,
                                    workers=opts.workers, progress=rank == 0, deadline=deadline)

    if world > 1:  # one process builds the views, the others wait and read them
        import torch.distributed as dist

        if rank == 0:
            build()
        dist.barrier()
    store = build()
    plain, mix = len(store.rounds("plain")), len(store.rounds("mix"))
    if plain < opts.views or mix < opts.mix_views:
        say(f"warning: the time budget allowed {plain} of {opts.views} view rounds and {mix} of {opts.mix_views} "
            "mix rounds; training on those (a later run extends the store)")
    taps = tail_taps(model) if opts.tail_features > 0 else []
    return store.select(model.split.node, taps, [str(p) for p, _ in shard], min(plain, opts.views),
                        min(mix, opts.mix_views), labelled_only=opts.supervised)


def train_bundle(opts: TrainOptions, say=print) -> int:
    """Run ``splitinfer train``. Returns a process exit code."""
    import torch
    import torch.distributed as dist

    from ..bundle import load_bundle, save_bundle
    from ..codec import BottleneckConfig
    from ..models import load_split_model
    from ..tasks import get_task
    from .ladder import LadderConfig, dist_info, images_per_second, train_ladder, write_args

    t_start = time.monotonic()
    deadline = t_start + opts.time_budget if opts.time_budget > 0 else None
    rank, world, distributed = dist_info()
    say = say if rank == 0 else (lambda *a, **k: None)
    device = _device(opts.device)
    if distributed:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    torch.manual_seed(opts.seed)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_split_model(opts.model, opts.split, opts.weights).to(device)
    split = model.split.name
    # the view store records labels when there are any, so a supervised run can reuse a label-free run's views
    items = collect_items(opts.data, opts.part, opts.extra_data, labels=opts.supervised or
                          get_task(model.spec).labels_in_views, say=say)
    if opts.limit:
        items = items[: opts.limit]
    if opts.supervised and any(lab is None for _, lab in items):
        print("error: --supervised needs labels for every training image", file=sys.stderr)
        return 2
    eval_data = opts.eval_data
    if eval_data is None:  # measure on the held-out part of --data when it has one
        eval_data = list(opts.data) if opts.part == "train" else []
    say(f"{opts.model} split {split}: {len(items)} training images x {opts.views} views"
        f"{f' + {opts.mix_views} CutMix views' if opts.mix_views else ''}, device {device}, {world} process(es)")

    # the budget: views may use up to half; refit, export and measurement get a measured reserve
    n_eval = _count_heldout(eval_data, opts.eval_limit)
    reserve = _reserve_seconds(model.split.depth, len(opts.lambdas), n_eval, opts.side_refit_steps)
    view_deadline = t_start + opts.time_budget / 2 if deadline else None
    cache = _views(model, opts, items, rank, world, device, view_deadline, say)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # training only; decoding never depends on it
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        cache = cache.to(device)
    train_seconds = 0.0
    if deadline is not None:
        train_seconds = deadline - time.monotonic() - reserve
        if train_seconds < 10:
            print(f"error: --time-budget {opts.time_budget:g} s leaves {train_seconds:.0f} s to train after the views "
                  f"and a {reserve:.0f} s reserve for refit, export and measuring {n_eval} images", file=sys.stderr)
            return 2
        say(f"time budget: {train_seconds:.0f} s for the rungs, {reserve:.0f} s reserved for refit, export and "
            "measurement")

    c, fh, fw = cache.features.shape[1:]
    bcfg = BottleneckConfig(**default_bottleneck(model.split.depth, c, opts))
    lcfg = LadderConfig(
        lambdas=opts.lambdas, steps=opts.steps, steps_per_rung=opts.steps_per_rung, batch_size=opts.batch_size,
        lr=opts.lr, mode="supervised" if opts.supervised else "distill", temperature=opts.temperature,
        feature_weight=opts.feature_weight, tail_every=opts.tail_every, feature_warmup=opts.feature_warmup,
        seed=opts.seed, time_budget=train_seconds, tail_feature_weight=opts.tail_features,
    )
    if rank == 0:
        write_args(out, asdict(opts) | {"bottleneck": bcfg.to_dict()})
    init, init_rungs = None, None
    if opts.init_from or opts.finetune:
        path, _, rung = (opts.init_from or opts.finetune).partition(":")
        src = load_bundle(path, allow_float_hyper=opts.hyper_decoder == "float")
        if src.config != bcfg or (src.model, src.split) != (opts.model, split):
            print(f"error: {path}: its model/split/config differ from this run's", file=sys.stderr)
            return 2
        if opts.init_from:
            init = src.load_rung(int(rung or len(src.rungs) - 1)).state_dict()
        else:  # each rung from the source rung nearest in log-lambda (a new top rung starts from the old top)
            near = lambda lam: min(src.rungs, key=lambda r: abs(math.log(r.lam / lam))).index  # noqa: E731
            picks = [near(lam) for lam in opts.lambdas]
            say("fine-tuning: " + ", ".join(f"λ={lam:g} from rung {i} (λ={src.rungs[i].lam:g})"
                                            for lam, i in zip(opts.lambdas, picks)))
            init_rungs = [src.load_rung(i).state_dict() for i in picks]
    nets = train_ladder(model, cache, bcfg, lcfg, out, device=device, resume=opts.resume, init=init,
                        init_rungs=init_rungs)
    if rank != 0:
        dist.destroy_process_group()
        return 0
    refits = []
    if bcfg.rate_model == "hyperprior" and opts.side_refit_steps > 0:
        from .side_density import refit_side_density

        from tqdm import tqdm

        for lam, net in tqdm(list(zip(opts.lambdas, nets)), desc="refitting z densities", unit="rung"):
            rec = refit_side_density(net.to(device), cache.features, steps=opts.side_refit_steps, seed=opts.seed)
            refits.append({"lambda": lam, **rec})
            say(f"rung λ={lam:g}: z density refitted, {rec['bits_per_z_before']:.3f} -> "
                f"{rec['bits_per_z_after']:.3f} bits per z value (model estimate)")

    pre = model.spec.preprocess
    extra = {
        "task": model.spec.task,
        "feature_shape": [int(c), int(fh), int(fw)],
        "feature_stride": feature_stride(pre.input_size, (int(fh), int(fw))),
        "preprocess": {"input_size": list(pre.input_size), "resize": pre.resize, "mean": list(pre.mean),
                       "std": list(pre.std)},
        "backbone_weights": model.fingerprints(),  # edge and cloud refuse other weights (Bundle.check_backbone)
        "training": {
            "objective": lcfg.mode,
            "data": [str(d) for d in opts.data],
            "part": opts.part,
            "extra_data": [str(d) for d in opts.extra_data],
            "n_images": len(items),
            "views": opts.views,
            "mix_views": opts.mix_views,
            "n_views": len(cache),
            "tail_features": opts.tail_features,
            "feature_weight": opts.feature_weight,
            "heldout_rule": ("shared.data.is_heldout: images whose file-name CRC32 is odd never train"
                             if opts.part == "train" else "none (--part all: every --data image trains)"),
            "steps": opts.steps,
            "steps_per_rung": opts.steps_per_rung,
            "batch_size": opts.batch_size,
            "time_budget": opts.time_budget,
            "seed": opts.seed,
            "init_from": opts.init_from,
            "finetune": opts.finetune,
            "source_bundle_id": src.bundle_id if (opts.init_from or opts.finetune) else None,
            "device": device,
            "processes": world,
            "threads": torch.get_num_threads(),
            "images_per_second": images_per_second(out),
            "seconds": round(time.monotonic() - t_start, 1),  # views, rungs and refit (before the measurement)
            "side_refit": refits,
            "command": opts.command,
        },
    }
    bundle = save_bundle(out, opts.model, split, bcfg, nets, opts.lambdas, extra=extra)
    say(f"wrote bundle {bundle.bundle_id} with {len(bundle.rungs)} rungs to {out}")
    if n_eval:
        bundle = measure_heldout(model, bundle, eval_data, opts.eval_limit, say=say)
        for w in ladder_warnings(bundle.manifest):
            say(f"WARNING: {w}")
    elif eval_data:
        say("no held-out images in " + ", ".join(map(str, eval_data)) + ": the ladder is not measured "
            "(bitrate hints need measured rates; run `splitinfer eval --update-manifest`)")
    took = time.monotonic() - t_start
    say(f"train took {took:.0f} s" + (f" of a {opts.time_budget:.0f} s budget" if deadline else ""))
    if distributed:
        dist.destroy_process_group()
    return 0


def _count_heldout(eval_data: Sequence[str], limit: int) -> int:
    from ..data import scan_images, split_items

    n = sum(len(split_items(scan_images(d), "heldout")) for d in eval_data)
    return min(n, limit) if limit else n


def _reserve_seconds(depth: str, rungs: int, n_eval: int, refit_steps: int) -> float:
    """Seconds kept back from a time budget for what follows the rungs, from 2-core CPU measurements:
    ~10 s per rung refit at 500 steps, ~1 s export per rung, and the held-out measurement (one backbone pass
    per image plus a decode and tail pass per rung and image; slower at a shallow split)."""
    per_image = 0.06 + rungs * (0.012 if depth == "deep" else 0.05)
    return rungs * (10.0 * refit_steps / 500 + 1.0) + n_eval * per_image + 15.0
