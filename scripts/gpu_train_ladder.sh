#!/usr/bin/env bash
# Train an efficientnet_lite0/block1 ladder on a GPU machine that has PyTorch but not compressai:
# wheels in .whl/, training images prepared by scripts/prepare_gpu_data.py in .gpu/data.
# Usage: OUT=/some/dir bash scripts/gpu_train_ladder.sh TIME_BUDGET_SECONDS [extra `splitinfer train` args]
# The bundle (manifest + rungs) and the training log are copied to $OUT.
set -uo pipefail
BUDGET=${1:-420}
shift || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, compressai; print('torch', torch.__version__, 'compressai', compressai.__version__, torch.cuda.get_device_name())" || exit 1
python3 -m splitinfer train --device cuda --workers 12 \
  --data .gpu/data/imagenet_val_train --extra-data .gpu/data/extra \
  --views 8 --batch-size 64 --time-budget "$BUDGET" --seed 0 --out /tmp/run "$@" 2>&1 \
  | tr '\r' '\n' | grep -v -E 'step/s|img/s|s/step' | grep .
cp /tmp/run/manifest.json /tmp/run/rung-*.safetensors /tmp/run/train_log.csv "$OUT"/
