#!/usr/bin/env bash
# The method's two claims, re-tested (issue 23, item 7): at one split, four ladders under one identical budget
# (same lambdas, steps, batch, seed, views) that differ in one thing each from the first:
#   hyperprior  the recipe the variable-rate networks train with (8 views + 2 CutMix, tail features, the extra
#               unlabelled images, label-free distillation, the hyperprior rate model)
#   factorized  the same with the factorized prior (no side information)
#   static      the same with the seed's static table (fixed quantiser step, one frozen distribution)
#   supervised  the same with cross-entropy against the labels instead of distillation from the unsplit model
# then one `splitinfer eval` of all four on the TEST part of the held-out images (nothing is chosen here), whose
# summary gives each row's BD-rate against the hyperprior row with its paired bootstrap 95% interval.
# Usage: bash scripts/claims_retest.sh SPLIT OUT [ROW...]; OMP_NUM_THREADS sets each run's threads.
#   STEPS / STEPS_PER_RUNG / LAMBDAS / BATCH / LATENT override the split's defaults below; SKIP_EVAL=1 trains only.
set -euo pipefail
SPLIT=${1:?usage: claims_retest.sh SPLIT OUT [ROW...]}; OUT=${2:?usage: claims_retest.sh SPLIT OUT [ROW...]}
shift 2
ROWS=${*:-hyperprior factorized static supervised}
D=../shared/data
ST=${SPLITINFER:-.venv/bin/splitinfer}
case $SPLIT in  # one budget per split: the shallow tail is the whole network, so its steps cost ~6x more
  block14) lam=8,2,0.5,0.12; steps=900; per=500; batch=32; latent=64 ;;
  block1)  lam=4,1,0.25;     steps=500; per=300; batch=16; latent= ;;
  *) echo "no budget set for split $SPLIT" >&2; exit 2 ;;
esac
common=(--model efficientnet_lite0 --split "$SPLIT" --data "$D/imagenet_val"
        --extra-data "$D/imagenet_extra/images.csv" --extra-data "$D/imagenet_sample100_fullres"
        --views 8 --mix-views 2 --tail-features 1 --seed 0 --cache-dir "${CACHE:-runs/views}" --no-eval
        --lambdas "${LAMBDAS:-$lam}" --steps "${STEPS:-$steps}" --steps-per-rung "${STEPS_PER_RUNG:-$per}"
        --batch-size "${BATCH:-$batch}")
latent=${LATENT:-$latent}
[ -n "$latent" ] && common+=(--latent "$latent")
mkdir -p "$OUT"
bundles=()
for row in $ROWS; do
  case $row in
    hyperprior) args=() ;;
    factorized|static) args=(--rate-model "$row") ;;
    supervised) args=(--supervised) ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  bundles+=(--bundle "$OUT/$row")
  [ -f "$OUT/$row/manifest.json" ] && { echo "$row: done"; continue; }
  /usr/bin/time -f "$row: %e s wall" "$ST" train "${common[@]}" "${args[@]}" --allow-weak --out "$OUT/$row" \
    > "$OUT/$row.log" 2>&1
  tail -1 "$OUT/$row.log"
done
[ -n "${SKIP_EVAL:-}" ] && exit 0  # rows trained in parallel: evaluate all of them once, in a last call
"$ST" eval "${bundles[@]}" --data "$D/imagenet_val" --part test --out "$OUT/eval-test" > "$OUT/eval-test.log" 2>&1
sed -n '/### Summary/,/^### splitinfer/p' "$OUT/eval-test/results.md"
