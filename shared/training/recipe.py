"""The training use case: images -> views -> a trained, refitted, measured ladder bundle.

``splitinfer train`` parses its arguments into :class:`TrainOptions` and calls :func:`train_bundle`; everything
else lives here. One clock bounds the whole command (``time_budget``, :mod:`.budget`): start-up, building views,
the rungs, the side-density refit, the export and the held-out measurement, each with its share and its own
progress bar. The result is judged on the held-out images (:mod:`.verdict`): a weak network is marked in the
manifest and ends the command with a non-zero exit unless ``allow_weak``.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..bundle import feature_stride  # noqa: F401  (re-exported: it used to live here)
from ..errors import UserError
from ..options import option

__all__ = ["TrainOptions", "train_bundle", "collect_items", "measure_heldout", "ladder_warnings", "scan_data",
           "check_model_split", "device_for", "cuda_training_flags", "MigrateOptions", "migrate_ladder"]


def _floats(s: str) -> List[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _levels(s: str) -> Tuple[int, int]:
    import argparse

    lo, sep, hi = s.partition(":")
    try:
        lo, hi = int(lo), int(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be LO:HI (two integers), got {s!r}") from None
    if not sep or lo >= hi or not -128 <= lo < hi <= 127:
        raise argparse.ArgumentTypeError(f"levels must be LO:HI with -128 <= LO < HI <= 127, got {s!r}")
    return (lo, hi)


@dataclass
class TrainOptions:
    """Everything ``train_bundle`` needs; ``splitinfer train`` has one flag per field (``--steps-per-rung`` for
    ``steps_per_rung``; a switch for a bool, ``--no-resume`` for ``resume``)."""

    out: str = option(help="bundle folder to write (also holds the checkpoint and logs)")
    data: List[str] = option(help="image folder or CSV (repeatable); segmentation masks: a folder X beside Xannot "
                                  "(CamVid)")
    model: str = option("efficientnet_lite0", "backbone (see `splitinfer models`)")
    split: Optional[str] = option(None, "split point (default: the model's default split)")
    weights: Optional[str] = option(None, "backbone weights file (default: the model's pretrained weights)")
    part: str = option("train", "'all' trains on every --data image, e.g. a data set's own training split that is "
                                "never evaluated (CamVid train/val against test)", choices=["train", "all"])
    extra_data: List[str] = option(list, "unlabelled images used in full for training (no held-out rule): data you "
                                         "never evaluate on")
    eval_data: Optional[List[str]] = option(None, "folder/CSV whose held-out images measure each rung (default: the "
                                                  "held-out part of --data)")
    eval_limit: int = option(0, "evaluate on at most this many held-out images (0 = all)")
    supervised: bool = option(False, "cross-entropy with labels (segmentation: masks, void ignored) instead of "
                                     "distillation")
    lambdas: List[float] = option(lambda: [64, 32, 16, 8, 4, 2], "comma-separated, one rung each", type=_floats)
    steps: int = option(2000, "steps for the first (highest-rate) rung")
    steps_per_rung: int = option(800, "steps for each warm-started rung")
    batch_size: int = option(32, "training images per step")
    time_budget: float = option(0.0, "seconds for the whole command (0 = no limit), start-up included: every phase "
                                     "(views, rungs, refit, export, measurement) gets a share and scales its work to "
                                     "it; each rung's schedule is compressed to fit (shared/training/budget.py)")
    lr: float = option(1e-3, "peak learning rate (Adam; warm-up, then cosine decay)")
    views: int = option(4, "augmented views per training image; classification keeps them in a view store under "
                           "--cache-dir, built once and reused by every rung and run (shared/training/views.py)")
    mix_views: int = option(0, "CutMix views per training image on top of --views (the teacher scores the mixed "
                               "image)")
    tail_features: float = option(0.0, "weight of the tail-feature loss: the teacher's activations at later stages "
                                       "of the tail (BackboneSpec.feature_taps), matched on every tail step; 0 = off")
    tail_every: int = option(1, "logit loss every k steps (0 = split MSE only)")
    feature_warmup: float = option(0.3, "share of the first rung's steps trained on the split-feature MSE alone "
                                        "(no tail: cheap)")
    feature_weight: float = option(1.0, "weight of the split-feature MSE in the distortion")
    temperature: float = option(1.0, "distillation temperature")
    rate_model: str = option("hyperprior", "entropy model of y: hyperprior (side information z), factorized, or "
                                           "static (fixed quantiser step --qp)",
                             choices=["hyperprior", "factorized", "static"])
    latent: Optional[int] = option(None, "latent channels of y (default by split depth: BottleneckConfig.for_split)")
    hidden: Optional[int] = option(None, "encoder width")
    dec_hidden: Optional[int] = option(None, "decoder width")
    stride: Optional[int] = option(None, "latent stride against the split feature")
    hyper_stride: Optional[int] = option(None, "side-information stride against y")
    hyper_decoder: str = option("integer", "hyperprior h_s: integer (bit-exact decoding on every device) or float "
                                           "(comparison only)", choices=["integer", "float"])
    latent_gain: bool = option(False, "a learned per-channel gain on y with a 10x learning rate: lets a short run "
                                      "find the latent's scale, i.e. how finely it is quantised "
                                      "(shared/codec/bottleneck.py)")
    side_refit_steps: int = option(500, "hyperprior: refit the z density to the training z after training, at most "
                                        "this many steps (fewer when --time-budget's share for it runs out; 0 = off; "
                                        "changes only the bits of z, see shared/training/side_density.py)")
    qp: float = option(1.0, "quantiser step of the static rate model")
    levels: Optional[Tuple[int, int]] = option(
        None, "train ONE variable-rate bottleneck over the integer quality levels LO..HI (quantiser step r**-q, "
              "shared/codec/variable_rate.py) instead of a rung per lambda; the lambdas' range maps log-linearly onto "
              "the levels, and the ladder's whole step budget (steps + steps-per-rung x (lambdas - 1)) trains it",
        type=_levels, metavar="LO:HI")
    precision: str = option("auto", "arithmetic of a training step's convolutions (g_a, g_s, the frozen tail): bf16 "
                                    "autocast, fp32, or auto (bf16 where the CPU or GPU has native bfloat16); the rate "
                                    "model always runs in fp32 (shared/training/step.py)",
                            choices=["auto", "bf16", "fp32"])
    channels_last: bool = option(True, "run a training step's convolutions in channels-last memory order "
                                       "(--no-channels-last: the default contiguous order)")
    compile: bool = option(False, "torch.compile the convolutions of a training step (g_a, g_s, the frozen tail): "
                                   "minutes of compilation first; measured 1.46x on top of bf16 + channels-last at "
                                   "block14 on the 2-core CPU, nothing at block1 (benchmarks/train_throughput.py)")
    warmup: float = option(0.05, "share of the schedule spent ramping the learning rate up (a run that continues "
                                 "from --init-from restarts its schedule: a warm restart)")
    limit: int = option(0, "use at most this many training images (0 = all)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    seed: int = option(0, "random seed (initialisation, views, batch order)")
    workers: int = option(0, "data-loading processes while caching")
    init_from: Optional[str] = option(None, "start the first rung from a rung of an existing bundle with the same "
                                            "config (two-stage recipes: features first, logits last)",
                                      metavar="BUNDLE[:RUNG]")
    finetune: Optional[str] = option(None, "start every rung from the rung of BUNDLE nearest in lambda (same "
                                           "config): retrain an existing ladder with another recipe", metavar="BUNDLE")
    samples_before: int = option(0, "training samples (images x steps) the network of --init-from had already seen; "
                                    "added to this run's in the manifest (training.samples_seen), so a network "
                                    "continued over many runs counts its learning curve from the start")
    allow_weak: bool = option(False, "exit 0 even when the held-out measurement finds the network weak (it agrees "
                                     "with the unsplit model on under half of the images, or its top-1 is more than "
                                     "10 points below; shared/training/verdict.py); the manifest still marks it weak")
    resume: bool = option(True, "ignore an existing checkpoint in --out")  # the flag is --no-resume
    cache_dir: Optional[str] = option(None, "where cached views go (default: OUT/cache); share one between runs to "
                                            "reuse its views")
    command: Optional[str] = field(default=None)  # the command line, recorded in the manifest (not a flag)

    def __post_init__(self) -> None:
        if not self.out or not self.data:
            raise UserError("train needs an output folder (--out) and at least one data folder (--data)")


def scan_data(path, labels: bool = True):
    """``shared.data.scan_images`` with a user's mistakes (a missing path, an empty folder, a folder without the
    masks it needs) as :class:`UserError`."""
    from ..data import scan_images

    try:
        return scan_images(path, labels=labels)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e


def check_model_split(model: str, split: Optional[str]) -> None:
    """An unknown model or split point is a :class:`UserError` naming the known ones (before any work)."""
    from ..models import get_backbone

    try:
        spec = get_backbone(model)
    except KeyError as e:
        raise UserError(f"{e.args[0]} (see `splitinfer models`)") from None
    if (split or spec.default_split) not in spec.split_points:
        raise UserError(f"unknown split point {split!r} for model {model!r}; valid split points: "
                        f"{', '.join(spec.split_points)} (see `splitinfer models`)")


def device_for(name: str) -> str:
    """``auto``: CUDA when there is one, else the CPU; any other name as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@contextmanager
