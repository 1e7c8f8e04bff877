#!/usr/bin/env bash
# One device-tool call: fine-tune the built-in model, evaluate the new weights, then the issue-6 GPU benchmark.
# The model's files are written to OUTDIR first, so they come back even if the benchmark is cut.
# Usage there: bash bench/gpu_session.sh OUTDIR TRAIN_MINUTES
# It takes TRAIN_MINUTES + up to 3 (evaluation) + about 4 (benchmark, T_BASIS + T_EDIT seconds): keep
# TRAIN_MINUTES at 3 or less to fit one 10-minute device call, or set BENCH=0 to skip the benchmark and train longer.
set -uo pipefail
out=${1:?outdir}; minutes=${2:-3}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
python3 -m backend.cli train --out /tmp/ft --init assets/catpeople --minutes "$minutes" --batch-size 512 --device cuda --weights-dtype float16 --compile --snr-gamma 5 \
  2>&1 | tr '\r' '\n' | grep -E "step=|saved|rror" | awk 'NR % 25 == 1 || /saved|rror/'
mkdir -p "$out/model"
cp /tmp/ft/unet/diffusion_pytorch_model.safetensors /tmp/ft/training.json "$out/model/"
# Judge the new weights where they were trained: face rate, factor and pixel statistics, the denoising
# table, and the 64-sample grid (samples.png), all in $out/model.
timeout 180 python3 bench/catpeople_eval.py --sections denoising,samples --model-path /tmp/ft --docs "$out/model" \
  --out "$out/model/eval.md" --json "$out/model/eval.json" 2>&1 | tail -2
if [ "${BENCH:-1}" = 1 ]; then
  T_BASIS=${T_BASIS:-170} T_EDIT=${T_EDIT:-70} bash bench/gpu_bench.sh "$out/bench"
fi
