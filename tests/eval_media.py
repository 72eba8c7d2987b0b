"""Real labelled media for the evaluation tests: the bundled sound effects and sample clips as shards.

* ``build_sound_shards``: data/sounds/clips (22 classes x 8 real clips, 0 A.D., CC-BY-SA-3.0)
  through the real ``data_prep/make_shards.py --no-video-policy audio-only``;
  ``cached_sound_shards``: the same, built once per version of everything that decides its bytes.
* ``write_random_init_export``: the step-0 encoders of configs/tiny.yaml in the export format.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

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


def sound_shards_key() -> str:
    """A hash of what decides the sound shards' bytes: the checkout, the clips, make_shards and the
    library modules it imports, and the decoders' versions (ffmpeg, soundfile)."""
    import soundfile

    digest = hashlib.sha256(str(ROOT).encode())  # the manifest records the input folder
    sources = sorted((SOUNDS / "clips").rglob("*")) + [ROOT / "data_prep" / "make_shards.py"]
    # make_shards imports xkd.data and these (a local run; SLURM modules only for --slurm).
    sources += sorted((ROOT / "xkd" / "data").glob("*.py")) + [ROOT / "xkd" / name for name in (
        "__init__.py", "atomic_files.py", "cli_help.py")]
    for path in sources:
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[:1]
    digest.update(repr((ffmpeg, soundfile.__version__, soundfile.__libsndfile_version__)).encode())
    return digest.hexdigest()[:16]


def cached_sound_shards(output: Path) -> Path:
    """``build_sound_shards`` into ``output``, copied from a cache (``$XKD_TEST_CACHE``, default
    ~/.cache/xkd-tests) filled on the first run of each version (:func:`sound_shards_key`): the
    development loop pays the 30-40 s build once. A copy, so no test can change the cached files."""
    cache = Path(os.environ.get("XKD_TEST_CACHE") or Path.home() / ".cache" / "xkd-tests")
    entry = cache / f"sound_shards-{sound_shards_key()}"
    if not (entry / "manifest.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
        build_sound_shards(building / "shards")
        try:
            os.rename(building / "shards", entry)  # atomic: a concurrent session may have won
        except OSError:
            pass
        shutil.rmtree(building, ignore_errors=True)
    shutil.copytree(entry, output)
    return output


def write_random_init_export(output: Path) -> Path:
    """An export directory holding the tiny config's step-0 encoders (what pretraining starts from)."""
    from xkd.config import load_config
    from xkd.engine.export import export_initial_encoders

    like = output.parent / (output.name + "_config")
    like.mkdir(parents=True, exist_ok=True)
    (like / "config.yaml").write_text(yaml.safe_dump(load_config(TINY).to_dict(), sort_keys=False))
    export_initial_encoders(like, output)
    return output
