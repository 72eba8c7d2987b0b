#!/usr/bin/env bash
# Shard the bundled sample clips (data/sample/av, 8 real clips) into sample_shards/.
# Keeps every clip: the 2.4 s one is padded (json "padded": true; loaders loop/pad it) and the
# one without audio gets a silent track (json "has_audio": false). Does nothing when
# sample_shards/manifest.json already exists and verifies. Extra arguments go to make_shards.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${SAMPLE_SHARDS:-sample_shards}

if [[ -f $OUT/manifest.json ]] && "$PY" data_prep/make_shards.py --output "$OUT" --verify >/dev/null 2>&1; then
  echo "[make_sample_shards] $OUT is complete and verifies; nothing to do"
  exit 0
fi
if [[ -f $OUT/manifest.json ]]; then
  echo "[make_sample_shards] $OUT/manifest.json does not verify: rebuilding $OUT"
  rm -rf "$OUT"
fi
exec "$PY" data_prep/make_shards.py --input data/sample/av --output "$OUT" --split train \
  --shard-size 4 --short-policy pad --no-audio-policy silence --workers "${WORKERS:-2}" --verify "$@"
