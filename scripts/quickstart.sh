#!/usr/bin/env bash
# The main job on the built-in sample data:
#   1. set up .venv (once), 2. shard the sample clips and the labelled sounds of the probe (once),
#   3. pretrain tiny XKD with DeepSpeed ZeRO-2 on 2 CPU ranks (gloo) or every local GPU,
#      tracked in MLflow (runs/mlruns.db), checkpoints in runs/tiny/checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/make_sample_shards.sh
bash scripts/make_sound_shards.sh --no-progress   # the probe set of configs/tiny.yaml (k-NN / linear in MLflow)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # On CPUs the deepspeed launcher starts one rank per NUMA node; ask for two.
  export LOCAL_SIZE=${LOCAL_SIZE:-2}
fi
exec .venv/bin/deepspeed launch/pretrain.py --ds_config ds_configs/zero2.json "$@"
