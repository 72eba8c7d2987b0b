#!/usr/bin/env bash
# The test suite: set up .venv (once), then run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Two ranks on two cores: one BLAS thread each (10x faster than oversubscribing).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q "$@" tests
