#!/usr/bin/env bash
# CamVid segmentation, end to end on a 2-core CPU (about 2.5 hours): the efficientnet_lite0_seg teacher, four
# ladders and one evaluation of all of them against four image codecs (this regenerates docs/seg/:
# results.json, results.md, rd.png, masks.png).
#   1. teacher: DeepLabv3-lite on ImageNet EfficientNet-Lite0, CamVid train+val, 240x320 crops, 40 epochs
#   2. shallow split (block1), label-free   3. deep split (block15), label-free, and 4. supervised
#   5. deep split, label-free, lower rates (z at a coarser stride)
#   6. splitinfer eval on CamVid test (233 frames): every rung, JPEG/WebP/AVIF/HEVC sweeps, 3 mask pictures
# Each step is skipped when its output exists; interrupted steps resume from their checkpoints.
# Budgets are wall-clock seconds (each schedule is compressed to fit); raise them on a faster machine.
# Usage: bash scripts/camvid_seg.sh OUT_DIR [DOCS_DIR]
set -euo pipefail
OUT=${1:?usage: camvid_seg.sh OUT_DIR [DOCS_DIR]}
DOCS=${2:-$OUT/report}
D=../shared/data/camvid
ST=${SPLITINFER:-.venv/bin/splitinfer}
export SPLITINFER_SEG_TEACHER=${SPLITINFER_SEG_TEACHER:-$OUT/teacher.safetensors}
mkdir -p "$OUT"

bash "$(dirname "$0")/camvid_teacher.sh"

common=(--model efficientnet_lite0_seg --data "$D/train" --data "$D/val" --part all --views 2 --seed 0
        --cache-dir "$OUT/cache")
ladder() {  # OUT_NAME ARGS...: train unless the bundle is there
  local name=$1; shift
  [ -f "$OUT/$name/manifest.json" ] || "$ST" train "${common[@]}" "$@" --out "$OUT/$name"
}
ladder block1-distill --split block1 --batch-size 8 --tail-every 2 --steps 1000 --steps-per-rung 300 \
  --lambdas 4,2,1,0.5,0.25,0.12 --time-budget ${SHALLOW_BUDGET:-2400}
# deep: the split-feature MSE at weight 1 held the rate near 0.2 bpp at lambda 2 (320 channels of mostly
# task-irrelevant detail), so it weighs 0.1 here and the lambdas are lower
deep=(--split block15 --batch-size 16 --steps 2000 --steps-per-rung 600 --feature-weight 0.1
      --lambdas 1,0.5,0.25,0.12,0.06,0.03)
ladder block15-distill "${deep[@]}" --time-budget ${DEEP_BUDGET:-900}
ladder block15-supervised "${deep[@]}" --supervised --time-budget ${DEEP_SUP_BUDGET:-600}
# the deep ladder above bottoms out near 0.05 bpp; this one goes to lower lambdas and codes the side
# information z at hyper-stride 4 (32x6x8 values instead of 32x12x15)
ladder block15-distill-low --split block15 --batch-size 16 --steps 1200 --steps-per-rung 400 --feature-weight 0.1 \
  --hyper-stride 4 --lambdas 0.06,0.03,0.015,0.008 --time-budget ${DEEP_LOW_BUDGET:-600}

# one evaluation on CamVid test (never trained on): mIoU and pixel accuracy per rung and per codec setting;
# masks.png pictures the first ladder (block1) and the first codec at its lowest rung's rate
"$ST" eval --data "$D/test" --part all --batch-size 4 --codecs jpeg,webp,avif,hevc --pictures 3 \
  --update-manifest --out "$DOCS" \
  --bundle "$OUT/block1-distill" --bundle "$OUT/block15-distill" --bundle "$OUT/block15-distill-low" \
  --bundle "$OUT/block15-supervised"
# provenance beside the tables: the teacher's training record and each ladder's manifest (with its metrics)
mkdir -p "$DOCS/ladders"
cp "${SPLITINFER_SEG_TEACHER%.safetensors}.json" "$DOCS/teacher.json"
for name in block1-distill block15-distill block15-distill-low block15-supervised; do
  cp "$OUT/$name/manifest.json" "$DOCS/ladders/$name.json"
done
