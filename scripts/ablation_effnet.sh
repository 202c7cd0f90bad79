#!/usr/bin/env bash
# Ablations on efficientnet_lite0 at a deep split (block14 by default; the edge runs 87% of the FLOPs),
# under one identical budget: the same training images (the 539 of ../shared/data/imagenet_val that the
# held-out rule leaves for training), split point, steps, views, lambdas and seed; every ladder is then
# measured on the same 461 held-out images, with the shipped block1 ladder and the image codecs beside them
# (this regenerates docs/effnet/: results.json, results.md, rd.png).
#   1. rate model: hyperprior (the method) vs factorized (Entropic Student) vs static (the seed's approach)
#   2. objective: label-free distillation vs supervised cross-entropy (both with the hyperprior)
# About 6 minutes per ladder and 15 for the evaluation on 2 CPU cores. Usage: bash scripts/ablation_effnet.sh OUT_DIR [SPLIT]
set -euo pipefail
OUT=${1:?usage: ablation_effnet.sh OUT_DIR [SPLIT]}
SPLIT=${2:-block14}
D=../shared/data
ST=${SPLITINFER:-.venv/bin/splitinfer}
common=(--model efficientnet_lite0 --split "$SPLIT" --data "$D/imagenet_val" --views 4 --batch-size 32
        --steps ${STEPS:-1500} --steps-per-rung ${STEPS_PER_RUNG:-400} --lambdas ${LAMBDAS:-4,2,1,0.5,0.25,0.12,0.06}
        --seed 0 --cache-dir "$OUT/cache")
for variant in hyperprior factorized static; do
  "$ST" train "${common[@]}" --rate-model "$variant" --out "$OUT/$variant-distill"
done
"$ST" train "${common[@]}" --rate-model hyperprior --supervised --out "$OUT/hyperprior-supervised"
# one evaluation of everything on the same held-out images: the shipped block1 ladder, the four ladders, the codecs
"$ST" eval --data "$D/imagenet_val" --codecs jpeg,webp,avif,hevc --out "$OUT/report" \
  --bundle shared/assets/bundles/efficientnet_lite0-block1 \
  --bundle "$OUT/hyperprior-distill" --bundle "$OUT/factorized-distill" --bundle "$OUT/static-distill" \
  --bundle "$OUT/hyperprior-supervised"
