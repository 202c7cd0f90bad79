#!/usr/bin/env bash
# CamVid segmentation at the deep split with ONE variable-rate network (issue 23, item 6): the recipe of the
# ImageNet variable-rate networks (quality levels -4..40, one lambda per level on a geometric scale) on the deep
# CamVid ladder's settings (block15, split-feature MSE at weight 0.1, label-free distillation from the teacher),
# then one evaluation on CamVid test (233 frames, never trained on) beside the shipped-recipe ladders' codec
# points. Steps are skipped when their output exists; an interrupted step resumes from its checkpoint.
#   1. the teacher, as scripts/camvid_seg.sh trains it (skipped when $SPLITINFER_SEG_TEACHER exists)
#   2. the variable-rate network            3. splitinfer eval on CamVid test (+ 3 mask pictures)
# Usage: bash scripts/camvid_vr.sh OUT_DIR; TEACHER_BUDGET / VR_BUDGET: wall-clock seconds of steps 1 and 2.
set -euo pipefail
OUT=${1:?usage: camvid_vr.sh OUT_DIR}
D=../shared/data/camvid
ST=${SPLITINFER:-.venv/bin/splitinfer}
export SPLITINFER_SEG_TEACHER=${SPLITINFER_SEG_TEACHER:-$OUT/teacher.safetensors}
mkdir -p "$OUT"

bash "$(dirname "$0")/camvid_teacher.sh"
[ -f "$OUT/block15-vr/manifest.json" ] || "$ST" train --model efficientnet_lite0_seg --data "$D/train" --data "$D/val" \
  --part all --views 2 --seed 0 --cache-dir "$OUT/cache" --split block15 --batch-size 16 --feature-weight 0.1 \
  --levels=-4:40 --lambdas ${LAMBDAS:-4,0.01} --steps 4000 --steps-per-rung 0 --feature-warmup 0.1 \
  --time-budget ${VR_BUDGET:-2400} --no-eval --out "$OUT/block15-vr"
"$ST" eval --data "$D/test" --part all --batch-size 4 --pictures 3 --codecs ${CODECS:-webp} \
  --out "$OUT/eval-test" --bundle "$OUT/block15-vr"
sed -n '/### Summary/,/^### splitinfer/p' "$OUT/eval-test/results.md"
