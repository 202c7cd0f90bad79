#!/usr/bin/env bash
# What moved the curve (issue 12): one change at a time at the deep split (efficientnet_lite0 / block14), one
# identical budget (the same lambdas, steps, batch and seed), every ladder measured by `splitinfer train` on the
# same 461 held-out images of ../shared/data/imagenet_val. All rows read one view store (--cache-dir), built
# once: 2,539 training images x (8 plain + 2 CutMix views), about 20 minutes on 2 CPU cores.
#   A today's recipe: 539 images, 4 views, split MSE + logit KL
#   B + more views per image (8)                C + tail-feature distillation (stages 7 and the pooled feature)
#   D + the extra unlabelled images (2,539)     E + 2 CutMix views per image
#   G + a learned latent gain (--latent-gain)      F + a wider latent (64 channels instead of 32)
# then, with the winning recipe (W, default E; WIN_EXTRA=--latent-gain adds G's change): the factorized prior,
# the static table, supervised.
# Usage: bash scripts/recipe_ablation.sh OUT [rows...]; OMP_NUM_THREADS sets the threads of each run.
set -euo pipefail
OUT=${1:?usage: recipe_ablation.sh OUT [ROW...]}; shift
ROWS=${*:-A B C D E factorized static supervised}
D=../shared/data
ST=${SPLITINFER:-.venv/bin/splitinfer}
CACHE=${CACHE:-runs/views}
EXTRA=(--extra-data "$D/imagenet_extra/images.csv" --extra-data "$D/imagenet_sample100_fullres")
common=(--model efficientnet_lite0 --split block14 --data "$D/imagenet_val" --batch-size 32
        --steps ${STEPS:-900} --steps-per-rung ${STEPS_PER_RUNG:-500} --lambdas ${LAMBDAS:-8,2,0.5,0.12}
        --seed 0 --cache-dir "$CACHE")
W=(--views 8 --tail-features 1 "${EXTRA[@]}" ${WIN_MIX:---mix-views 2} ${WIN_EXTRA:-})
for row in $ROWS; do
  case $row in
    A) args=(--views 4) ;;
    B) args=(--views 8) ;;
    C) args=(--views 8 --tail-features 1) ;;
    D) args=(--views 8 --tail-features 1 "${EXTRA[@]}") ;;
    E) args=(--views 8 --tail-features 1 "${EXTRA[@]}" --mix-views 2) ;;
    G) args=(--views 8 --tail-features 1 "${EXTRA[@]}" --mix-views 2 --latent-gain) ;;
    F) args=(--views 8 --tail-features 1 "${EXTRA[@]}" --mix-views 2 --latent 64) ;;
    factorized|static) args=("${W[@]}" --rate-model "$row") ;;
    supervised) args=("${W[@]}" --supervised) ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  [ -f "$OUT/$row/manifest.json" ] && { echo "$row: done"; continue; }
  /usr/bin/time -f "$row: %e s wall" "$ST" train "${common[@]}" "${args[@]}" --out "$OUT/$row" > "$OUT.$row.log" 2>&1
  tail -1 "$OUT.$row.log"
done
