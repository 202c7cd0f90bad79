#!/usr/bin/env bash
# Ablations on CIFAR-10 ResNet-56 (fast on a CPU) under one identical budget: the same training images
# (the part of ../shared/data/cifar10/test_jpeg that the held-out rule leaves for training), the same
# split point, steps, views, lambdas and seed; every ladder measured on the same 1,000 held-out images.
#   1. rate model: hyperprior (the method) vs factorized (Entropic Student) vs static (the seed's approach)
#   2. objective: label-free distillation vs supervised cross-entropy (both with the hyperprior)
# Usage: bash scripts/ablation_cifar.sh OUT_DIR [SPLIT]
set -euo pipefail
OUT=${1:?usage: ablation_cifar.sh OUT_DIR [SPLIT]}
SPLIT=${2:-layer2}
DATA=../shared/data/cifar10/test_jpeg
W=../shared/data/cifar10_resnet_akamaster/resnet56-4bfd9763.th
ST=${SPLITINFER:-.venv/bin/splitinfer}
common=(--model cifar_resnet56 --split "$SPLIT" --weights "$W" --data "$DATA" --views 2 --batch-size 32
        --steps 600 --steps-per-rung 200 --lambdas 64,16,4,1,0.25 --seed 0 --cache-dir "$OUT/cache")
for variant in hyperprior factorized static; do
  "$ST" train "${common[@]}" --rate-model "$variant" --out "$OUT/$variant-distill"
done
"$ST" train "${common[@]}" --rate-model hyperprior --supervised --out "$OUT/hyperprior-supervised"
"$ST" eval --data "$DATA" --limit 1000 --weights "$W" --out "$OUT/report" \
  --bundle "$OUT/hyperprior-distill" --bundle "$OUT/factorized-distill" --bundle "$OUT/static-distill" \
  --bundle "$OUT/hyperprior-supervised"
