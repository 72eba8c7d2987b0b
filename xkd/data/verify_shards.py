"""Re-read a finished split and check it against its manifest (``make_shards.py --verify``).

Checks per shard: the file exists with the manifest's size and sha256; every tar member is
a regular file ``<key>.<ext>`` with a known extension; every key has exactly the four
members, in ``SAMPLE_EXTS`` order (audio-only samples: the three of ``AUDIO_ONLY_EXTS``); the key count and key digest match; each json / npy
member parses and agrees on the frame count; the media members start with the WebM/Matroska
and FLAC signatures; the DALI index exists and counts the same samples. Split-wide: no
unlisted shard files, and ``num_samples + lines of skipped.jsonl == num_inputs``.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xkd.data import format as fmt
from xkd.data.manifest import ManifestError, read_manifest
from xkd.data.shard_writer import file_sha256, keys_digest

EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # WebM / Matroska
FLAC_MAGIC = b"fLaC"


@dataclass
class VerifyReport:
    output: Path
    shards_checked: int = 0
    samples_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = (f"verify {'OK' if self.ok else 'FAILED'}: {self.output}: {self.shards_checked} shards, "
                f"{self.samples_checked} samples checked")
        if self.ok:
            return head
        return head + f", {len(self.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems)


def _check_sample(shard: str, key: str, members: dict[str, bytes], order: list[str], problems: list[str]) -> None:
    where = f"{shard}: sample {key}"
    audio_only = order == list(fmt.AUDIO_ONLY_EXTS)
    if order != list(fmt.SAMPLE_EXTS) and not audio_only:
        problems.append(f"{where}: members {order}, expected {list(fmt.SAMPLE_EXTS)} "
                        f"(or {list(fmt.AUDIO_ONLY_EXTS)} for an audio-only sample)")
        return
    try:
        meta = json.loads(members[fmt.META_EXT])
        info = np.load(io.BytesIO(members[fmt.INFO_EXT]), allow_pickle=False)
    except (ValueError, json.JSONDecodeError) as err:
        problems.append(f"{where}: unreadable json/npy member ({err})")
        return
    if info.dtype != np.int64 or info.shape != (len(fmt.SAMPLE_INFO_FIELDS),):
        problems.append(f"{where}: npy is {info.dtype} {info.shape}, expected int64 ({len(fmt.SAMPLE_INFO_FIELDS)},)")
        return
    if meta.get("key") != key:
        problems.append(f"{where}: json key {meta.get('key')!r} differs from the member name")
    if audio_only and (meta.get("has_video", True) or int(info[fmt.NUM_FRAMES]) != 0):
        problems.append(f"{where}: no .{fmt.VIDEO_EXT} member, but the json/npy describe a video")
    if int(info[fmt.NUM_FRAMES]) != meta.get("num_frames") or (int(info[fmt.NUM_FRAMES]) <= 0 and not audio_only):
        problems.append(f"{where}: frame count npy {int(info[fmt.NUM_FRAMES])} vs json {meta.get('num_frames')}")
    if int(info[fmt.NUM_AUDIO_SAMPLES]) != meta.get("num_audio_samples"):
        problems.append(f"{where}: audio sample count npy {int(info[fmt.NUM_AUDIO_SAMPLES])} "
                        f"vs json {meta.get('num_audio_samples')}")
    if not audio_only and not members[fmt.VIDEO_EXT].startswith(EBML_MAGIC):
        problems.append(f"{where}: .{fmt.VIDEO_EXT} member is not a WebM/Matroska file")
    if not members[fmt.AUDIO_EXT].startswith(FLAC_MAGIC):
        problems.append(f"{where}: .{fmt.AUDIO_EXT} member is not a FLAC file")


def _read_shard(path: Path, problems: list[str]) -> list[str]:
    """Check every sample of one tar; return its keys in order."""
    keys: list[str] = []
    current: str | None = None
    members: dict[str, bytes] = {}
    order: list[str] = []
    pattern = re.compile(r"([A-Za-z0-9_-]+)\.([a-z0-9]+)")
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                match = pattern.fullmatch(member.name)
                if not member.isreg() or not match or match.group(2) not in fmt.SAMPLE_EXTS:
                    problems.append(f"{path.name}: unexpected member {member.name!r}")
                    continue
                key, ext = match.groups()
                if key != current:
                    if current is not None:
                        _check_sample(path.name, current, members, order, problems)
                    if key in keys:
                        problems.append(f"{path.name}: key {key} appears twice")
                    keys.append(key)
                    current, members, order = key, {}, []
                handle = tar.extractfile(member)
                # Media members: the signature is enough; json / npy are small and parsed whole.
                members[ext] = handle.read(16 if ext in (fmt.VIDEO_EXT, fmt.AUDIO_EXT) else member.size)
                order.append(ext)
            if current is not None:
                _check_sample(path.name, current, members, order, problems)
    except (tarfile.TarError, OSError, EOFError) as err:
        problems.append(f"{path.name}: unreadable tar ({type(err).__name__}: {err})")
    return keys


def _check_index(output: Path, shard: dict, problems: list[str]) -> None:
    idx = output / shard.get("index_file", fmt.index_name(shard["name"]))
    if not idx.is_file():
        problems.append(f"{shard['name']}: DALI index {idx.name} missing")
        return
    first = idx.read_text(encoding="utf-8").split("\n", 1)[0].split()
    if len(first) != 2 or first[1] != str(shard["samples"]):
        problems.append(f"{idx.name}: header {' '.join(first)!r}, expected '<version> {shard['samples']}'")


def verify_output(output: Path) -> VerifyReport:
    """Check a finished split; ``report.ok`` is False with one line per problem found."""
    output = Path(output)
    report = VerifyReport(output)
    try:
        manifest = read_manifest(output)
    except ManifestError as err:
        report.problems.append(str(err))
        return report
    listed = set()
    for shard in manifest.get("shards", []):
        name = shard["name"]
        listed |= {name, shard.get("index_file", fmt.index_name(name))}
        path = output / name
        report.shards_checked += 1
        if not path.is_file():
            report.problems.append(f"{name}: missing")
            continue
        size = path.stat().st_size
        if size != shard["bytes"]:
            report.problems.append(f"{name}: {size} bytes, manifest says {shard['bytes']}")
        if file_sha256(path) != shard["sha256"]:
            report.problems.append(f"{name}: sha256 differs from the manifest (the file changed)")
        keys = _read_shard(path, report.problems)
        report.samples_checked += len(keys)
        if len(keys) != shard["samples"]:
            report.problems.append(f"{name}: {len(keys)} samples, manifest says {shard['samples']}")
        elif keys_digest(keys) != shard["keys_sha256"]:
            report.problems.append(f"{name}: sample keys differ from the manifest")
        _check_index(output, shard, report.problems)

    split = re.escape(manifest.get("split", ""))
    for path in sorted(output.iterdir()):
        if re.fullmatch(rf"{split}-\d{{6}}\.(tar|idx)", path.name) and path.name not in listed:
            report.problems.append(f"{path.name}: shard file not listed in the manifest")
    if sum(s["samples"] for s in manifest.get("shards", [])) != manifest.get("num_samples"):
        report.problems.append("manifest num_samples differs from the sum over its shards")
    skipped_path = output / fmt.SKIPPED_NAME
    skipped = [line for line in skipped_path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if skipped_path.is_file() else []
    if manifest.get("num_samples", 0) + len(skipped) != manifest.get("num_inputs"):
        report.problems.append(f"{manifest.get('num_samples')} samples + {len(skipped)} lines of "
                               f"{fmt.SKIPPED_NAME} != {manifest.get('num_inputs')} inputs")
    return report
