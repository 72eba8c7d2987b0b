"""``manifest.json`` (written last) and the tool versions recorded in it."""
from __future__ import annotations

import functools
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import xkd
from xkd.data import format as fmt
from xkd.data.shard_writer import atomic_write_bytes


class ManifestError(ValueError):
    """A manifest is missing or unreadable."""


@functools.lru_cache(maxsize=None)
def ffmpeg_version(tool: str = "ffmpeg") -> str:
    """``5.1.9-0+deb12u1`` from ``ffmpeg -version``; raises with a clear message when absent."""
    try:
        out = subprocess.run([tool, "-version"], capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(f"{tool} is required (apt-get install ffmpeg): {err}") from None
    words = out.decode("utf-8", "replace").split()
    return words[2] if len(words) > 2 and words[1] == "version" else out[:80].decode("utf-8", "replace")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    return {
        "xkd": xkd.__version__,
        "python": platform.python_version(),
        "ffmpeg": ffmpeg_version("ffmpeg"),
        "ffprobe": ffmpeg_version("ffprobe"),
        "numpy": _package_version("numpy"),
        "soundfile": _package_version("soundfile"),
        "nvidia-dali": _package_version("nvidia-dali-cuda130") or _package_version("nvidia-dali-cuda120"),
    }


def write_manifest(output_dir: Path, manifest: dict) -> Path:
    path = Path(output_dir) / fmt.MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path


def read_manifest(output_dir: Path) -> dict:
    path = Path(output_dir) / fmt.MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (the shards were never completed)") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
