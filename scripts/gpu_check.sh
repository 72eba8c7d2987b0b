#!/usr/bin/env bash
# One-command GPU check (issue 14): environment, DALI NVDEC decode, ViT-L bf16/fp16 steps with fused
# attention only, ZeRO-3 resume, bf16 evaluation, ZeRO-2 vs DDP. <= 8 min on one GPU.
#   bash scripts/gpu_check.sh [--json runs/gpu_check.json] [--shards sample_shards] [--only env,dali]
# Writes a JSON report and prints a readable summary; exit 0 all passed, 1 a check failed,
# 2 no GPU (or bad arguments). Uses .venv (scripts/setup_env.sh) when present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# One visible GPU is all the check needs; keep the first one unless the caller chose.
if [[ -z ${CUDA_VISIBLE_DEVICES+x} ]] && command -v nvidia-smi >/dev/null 2>&1; then
  export CUDA_VISIBLE_DEVICES=0
fi
exec "$PY" -m benchmarks.gpu_check "$@"
