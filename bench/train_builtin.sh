#!/usr/bin/env bash
# Train the built-in cat-people model and its factor estimator on a GPU (the device tool).
# Usage there: bash bench/train_builtin.sh OUTDIR MINUTES
set -euo pipefail
out=${1:?output directory}; minutes=${2:-5.5}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m backend.cli train-estimator --out "$out/estimator" --minutes 1.5 --batch-size 512 --device cuda > "$out/estimator.log" 2>&1 &
est=$!
python3 -m backend.cli train --out "$out/catpeople" --minutes "$minutes" --batch-size 256 --device cuda --weights-dtype float16 --compile 2>&1 | tr '\r' '\n' | grep -E "step|saved|resum|Error|error" | awk 'NR % 20 == 1 || /saved|rror/'
rm -rf "$out/catpeople/checkpoint"
wait $est; tail -2 "$out/estimator.log"; rm "$out/estimator.log"
ls -lR "$out"
