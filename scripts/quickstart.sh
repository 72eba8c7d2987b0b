#!/usr/bin/env bash
# The main job on the built-in sample data: set up .venv (once), then pretrain tiny XKD.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python launch/pretrain.py --config configs/tiny.yaml --max-steps 5 "$@"