def cuda_training_flags(device: str):
    """TF32 matmuls and convolutions and cuDNN autotuning while training runs on CUDA, restored afterwards:
    training tolerates TF32's rounding, and nothing else in the process (decoding, measuring) runs under it."""
    if not str(device).startswith("cuda"):
        yield
        return
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def collect_items(data: Sequence[str], part: str, extra: Sequence[str], labels: bool, say=print):
    """Training items of ``data`` (the ``part`` the held-out rule leaves) and every image of ``extra``, with a
    line per source saying how many images it gave and how many the held-out rule kept out."""
    from ..data import split_items

    items = []
    for d in data:
        every = scan_data(d, labels=labels)
        kept = split_items(every, part)
        say(f"{d}: {len(every)} images, {len(kept)} train" +
            (f", {len(every) - len(kept)} held out by the rule (never train)" if part == "train" else " (--part all)"))
        items += kept
    for d in extra:
        more = scan_data(d, labels=labels)
        say(f"{d}: {len(more)} images, all train (--extra-data)")
        items += more
    return items


def measure_heldout(model, bundle, eval_data, limit: int = 0, say=print, seconds: float = math.inf):
    """Measure every rung on the held-out images of ``eval_data``, print the figures and record them (and the
    part measured) in the bundle's manifest (``train``, ``migrate --eval-data``). ``seconds`` bounds it (a time
    budget's share): it times a few images first and measures as many, spread evenly, as fit."""
    from ..bundle import record_measurement
    from ..data import split_items, spread
    from ..evaluation import evaluate_ladder

    t0 = time.monotonic()
    items = [it for d in eval_data for it in split_items(scan_data(d), "heldout")]
    items = spread(items, limit)
    n_all, res = len(items), None
    model = model.to("cpu")
    if math.isfinite(seconds) and len(items) > _CALIBRATION_IMAGES:
        first = spread(items, _CALIBRATION_IMAGES)
        t = time.monotonic()
        res = evaluate_ladder(model, bundle, first, progress=False)
        per_image = (time.monotonic() - t) / len(first)
        fit = int((seconds - (time.monotonic() - t0)) / per_image)
        if fit < len(items):
            say(f"the time budget leaves {seconds - (time.monotonic() - t0):.0f} s to measure: "
                f"{max(fit, len(first))} of {len(items)} held-out images ({per_image:.2f} s each)")
            items = first if fit <= len(first) else spread(items, fit)
        if items is not first:
            res = None
    say(f"measuring {len(bundle.rungs)} rungs on {len(items)} held-out images of {', '.join(map(str, eval_data))}")
    if res is None:
        res = evaluate_ladder(model, bundle, items)
    record = {"data": [str(d) for d in eval_data], "part": "heldout", "n_images": len(items)}
    if len(items) < n_all:
        record["n_heldout"] = n_all  # the time budget measured only part of them
    bundle = record_measurement(bundle, res, record)
    for r in res["rungs"]:
        say(json.dumps(r))
    say("unsplit reference: " + json.dumps(res["reference"]))
    return bundle


