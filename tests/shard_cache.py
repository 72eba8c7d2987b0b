"""Shards that many tests read, built by the real make_shards once per version and copied from a cache.

The key hashes everything that decides the shards' bytes: the checkout (manifests record the input
folder), the input files, make_shards and the library modules it imports, the build script, and the
decoders' versions. The cache is ``$XKD_TEST_CACHE`` (default ``~/.cache/xkd-tests``); a fresh
machine (CI) builds each entry once, the development loop reuses it. Tests get a copy, so none can
change a cached file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# make_shards imports xkd.data and these for a local run (the SLURM modules only for --slurm).
MAKE_SHARDS_CODE = [ROOT / "data_prep" / "make_shards.py", ROOT / "xkd" / "__init__.py",
                    ROOT / "xkd" / "atomic_files.py", ROOT / "xkd" / "cli_help.py"]


def cache_key(inputs: list[Path]) -> str:
    import av
    import soundfile

    digest = hashlib.sha256(str(ROOT).encode())
    files = [path for root in inputs for path in (sorted(root.rglob("*")) if root.is_dir() else [root])]
    for path in files + MAKE_SHARDS_CODE + sorted((ROOT / "xkd" / "data").glob("*.py")):
        if path.is_file():
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[:1]
    digest.update(repr((ffmpeg, av.__version__, soundfile.__version__, soundfile.__libsndfile_version__)).encode())
    return digest.hexdigest()[:16]


def cached_shards(name: str, inputs: list[Path], build: Callable[[Path], object], output: Path) -> Path:
    """``build(folder)`` (a real make_shards run writing ``folder``) once per :func:`cache_key` of
    ``inputs``; ``output`` gets a copy."""
    cache = Path(os.environ.get("XKD_TEST_CACHE") or Path.home() / ".cache" / "xkd-tests")
    entry = cache / f"{name}-{cache_key(inputs)}"
    if not (entry / "manifest.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
        build(building / name)
        try:
            os.rename(building / name, entry)  # atomic; another session may have finished first
        except OSError:
            pass
        shutil.rmtree(building, ignore_errors=True)
    shutil.copytree(entry, output)
    return output
