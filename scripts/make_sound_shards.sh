#!/usr/bin/env bash
# Shard the bundled labelled sound effects (data/sounds/clips, 22 classes, 176 real clips) into
# sound_shards/ as audio-only samples (make_shards.py --no-video-policy audio-only); every clip is
# shorter than 4 s and kept (json "padded": true; the evaluation loader loops it to 4 s).
# Then, e.g.:  python eval/linear_svm.py --checkpoint <export> --modality audio \
#                --data sound_shards --splits esc50:data/sounds/folds.csv
# Does nothing when sound_shards/ is complete and verifies. Extra arguments go to make_shards.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${SOUND_SHARDS:-sound_shards}

if [[ -f $OUT/manifest.json ]] && "$PY" data_prep/make_shards.py --output "$OUT" --verify >/dev/null 2>&1; then
  echo "[make_sound_shards] $OUT is complete and verifies; nothing to do"
  exit 0
fi
if [[ -f $OUT/manifest.json ]]; then
  echo "[make_sound_shards] $OUT/manifest.json does not verify: rebuilding $OUT"
  rm -rf "$OUT"
fi
exec "$PY" data_prep/make_shards.py --input data/sounds/clips --output "$OUT" --split train --shard-size 64 \
  --no-video-policy audio-only --short-policy pad --workers "${WORKERS:-2}" --verify "$@"