_CALIBRATION_IMAGES = 2  # a bounded measurement times this many images first (and judges on them, if no more fit)
_MIN_REFIT_SECONDS = 0.5  # a rung's refit with less is skipped: its first chunk of z alone can take longer


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
            raise UserError("--mix-views and --tail-features need the view store (classification models)")
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


def train_bundle(opts: TrainOptions, say=print, started: Optional[float] = None) -> int:
    """Run ``splitinfer train``. Returns a process exit code (:data:`~shared.training.verdict.EXIT_WEAK` for a weak
    network unless ``opts.allow_weak``); a user's mistake raises :class:`UserError`. ``started``: the
    ``time.monotonic()`` value the time budget counts from (the command's process start; default now)."""
    import torch
    import torch.distributed as dist

    from ..bundle import load_bundle, save_bundle, update_metrics
    from ..codec.config import BottleneckConfig
    from ..rate.plan import training_plan
    from ..models import get_backbone, load_split_model
    from ..tasks import get_task
    from .budget import FINISH_SECONDS, VIEWS_SHARE, Budget, buys_lines, few_images_warning, plan_after
    from .ladder import (LadderConfig, dist_info, images_per_second, samples_trained, time_steps, train_ladder,
                         write_args)
    from .verdict import EXIT_WEAK, judge, unjudged, verdict_line

    budget = Budget(opts.time_budget, started)
    rank, world, distributed = dist_info()
    say = say if rank == 0 else (lambda *a, **k: None)
    check_model_split(opts.model, opts.split)
    if not opts.lambdas:
        raise UserError("--lambdas names no rung")
    device = device_for(opts.device)
    if distributed:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    torch.manual_seed(opts.seed)
    out = Path(opts.out)
    # the images first (cheap): too few of them is said before any work. The view store records labels when there
    # are any, so a supervised run can reuse a label-free run's views
    items = collect_items(opts.data, opts.part, opts.extra_data, labels=opts.supervised or
                          get_task(get_backbone(opts.model)).labels_in_views, say=say)
    if opts.limit:
        items = items[: opts.limit]
    if opts.supervised and any(lab is None for _, lab in items):
        raise UserError("--supervised needs labels for every training image")
    few = few_images_warning(len(items))
    if few:
        say(few)
    eval_data = opts.eval_data
    if eval_data is None:  # measure on the held-out part of --data when it has one
        eval_data = list(opts.data) if opts.part == "train" else []
    n_eval = _count_heldout(eval_data, opts.eval_limit)
    model = load_split_model(opts.model, opts.split, opts.weights).to(device)
    split = model.split.name
    out.mkdir(parents=True, exist_ok=True)
    say(f"{opts.model} split {split}: {len(items)} training images x {opts.views} views"
        f"{f' + {opts.mix_views} CutMix views' if opts.mix_views else ''}, device {device}, {world} process(es)")
    budget.mark("start-up")  # imports, the model, scanning the images

    # the budget: what follows the rungs is planned first; views may take a share of the rest, the rungs the remainder
    refit = opts.rate_model == "hyperprior" and opts.side_refit_steps > 0
    plan = training_plan(opts.lambdas, opts.levels)
    points = plan.eval_points()
    after = plan_after(budget.left(), len(plan.networks()), refit, n_eval,
                       _eval_seconds_per_image(model.split.depth, points))
    with budget.phase("views", VIEWS_SHARE * (budget.left() - after.total) if budget.limited else math.inf) as phase:
        cache = _views(model, opts, items, rank, world, device, phase.deadline, say)
    if device.startswith("cuda"):
        cache = cache.to(device)

    c = cache.features.shape[1]
    bcfg = BottleneckConfig.for_split(
        model.split.depth, int(c), latent=opts.latent, hidden=opts.hidden, dec_hidden=opts.dec_hidden,
        stride=opts.stride, hyper_stride=opts.hyper_stride, rate_model=opts.rate_model, qp=opts.qp,
        hyper_decoder=opts.hyper_decoder, gain=opts.latent_gain, levels=opts.levels)
    lcfg = LadderConfig(
        lambdas=opts.lambdas, steps=opts.steps, steps_per_rung=opts.steps_per_rung, batch_size=opts.batch_size,
        lr=opts.lr, mode="supervised" if opts.supervised else "distill", temperature=opts.temperature,
        feature_weight=opts.feature_weight, tail_every=opts.tail_every, feature_warmup=opts.feature_warmup,
        seed=opts.seed, tail_feature_weight=opts.tail_features, warmup=opts.warmup,
        precision=opts.precision, channels_last=opts.channels_last, compile=opts.compile,
    )
    with budget.phase("probe"):  # a few real steps: what the budget buys at this machine's speed now
        step_seconds = time_steps(model, cache, bcfg, lcfg, device)
    # planned again at the measured speed: measuring an image costs about a training step's share per rung and for
    # the unsplit model (on the loaded 2-core CPU: 3.1 s per image at block1 with 6 rungs, 0.4 s per image-step)
    after = plan_after(budget.left(), len(plan.networks()), refit, n_eval,
                       max(_eval_seconds_per_image(model.split.depth, points),
                           (points + 1) * step_seconds / opts.batch_size))
    train_seconds = budget.left() - after.total if budget.limited else math.inf
    if budget.limited:
        if train_seconds < 10:
            raise UserError(f"--time-budget {opts.time_budget:g} s leaves {train_seconds:.0f} s to train after "
                            f"{budget.elapsed():.0f} s of start-up and views and {after.total:.0f} s kept for refit, "
                            f"export and measuring {n_eval} images")
        lcfg.time_budget = train_seconds
        say(f"time budget {opts.time_budget:g} s: {budget.record['start-up']['used']:.0f} s start-up, "
            f"{budget.record['views']['used']:.0f} s views, {train_seconds:.0f} s for the rungs; kept back: "
            f"{after.refit:.0f} s refit, {after.export:.0f} s export, {after.measure:.0f} s measurement")
    for line in buys_lines(step_seconds, train_seconds, opts.steps + opts.steps_per_rung * (len(opts.lambdas) - 1),
                           len(opts.lambdas), opts.batch_size, budget.elapsed() + after.total):
        say(line)
    if rank == 0:
        write_args(out, asdict(opts) | {"bottleneck": bcfg.to_dict()})
    init, init_rungs = None, None
    if opts.init_from or opts.finetune:
        path, _, rung = (opts.init_from or opts.finetune).partition(":")
        src = load_bundle(path, allow_float_hyper=opts.hyper_decoder == "float")
        if not _can_start_from(src.config, bcfg) or (src.model, src.split) != (opts.model, split):
            raise UserError(f"{path}: its model/split/config differ from this run's")
        if opts.init_from:
            init = src.load_rung(int(rung or len(src.rungs) - 1)).state_dict()
        else:  # each rung from the source rung nearest in log-lambda (a new top rung starts from the old top)
            near = lambda lam: min(src.rungs, key=lambda r: abs(math.log(r.lam / lam))).index  # noqa: E731
            picks = [near(lam) for lam in opts.lambdas]
            say("fine-tuning: " + ", ".join(f"λ={lam:g} from rung {i} (λ={src.rungs[i].lam:g})"
                                            for lam, i in zip(opts.lambdas, picks)))
            init_rungs = [src.load_rung(i).state_dict() for i in picks]
    with budget.phase("rungs", train_seconds), cuda_training_flags(device):
        nets = train_ladder(model, cache, bcfg, lcfg, out, device=device, resume=opts.resume, init=init,
                            init_rungs=init_rungs)
    if rank != 0:
        dist.destroy_process_group()
        return 0
    refits = []
    if bcfg.rate_model in ("hyperprior", "vr-hyperprior") and opts.side_refit_steps > 0:
        from .side_density import refit_side_density

        from tqdm import tqdm

        with budget.phase("refit", after.refit, keep=after.export + after.measure + FINISH_SECONDS) as phase:
            for k, (lam, net) in enumerate(tqdm(list(zip(opts.lambdas, nets)), desc="refitting z densities",
                                                unit="rung")):
                seconds = phase.left() / (len(nets) - k)  # each rung an equal share of what the refit has left
                if seconds < _MIN_REFIT_SECONDS:  # the budget ran out: the trained density stays (valid, more bits)
                    refits.append({"lambda": lam, "skipped": "no time left in the budget"})
                    say(f"rung λ={lam:g}: z density not refitted (no time left in the budget)")
                    continue
                with cuda_training_flags(device):
                    rec = refit_side_density(net.to(device), cache.features, steps=opts.side_refit_steps,
                                             seed=opts.seed, seconds=seconds)
                refits.append({"lambda": lam, **rec})
                say(f"rung λ={lam:g}: z density refitted ({rec['steps']} + {rec['tail_steps']} steps, "
                    f"{rec['seconds']:.1f} s), {rec['bits_per_z_before']:.3f} -> {rec['bits_per_z_after']:.3f} bits "
                    "per z value (model estimate)")

    extra = {  # task, feature shape and stride, preprocessing, backbone fingerprints: save_bundle, from the model
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
            "samples_seen": opts.samples_before + sum(samples_trained(out)),
            "step_seconds": round(step_seconds, 4),  # the probe's, before training
            "seconds": round(budget.elapsed(), 1),  # start-up, views, rungs and refit (before the measurement)
            "side_refit": refits,
            "levels": plan.level_range,
            "command": opts.command,
        },
    }
    lams, scheme_extra = plan.manifest()  # a variable-rate network: its rung records the top lambda, the manifest the range
    extra.update(scheme_extra)
    with budget.phase("export", keep=after.measure + FINISH_SECONDS):
        bundle = save_bundle(out, model, split, bcfg, nets, lams, extra=extra)
    say(f"wrote bundle {bundle.bundle_id} with {len(bundle.rungs)} rungs to {out}")
    if n_eval:
        with budget.phase("measurement", keep=FINISH_SECONDS) as phase:
            bundle = measure_heldout(model, bundle, eval_data, opts.eval_limit, say=say, seconds=phase.given)
        for w in ladder_warnings(bundle.manifest):
            say(f"WARNING: {w}")
        verdict = judge(bundle.manifest)
    elif eval_data:
        say("no held-out images in " + ", ".join(map(str, eval_data)) + ": the ladder is not measured "
            "(bitrate hints need measured rates; run `splitinfer eval --update-manifest`)")
        verdict = unjudged("no held-out images to measure it on: run `splitinfer eval --data LABELLED "
                           "--update-manifest` before trusting it")
    else:
        verdict = unjudged("not measured (--no-eval): run `splitinfer eval --update-manifest` before trusting it")
    bundle = update_metrics(bundle, [], {"verdict": verdict,
                                         "training": {**bundle.training, "budget": budget.record}})
    say(verdict_line(verdict))
    rc = 0
    if verdict.get("weak"):
        if opts.allow_weak:
            say("--allow-weak: the weak network is kept and the command succeeds")
        else:
            say(f"the bundle in {out} is marked weak (manifest 'verdict'; `splitinfer info` and the server say so): "
                f"train on more images for longer, or pass --allow-weak to accept it (exit 0)")
            rc = EXIT_WEAK
    took = budget.elapsed()
    say(f"train took {took:.0f} s" + (f" of a {opts.time_budget:.0f} s budget" if budget.limited else "") +
        " (" + ", ".join(f"{k} {v['used']:.0f} s" for k, v in budget.record.items()) + ")")
    if distributed:
        dist.destroy_process_group()
    return rc


