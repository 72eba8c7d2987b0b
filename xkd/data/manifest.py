"""``manifest.json`` (written last) and the tool versions recorded in it."""
from __future__ import annotations

import functools
import json
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import xkd
from xkd.data import format as fmt
from xkd.atomic_files import atomic_write_bytes


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
    """The manifest of a split; ``ManifestError`` when it is absent, unreadable or lacks what the
    readers of this module rely on (the keys of ``_MANIFEST_KEYS``, each shard's ``_SHARD_KEYS``)."""
    path = Path(output_dir) / fmt.MANIFEST_NAME
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (the shards were never completed)") from None
    except OSError as err:
        raise ManifestError(f"{path}: cannot read it ({err.strerror or err})") from None
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: a JSON {type(manifest).__name__}, expected an object")
    _check_keys(manifest, _MANIFEST_KEYS, str(path))
    for number, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            raise ManifestError(f"{path}: shards[{number}] is {repr(shard)[:80]}, expected an object")
        _check_keys(shard, _SHARD_KEYS, f"{path}: shards[{number}]")
    return manifest


# What the readers of a manifest (build_shards, verify_shards) take from it, and the JSON types.
_MANIFEST_KEYS = {"split": str, "num_inputs": int, "num_samples": int, "num_skipped": int, "num_shards": int,
                  "skipped_by_reason": dict, "shards": list, "fingerprint": dict}
_SHARD_KEYS = {"name": str, "index_file": str, "samples": int, "bytes": int, "sha256": str, "keys_sha256": str}


def _check_keys(obj: dict, keys: dict[str, type], where: str) -> None:
    for key, kind in keys.items():
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = {dict: "an object", list: "a list", int: "an integer", str: "a string"}[kind]
            raise ManifestError(f"{where}: {key!r} is {repr(value)[:80]}, expected {expected}"
                                + (" (key missing)" if key not in obj else ""))
    # Shard file names are joined to the output folder: plain names only (no "/", no "..").
    for key, ext in (("name", "tar"), ("index_file", "idx")):
        if key in keys and not re.fullmatch(rf"[A-Za-z0-9_-]+-\d{{6}}\.{ext}", obj[key]):
            raise ManifestError(f"{where}: {key} {obj[key]!r}, expected <split>-NNNNNN.{ext}")
