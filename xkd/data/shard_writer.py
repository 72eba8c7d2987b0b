"""Writing one WebDataset shard: deterministic tar bytes, temp name + atomic rename, DALI index.

Every member gets the same mtime / owner / mode (``format.TAR_MTIME``, ``TAR_MODE``, uid and
gid 0, no user or group name) and the USTAR format, so the same samples in the same order
always give the same bytes. The shard is written as ``<name>.tar.tmp`` and renamed to
``<name>.tar`` only once it is complete and on disk; its DALI index (``wds2idx``) is written
the same way.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from xkd.atomic_files import TMP_SUFFIX, fsync_dir
from xkd.data import format as fmt
from xkd.data.prepare_clip import PreparedSample

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class ShardRecord:
    """A completed shard, as listed in the journal and the manifest."""

    name: str
    index_file: str
    samples: int
    bytes: int
    sha256: str
    keys_sha256: str

    def to_json(self) -> dict:
        return asdict(self)


def keys_digest(keys: list[str]) -> str:
    """sha256 of the sample keys of a shard, in order, one per line."""
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = fmt.TAR_MTIME
    info.mode = fmt.TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def write_dali_index(tar_path: Path, idx_path: Path) -> None:
    """Run DALI's ``wds2idx`` (shipped in the nvidia-dali wheel) on a shard; atomic like the shard."""
    tmp = idx_path.with_name(idx_path.name + TMP_SUFFIX)
    try:
        from wds2idx import IndexCreator  # the module behind DALI's `wds2idx` command
    except ImportError:
        tool = Path(sys.executable).with_name("wds2idx")
        if not tool.exists():
            raise RuntimeError("DALI's wds2idx is not installed (pip install nvidia-dali-cuda130)") from None
        subprocess.run([str(tool), str(tar_path), str(tmp)], check=True, capture_output=True)
    else:
        creator = IndexCreator(str(tar_path), str(tmp), verbose=False)
        try:
            creator.create_index()
        finally:
            creator.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, idx_path)


class ShardWriter:
    """Appends samples to ``<output>/<name>.tmp`` and publishes ``<name>`` on ``finish``."""

    def __init__(self, output_dir: Path, name: str):
        self.output_dir = Path(output_dir)
        self.name = name
        self.path = self.output_dir / name
        self.tmp_path = self.output_dir / (name + TMP_SUFFIX)
        self._file = open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.keys: list[str] = []

    @property
    def count(self) -> int:
        return len(self.keys)

    def size_with(self, sample: PreparedSample) -> int:
        """Bytes the finished shard would have with ``sample`` added (tar headers, padding, end blocks)."""
        size = self._tar.offset
        for _, content in sample.members():
            size += _BLOCK + _padded(content.stat().st_size if isinstance(content, Path) else len(content))
        size += 2 * _BLOCK
        return -(-size // _RECORD) * _RECORD

    def add(self, sample: PreparedSample) -> None:
        if sample.key in self.keys:
            raise ValueError(f"{self.tmp_path}: key {sample.key!r} ({sample.source}) is already in this shard")
        for ext, content in sample.members():
            member = f"{sample.key}.{ext}"
            if isinstance(content, Path):
                with open(content, "rb") as fh:
                    self._tar.addfile(_tar_info(member, os.fstat(fh.fileno()).st_size), fh)
            else:
                self._tar.addfile(_tar_info(member, len(content)), io.BytesIO(content))
        self.keys.append(sample.key)

    def finish(self) -> ShardRecord:
        """Close the tar, fsync, rename to its final name, write the DALI index."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        size = self.tmp_path.stat().st_size
        sha = file_sha256(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.output_dir)
        idx_name = fmt.index_name(self.name)
        write_dali_index(self.path, self.output_dir / idx_name)
        return ShardRecord(name=self.name, index_file=idx_name, samples=self.count, bytes=size, sha256=sha,
                           keys_sha256=keys_digest(self.keys))

    def abort(self) -> None:
        """Drop the unfinished shard."""
        try:
            self._tar.close()
        finally:
            self._file.close()
            self.tmp_path.unlink(missing_ok=True)