def _can_start_from(src, cfg) -> bool:
    """A run can start from ``src``'s weights when the networks are the same: equal configs, or a network of the
    same shape starting a variable-rate one: a ladder rung (mean-scale hyperprior), or a variable-rate network
    trained on another level range (same parameters; the level only scales the quantiser step, so a range is
    widened or narrowed without touching a weight)."""
    from dataclasses import replace

    if src == cfg:
        return True
    return src.rate_model in ("hyperprior", "vr-hyperprior") and cfg.rate_model == "vr-hyperprior" and \
        replace(src, rate_model=cfg.rate_model, levels=cfg.levels) == cfg


def _count_heldout(eval_data: Sequence[str], limit: int) -> int:
    from ..data import split_items

    n = sum(len(split_items(scan_data(d), "heldout")) for d in eval_data)
    return min(n, limit) if limit else n


def _eval_seconds_per_image(depth: str, points: int) -> float:
    """Seconds to measure one held-out image at ``points`` rungs or levels, from 2-core CPU measurements: one
    backbone pass per image plus a decode and tail pass per point (slower at a shallow split). Plans the
    measurement's share of a time budget; the measurement itself times what it can do (:func:`measure_heldout`)."""
    return 0.06 + points * (0.012 if depth == "deep" else 0.05)


