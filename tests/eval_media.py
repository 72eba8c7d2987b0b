"""Real labelled media for the evaluation tests: the bundled sound effects and sample clips as shards.

* ``build_sound_shards``: data/sounds/clips (22 classes x 8 real clips, 0 A.D., CC-BY-SA-3.0)
  through the real ``data_prep/make_shards.py --no-video-policy audio-only``;
  ``cached_sound_shards``: the same, through the test shard cache (built once per version).
* ``write_random_init_export``: the step-0 encoders of configs/tiny.yaml in the export format.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from shard_cache import cached_shards

ROOT = Path(__file__).resolve().parents[1]
SOUNDS = ROOT / "data" / "sounds"
SOUND_FOLDS = SOUNDS / "folds.csv"
TINY = ROOT / "configs" / "tiny.yaml"


def build_sound_shards(output: Path) -> Path:
    subprocess.run([sys.executable, str(ROOT / "data_prep" / "make_shards.py"), "--input", str(SOUNDS / "clips"),
                    "--output", str(output), "--no-video-policy", "audio-only", "--short-policy", "pad",
                    "--shard-size", "64", "--workers", "2", "--verify", "--no-progress"],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    return output


def cached_sound_shards(output: Path) -> Path:
    """``build_sound_shards`` through the test shard cache (``shard_cache``): built once per version."""
    return cached_shards("sound_shards", [SOUNDS / "clips"], build_sound_shards, output)


def write_random_init_export(output: Path) -> Path:
    """An export directory holding the tiny config's step-0 encoders (what pretraining starts from)."""
    from xkd.config import load_config
    from xkd.engine.export import export_initial_encoders

    like = output.parent / (output.name + "_config")
    like.mkdir(parents=True, exist_ok=True)
    (like / "config.yaml").write_text(yaml.safe_dump(load_config(TINY).to_dict(), sort_keys=False))
    export_initial_encoders(like, output)
    return output
