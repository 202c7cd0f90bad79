#!/usr/bin/env bash
# The CamVid segmentation teacher (efficientnet_lite0_seg), trained once and shared by scripts/camvid_seg.sh and
# scripts/camvid_vr.sh: skipped when $SPLITINFER_SEG_TEACHER exists. TEACHER_BUDGET: wall-clock seconds (2400).
set -euo pipefail
: "${SPLITINFER_SEG_TEACHER:?set SPLITINFER_SEG_TEACHER to the weights file of the teacher}"
D=../shared/data/camvid
ST=${SPLITINFER:-.venv/bin/splitinfer}
if [ ! -f "$SPLITINFER_SEG_TEACHER" ]; then
  "$ST" train-teacher --data "$D/train" --data "$D/val" --test-data "$D/test" --out "$SPLITINFER_SEG_TEACHER" \
    --epochs 40 --crop 240x320 --scale 0.75,1.5 --batch-size 8 --time-budget ${TEACHER_BUDGET:-2400}
fi
