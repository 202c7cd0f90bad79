#!/usr/bin/env bash
# The two embedded ladders of efficientnet_lite0 (issue 12), trained on the 2-core CPU from one view store
# (--cache-dir, shared with scripts/recipe_ablation.sh): 2,539 label-free training images (the 539 training-part
# images of imagenet_val, imagenet_extra, imagenet_sample100_fullres) x (8 views + 2 CutMix views).
#   shallow (block1): the shipped ladder fine-tuned rung by rung with the new recipe (a new top rung, lambda 64,
#                     starts from the old top rung)
#   deep (block14):   the recipe the ablation picked (scripts/recipe_ablation.sh), continued from that row's
#                     ladder (FROM, every rung from its nearest-lambda rung) with more rungs and a longer budget;
#                     DEEP_ARGS carries the row's bottleneck options (e.g. --latent-gain)
# Each command measures its ladder on the 461 held-out images of imagenet_val and records it in the manifest.
# Usage: OMP_NUM_THREADS=1 bash scripts/ship_ladders.sh OUT shallow|deep
set -euo pipefail
OUT=${1:?usage: ship_ladders.sh OUT shallow|deep}; WHICH=${2:?shallow or deep}
D=../shared/data
ST=${SPLITINFER:-.venv/bin/splitinfer}
CACHE=${CACHE:-runs/views}
data=(--model efficientnet_lite0 --data "$D/imagenet_val" --extra-data "$D/imagenet_extra/images.csv"
      --extra-data "$D/imagenet_sample100_fullres" --views 8 --seed 0 --cache-dir "$CACHE")
case $WHICH in
  shallow)
    "$ST" train "${data[@]}" --split block1 --mix-views ${MIX:-2} --tail-features ${TAILF:-1} \
      --finetune shared/assets/bundles/efficientnet_lite0-block1 --lambdas 64,16,4,2,1,0.5,0.25 \
      --feature-weight 0.1 --feature-warmup 0 --lr 3e-4 --batch-size 16 --steps 1000000 --steps-per-rung 1000000 \
      --time-budget ${BUDGET:-4500} --out "$OUT/shallow" ;;
  deep)
    "$ST" train "${data[@]}" --split block14 --mix-views ${MIX:-2} --tail-features ${TAILF:-1} ${DEEP_ARGS:-} \
      ${FROM:+--finetune "$FROM"} --feature-warmup 0 --lambdas ${LAMBDAS:-32,8,2,0.5,0.12} --batch-size 32 \
      --steps 1000000 --steps-per-rung 1000000 --time-budget ${BUDGET:-1260} --out "$OUT/deep" ;;
  *) echo "shallow or deep" >&2; exit 2 ;;
esac
