"""Random access to the samples of a split: where each member of each sample lies in which shard.

Offsets come from the DALI index files (``wds2idx``) written next to every shard, or from the
tar headers when a shard has no index. Reading a sample is then a seek and a read per member.

A truncated shard (a copy cut short) loses only its damaged tail: with an index, the samples
whose members lie past the end stay listed and fail to read (the loaders skip and count them);
without one, the headers are read up to the cut, and a sample cut through keeps the members
seen so far.
"""
from __future__ import annotations

import glob
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from xkd.data.format import index_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleRef:
    shard: str  # path of the tar
    key: str
    members: tuple[tuple[str, int, int], ...]  # (extension, byte offset, size)

    def member(self, ext: str) -> tuple[int, int]:
        for name, offset, size in self.members:
            if name == ext:
                return offset, size
        raise KeyError(f"{self.shard}: sample {self.key!r} has no {ext!r} member (has {[m[0] for m in self.members]})")

    def read(self, ext: str) -> bytes:
        offset, size = self.member(ext)
        with open(self.shard, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise OSError(f"{self.shard}: member {self.key}.{ext} truncated ({len(data)} of {size} bytes)")
        return data


def resolve_shards(spec: str) -> list[str]:
    """A shard directory, a glob, or a brace pattern (``dir/train-{000000..000099}.tar``) -> sorted paths."""
    path = Path(spec)
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
    else:
        shards = sorted({match for pattern in braceexpand.braceexpand(spec) for match in glob.glob(pattern)})
    if not shards:
        raise FileNotFoundError(f"no .tar shards found for {spec!r} (expected a directory of shards or a pattern)")
    return shards


def _split_key(filename: str) -> tuple[str, str]:
    base, _, ext = filename.rpartition("/")[2].partition(".")
    prefix = filename.rpartition("/")[0]
    return (f"{prefix}/{base}" if prefix else base), ext


def read_dali_index(index_path: str, shard: str) -> list[SampleRef]:
    """Parse a DALI webdataset index (v1.2: 'ext offset size filename' per member)."""
    lines = Path(index_path).read_text().splitlines()
    if not lines or not lines[0].startswith("v1.2"):
        raise ValueError(f"{index_path}: expected a DALI wds2idx v1.2 index, got {lines[:1]}")
    samples = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) % 4:
            raise ValueError(f"{index_path}:{line_number}: expected groups of 'ext offset size filename'")
        members, key = [], None
        for i in range(0, len(fields), 4):
            ext, offset, size, filename = fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]
            key = _split_key(filename)[0]
            members.append((ext, offset, size))
        samples.append(SampleRef(shard, key, tuple(members)))
    return samples


def read_tar_index(shard: str) -> list[SampleRef]:
    """Member offsets from the tar headers (fallback when no DALI index exists), up to the end of
    a truncated shard."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    with tarfile.open(shard) as archive:
        try:
            for info in archive:
                if info.isfile():
                    key, ext = _split_key(info.name)
                    groups.setdefault(key, []).append((ext, info.offset_data, info.size))
        except (tarfile.ReadError, EOFError) as error:  # the next header is cut off: the shard is truncated
            log.warning("%s: unreadable after %d samples (%s); the rest of the shard is lost", shard, len(groups),
                        error)
    return [SampleRef(shard, key, tuple(members)) for key, members in groups.items()]


def _warn_if_truncated(samples: list[SampleRef], shard: str) -> None:
    """One line for a shard shorter than its index says; its samples past the end fail to read."""
    size = os.path.getsize(shard)
    cut = sum(1 for ref in samples if any(offset + length > size for _, offset, length in ref.members))
    if cut:
        log.warning("%s: truncated (%d bytes, its index lists members beyond): %d of its %d samples are "
                    "unreadable", shard, size, cut, len(samples))


def index_split(spec: str) -> list[SampleRef]:
    """Every sample of a split, in shard order then tar order."""
    samples = []
    for shard in resolve_shards(spec):
        idx = index_name(shard)
        if Path(idx).is_file():
            listed = read_dali_index(idx, shard)
            _warn_if_truncated(listed, shard)
        else:
            listed = read_tar_index(shard)
        samples.extend(listed)
    return samples
