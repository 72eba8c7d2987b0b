#!/usr/bin/env bash
# The test suite: set up .venv (once), then run pytest. Extra arguments go to pytest.
#   bash scripts/test.sh          everything (what CI runs)
#   bash scripts/test.sh --fast   the development loop: skips the tests marked slow (real training,
#                                 SLURM clusters, the MLflow UI), a few minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Two ranks on two cores: one BLAS thread each (10x faster than oversubscribing).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [[ ${1:-} == --fast ]]; then
  shift
  exec .venv/bin/python -m pytest -q --durations=15 -m "not slow" "$@" tests
fi
# --durations: the slowest tests are listed at the end, to keep the fast loop fast.
exec .venv/bin/python -m pytest -q --durations=15 "$@" tests
