"""``splitinfer train``: arguments only; the use case is ``shared.training.recipe.train_bundle``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields


def _floats(s: str):
    return [float(v) for v in s.split(",") if v.strip()]


def setup_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.epilog = (
        "Images listed by --data are used for training except those held out by the fixed rule "
        "(shared.data.is_heldout: CRC32 of the file name is odd); --eval-data uses only the held-out ones, "
        "so no image ever both trains and evaluates. Label-free distillation is the default."
    )
    p.add_argument("--model", default="efficientnet_lite0", help="backbone (see `splitinfer models`)")
    p.add_argument("--split", default=None, help="split point (default: the model's default split)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the model's pretrained weights)")
    p.add_argument("--data", action="append", required=True,
                   help="image folder or CSV (repeatable); segmentation masks: a folder X beside Xannot (CamVid)")
    p.add_argument("--part", default="train", choices=["train", "all"],
                   help="'all' trains on every --data image, e.g. a data set's own training split that is never "
                        "evaluated (CamVid train/val against test)")
    p.add_argument("--extra-data", action="append", default=[],
                   help="unlabelled images used in full for training (no held-out rule): data you never evaluate on")
    p.add_argument("--eval-data", action="append", default=None,
                   help="folder/CSV whose held-out images measure each rung (default: the held-out part of --data)")
    p.add_argument("--no-eval", action="store_true", help="do not measure the ladder after training")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on at most this many held-out images (0 = all)")
    p.add_argument("--out", required=True, help="bundle folder to write (also holds the checkpoint and logs)")
    p.add_argument("--supervised", action="store_true",
                   help="cross-entropy with labels (segmentation: masks, void ignored) instead of distillation")
    p.add_argument("--lambdas", type=_floats, default=[64, 32, 16, 8, 4, 2], help="comma-separated, one rung each")
    p.add_argument("--steps", type=int, default=2000, help="steps for the first (highest-rate) rung")
    p.add_argument("--steps-per-rung", type=int, default=800, help="steps for each warm-started rung")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds for the whole ladder (0 = no limit); each rung's schedule is compressed to fit")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--views", type=int, default=4,
                   help="augmented views per training image; classification keeps them in a view store under "
                        "--cache-dir, built once and reused by every rung and run (shared/training/views.py)")
    p.add_argument("--mix-views", type=int, default=0,
                   help="CutMix views per training image on top of --views (the teacher scores the mixed image)")
    p.add_argument("--tail-features", type=float, default=0.0,
                   help="weight of the tail-feature loss: the teacher's activations at later stages of the tail "
                        "(BackboneSpec.feature_taps), matched on every tail step; 0 = off")
    p.add_argument("--tail-every", type=int, default=1, help="logit loss every k steps (0 = split MSE only)")
    p.add_argument("--feature-warmup", type=float, default=0.3,
                   help="share of the first rung's steps trained on the split-feature MSE alone (no tail: cheap)")
    p.add_argument("--feature-weight", type=float, default=1.0, help="weight of the split-feature MSE in the distortion")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    p.add_argument("--rate-model", default="hyperprior", choices=["hyperprior", "factorized", "static"])
    p.add_argument("--latent", type=int, default=None, help="latent channels of y (default by split depth)")
    p.add_argument("--hidden", type=int, default=None, help="encoder width")
    p.add_argument("--dec-hidden", type=int, default=None, help="decoder width")
    p.add_argument("--stride", type=int, default=None, help="latent stride against the split feature")
    p.add_argument("--hyper-stride", type=int, default=None, help="side-information stride against y")
    p.add_argument("--hyper-decoder", default="integer", choices=["integer", "float"],
                   help="hyperprior h_s: integer (bit-exact decoding on every device) or float (comparison only)")
    p.add_argument("--latent-gain", action="store_true",
                   help="a learned per-channel gain on y with a 10x learning rate: lets a short run find the latent's "
                        "scale, i.e. how finely it is quantised (shared/codec/bottleneck.py)")
    p.add_argument("--side-refit-steps", type=int, default=500,
                   help="hyperprior: refit the z density to the training z after training (0 = off; changes only "
                        "the bits of z, see shared/training/side_density.py)")
    p.add_argument("--qp", type=float, default=1.0, help="quantiser step of the static rate model")
    p.add_argument("--limit", type=int, default=0, help="use at most this many training images (0 = all)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes while caching")
    p.add_argument("--init-from", default=None, metavar="BUNDLE[:RUNG]",
                   help="start the first rung from a rung of an existing bundle with the same config "
                        "(two-stage recipes: features first, logits last)")
    p.add_argument("--finetune", default=None, metavar="BUNDLE",
                   help="start every rung from the rung of BUNDLE nearest in lambda (same config): retrain an "
                        "existing ladder with another recipe")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--cache-dir", default=None,
                   help="where cached views go (default: OUT/cache); share one between runs to reuse its views")


def run(args) -> int:
    from ..training.recipe import TrainOptions, train_bundle

    opts = {f.name: getattr(args, f.name) for f in fields(TrainOptions) if hasattr(args, f.name)}
    opts["eval_data"] = [] if args.no_eval else args.eval_data
    opts["resume"] = not args.no_resume
    opts["command"] = "splitinfer train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None
    return train_bundle(TrainOptions(**opts))
