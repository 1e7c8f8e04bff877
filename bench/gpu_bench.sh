#!/usr/bin/env bash
# Issue 6 on the device machine: local-basis benchmark (official baseline vs Eigenface, k = 10 and 50)
# and edit-path benchmark on an SD 1.5-architecture model with random weights. About 5 minutes on an
# H100/H200 and at most ~5.7 min: the two steps' hard timeouts are T_BASIS=230 s and T_EDIT=100 s (env).
# Writes at most 6 files to OUTDIR: basis.{md,json,log}, edit.{md,json,log}.
#
# Usage (device tool):  bash bench/gpu_bench.sh "$OUT"
# CPU smoke run:        EIGENFACE_BENCH_SMOKE=1 bash bench/gpu_bench.sh /tmp/gpuout   (sd-tiny, < 3 min)
set -uo pipefail
out=${1:?usage: bash bench/gpu_bench.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  # (skipped when a caller such as bench/gpu_session.sh has installed them already)
  [ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ "${EIGENFACE_BENCH_SMOKE:-0}" = 1 ]; then
  # Same steps on sd-tiny with tiny settings, to check the script end to end on a CPU.
  # (One thread: on a shared, oversubscribed CPU two torch threads were 10-50x slower than one.)
  model=sd-tiny; extra=(--threads 1)
  basis_args=(--k 4 --ref-k 8 --reference exact:tol=1e-6:iters=8 --baseline-min-iters 3 --baseline-max-iters 3
              --ours fd:eps=0.1:iters=4:vjp=bf16 fd:eps=0.1:iters=4 exact:iters=4 --fd-check 1e-2,1e-1,1 --fd-check-count 1 --products 4)
  edit_args=(--steps 6 --preview-steps 2 --batch 1 2 --repeats 1)
  t_basis=${T_BASIS:-100}; t_edit=${T_EDIT:-60}
else
  # sd15, k = 10 and 50. One exact reference serves both (k_ref = 64 = MAX_K): exact JVPs in chunks of 5
  # fit an H100's 80 GB (chunks of 10 peaked at 116 GB on an H200), with a finite-difference fallback
  # on OOM. The baseline is capped at 15 iterations for k = 10 and at its minimum, 11, for k = 50
  # (~30 s on an H200 by method.md). Method order = priority: whatever the time budget cuts comes last.
  model=sd15; extra=()
  basis_args=(--k 10 50 --steps 25 --ref-k 64 --reference exact:chunk=5:tol=1e-7:iters=12 fd:chunk=20:eps=0.1:tol=1e-7:iters=12
              --baseline-max-iters 10:15,50:11 --ours fd:chunk=20:eps=0.1:vjp=bf16 fd:chunk=20:eps=0.1 exact:chunk=5 --fd-check 1e-2,1e-1,1 --products 8)
  edit_args=(--steps 25 --preview-steps 5 --batch 1 4 --dtypes fp16 fp32 --repeats 3 --full-sample)
  t_basis=${T_BASIS:-230}; t_edit=${T_EDIT:-100}
fi
# Inside each run, methods not yet started once its budget is spent are skipped (and listed as such),
# leaving time for the one in flight before the hard timeout.
basis_budget=$(( t_basis > 80 ? t_basis - 40 : t_basis / 2 )); edit_budget=$(( t_edit > 60 ? t_edit - 30 : t_edit / 2 ))

# TF32 is switched off inside bench_basis.py (finite differences need true fp32; method.md pitfalls).
timeout -k 10 "$t_basis" python3 bench/bench_basis.py --model "$model" "${extra[@]}" "${basis_args[@]}" --budget-s "$basis_budget" --out "$out" --name basis \
  > "$out/basis.log" 2>&1 || echo "bench_basis.py exited with status $? (124 = timeout); partial results are in $out/basis.json"
tail -n 25 "$out/basis.log"
timeout -k 10 "$t_edit" python3 bench/bench_edit.py --model "$model" "${extra[@]}" "${edit_args[@]}" --budget-s "$edit_budget" --out "$out" --name edit \
  > "$out/edit.log" 2>&1 || echo "bench_edit.py exited with status $? (124 = timeout)"
tail -n 15 "$out/edit.log"
ls -l "$out"
