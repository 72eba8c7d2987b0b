#!/usr/bin/env bash
# Create (or reuse) the project virtual environment at .venv/ with every pinned
# dependency of requirements.txt. Safe to run repeatedly: a complete environment
# whose requirements have not changed is reused as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

# make_shards.py and its tests call ffmpeg / ffprobe (system packages, not pip).
if ! command -v ffmpeg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "[setup_env] installing ffmpeg via apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP=$VENV/.xkd-env-complete
# The stamp records what the environment was built from; any change rebuilds it.
WANT=$( (cat requirements.txt pyproject.toml scripts/setup_env.sh; echo "cuda=${XKD_CUDA:-13}") | sha256sum | cut -d' ' -f1)

if [[ -f $STAMP && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "[setup_env] reusing complete environment $VENV"
  exit 0
fi

echo "[setup_env] building $VENV with $($PYTHON --version)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip wheel setuptools ninja
if [[ ${XKD_CUDA:-13} == 12 ]]; then
  # V100 / CUDA 12 drivers: the torch set from PyTorch's cu126 index (CUDA 13 dropped Volta)
  # and DALI for CUDA 12. The cu126 wheels satisfy requirements.txt's "torch==X" pins.
  pins=$(grep -E '^(torch|torchvision|torchaudio)==' requirements.txt | tr '\n' ' ')
  "$VENV/bin/python" -m pip install --quiet --index-url https://download.pytorch.org/whl/cu126 $pins
fi
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
if [[ ${XKD_CUDA:-13} == 12 ]]; then
  dali=$(grep -E '^nvidia-dali-cuda130==' requirements.txt | cut -d= -f3)
  "$VENV/bin/python" -m pip uninstall --quiet -y nvidia-dali-cuda130
  "$VENV/bin/python" -m pip install --quiet "nvidia-dali-cuda120==$dali"
fi
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .

# (DeepSpeed prints its accelerator warning on stdout on import: look at the last line only.)
shm_op=$("$VENV/bin/python" -c "import glob, os, deepspeed; print(bool(glob.glob(os.path.join(os.path.dirname(deepspeed.__file__), 'ops/comm/deepspeed_shm_comm_op*.so'))))" 2>/dev/null | tail -n 1 || echo False)
if ! command -v nvidia-smi >/dev/null 2>&1 && [[ $shm_op != True ]]; then
  # DeepSpeed on the CPU accelerator JIT-compiles its shared-memory collective op at
  # every fresh start (100-200 s). Build it once into the installed package instead.
  echo "[setup_env] no GPU: prebuilding DeepSpeed's CPU shm_comm op"
  DS_BUILD_SHM_COMM=1 DS_ACCELERATOR=cpu "$VENV/bin/python" -m pip install --quiet \
    --no-build-isolation --no-deps --force-reinstall --no-cache-dir \
    "$(grep -E '^deepspeed==' requirements.txt)"
fi

"$VENV/bin/python" - <<'PY'
import torch, torchaudio, torchvision, timm, deepspeed, nvidia.dali, webdataset, mlflow, sklearn, submitit
print(f"[setup_env] torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
      f"torchvision {torchvision.__version__}, timm {timm.__version__}, deepspeed {deepspeed.__version__}, "
      f"dali {nvidia.dali.__version__}, mlflow {mlflow.__version__}")
PY
echo "$WANT" > "$STAMP"
echo "[setup_env] done: $VENV"
