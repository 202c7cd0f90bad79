"""Levels outside a variable-rate network's trained range, measured (docs/results.md, issue 16): the rate and
top-1 of 100 held-out images at coarser and finer quantiser steps than the network trained with. The range check
is lifted for this measurement only; servers and edges refuse such levels.

    python scripts/vbr_levels_beyond.py runs/vbr/deep ../shared/data/imagenet_val
"""

import sys

import numpy as np
import torch

from shared.bundle import load_bundle
from shared.data import eval_transform, load_image, scan_images, split_items, spread
from shared.models import load_split_model
from shared.pipeline import LadderCodec

bundle = load_bundle(sys.argv[1])
codec = LadderCodec(bundle)
net = codec.rung(0)
model = load_split_model(bundle.model, bundle.split).eval()
items = spread(split_items(scan_images(sys.argv[2]), "heldout"), 100)
tf = eval_transform(model.spec.preprocess)
x = torch.stack([tf(load_image(p)) for p, _ in items])
labels = torch.tensor([label for _, label in items])
with torch.no_grad():
    feat = model.head(x)
    ref = model.tail(feat, x).argmax(1)
net.rate.levels = bundle.config.levels = (-24, 96)  # lifted for this measurement
hw = tuple(x.shape[-2:])
for q in (-24, -16, -12, -8, -4, 0, 20, 40, 48, 56, 64, 72, 80, 96):
    msgs = codec.encode(feat, hw, level=q)
    with torch.no_grad():
        pred = model.tail(torch.cat([codec.decode(m)[0] for m in msgs]), x).argmax(1)
    bpp = [len(m) * 8 / (hw[0] * hw[1]) for m in msgs]
    print(f"q={q:4d} bpp {np.mean(bpp):.4f} (max {max(bpp):.4f}) top-1 {(pred == labels).float().mean():.3f} "
          f"agreement {(pred == ref).float().mean():.3f}", flush=True)