@dataclass
class MigrateOptions:
    """What :func:`migrate_ladder` needs; ``splitinfer migrate`` has one flag per field."""

    bundle: str = option(help="bundle to migrate (left untouched)")
    data: List[str] = option(help="image folder or CSV (repeatable)")
    out: str = option(help="bundle folder to write")
    extra_data: List[str] = option(list, "unlabelled images used in full")
    steps: int = option(2000, "training steps per rung")
    batch_size: int = option(32, "views per step")
    lr: float = option(2e-3, "peak learning rate of h_s")
    views: int = option(4, "augmented views per training image")
    limit: int = option(0, "at most this many training images (0 = all)")
    eval_data: List[str] = option(list, "folder/CSV whose held-out images measure each rung")
    eval_limit: int = option(0, "measure on at most this many held-out images (0 = all)")
    cache_dir: Optional[str] = option(None, "where cached head features go (default: OUT/cache)")
    weights: Optional[str] = option(None, "backbone weights file (default: the model's pretrained weights)")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    seed: int = option(0, "random seed (views, batch order)")
    command: Optional[str] = None  # the command line, recorded in the manifest (not a flag)


def migrate_ladder(opts: MigrateOptions, say=print):
    """``splitinfer migrate``: a float-hyper-decoder ladder (``opts.bundle``, left untouched) to the bit-exact
    integer one in ``opts.out`` (:func:`shared.training.migrate.migrate_bundle`), trained on the training part of
    ``data`` and all of ``extra_data``, measured on the held-out part of ``eval_data`` when given."""
    from ..bundle import load_bundle
    from ..data import split_items
    from ..models import load_split_model
    from .cache import build_cache
    from .migrate import migrate_bundle

    o = opts
    src = load_bundle(o.bundle, allow_float_hyper=True)
    if src.config.rate_model != "hyperprior" or src.config.hyper_decoder == "integer":
        raise UserError(f"{o.bundle} has no floating-point hyper-decoder: nothing to migrate")
    out = Path(o.out)
    if out.resolve() == src.root.resolve():
        raise UserError("--out must differ from --bundle (the source is kept)")
    model = load_split_model(src.model, src.split, o.weights).to(o.device)
    src.check_backbone(model)
    items = [it for d in o.data for it in split_items(scan_data(d, labels=False), "train")]
    items += [it for d in o.extra_data for it in scan_data(d, labels=False)]
    items = items[:o.limit] if o.limit else items
    if not items:
        raise UserError("no training images found")
    path = (Path(o.cache_dir) if o.cache_dir else out / "cache") / \
        f"{src.model}-{src.split}-v{o.views}-n{len(items)}-s{o.seed}-r0.safetensors"
    say(f"migrating {src.bundle_id} ({len(src.rungs)} rungs): {len(items)} images x {o.views} views")
    cache = build_cache(model, items, o.views, device=o.device, seed=o.seed, path=path)
    migrated = migrate_bundle(src, cache, out, o.steps, o.batch_size, o.lr, o.device, o.seed, o.command)
    say(f"wrote bundle {migrated.bundle_id} with {len(migrated.rungs)} rungs to {out}")
    return measure_heldout(model, migrated, o.eval_data, o.eval_limit, say=say) if o.eval_data else migrated
