"""Corrupt samples: what makes one, and the bookkeeping both loaders share.

A sample is corrupt when a member cannot be read (a truncated shard, a missing member), its
``.npy`` info vector does not load or makes no sense, a stream does not decode, or the decoded
streams disagree with the counts the info vector stores (a damaged webm often still opens but
ends early: DALI then fails with "out of bounds" frame indices, PyAV runs out of frames).

The loaders find corrupt samples where it costs nothing extra (reading members, the info
vector, the window they decode); :func:`corruption_reason` decodes a whole sample in Python and
only runs on the samples of a batch that DALI failed to decode.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence

import av
import numpy as np
import soundfile
import torch.distributed as dist

from xkd.data.format import (
    AUDIO_EXT, HEIGHT, INFO_EXT, NUM_AUDIO_SAMPLES, NUM_FRAMES, SAMPLE_INFO_FIELDS, VIDEO_EXT, WIDTH,
)
from xkd.data.shard_index import SampleRef

log = logging.getLogger(__name__)


class NoReadableSample(Exception):
    """Every candidate of a batch slot is corrupt: the split (or this rank's share) is unusable."""


class DescribedError(Exception):
    """An error described where it happened (a decode worker process): its message is that description."""


def describe(error: BaseException) -> str:
    if isinstance(error, DescribedError):
        return str(error)
    return f"{type(error).__name__}: {error}"


NPY_V1 = b"\x93NUMPY\x01\x00"  # magic and version 1.0 of the .npy format; its header length follows (2 bytes)
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}  # a v1.0 header -> the dtype and shape it says


def load_npy(data: bytes) -> np.ndarray:
    """``np.load`` of an .npy member, each distinct header parsed once: the info vectors of a split
    share theirs, and numpy's parse of it is ~50 of the ~55 us a load takes (a loader reads one
    per sample). Anything but an exact, known header with its whole payload goes to ``np.load``."""
    end = 10 + int.from_bytes(data[8:10], "little") if data[:8] == NPY_V1 and len(data) >= 10 else None
    known = _npy_headers.get(data[:end]) if end is not None else None
    if known is not None:
        dtype, shape = known
        if len(data) == end + dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            return np.frombuffer(data, dtype, offset=end).reshape(shape).copy()
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if end is not None and array.ndim <= 1 and len(_npy_headers) < 64:  # (1-D: no memory order to keep)
        _npy_headers[data[:end]] = (array.dtype, array.shape)
    return array


def read_info(ref: SampleRef) -> np.ndarray:
    """The sample's info vector (``SAMPLE_INFO_FIELDS``); ``ValueError`` if it is not a sane one."""
    info = load_npy(ref.read(INFO_EXT))
    if info.shape != (len(SAMPLE_INFO_FIELDS),) or not np.issubdtype(info.dtype, np.integer):
        raise ValueError(f"info vector has shape {info.shape} and dtype {info.dtype}, expected "
                         f"({len(SAMPLE_INFO_FIELDS)},) integers")
    if min(info[NUM_FRAMES], info[WIDTH], info[HEIGHT]) < 1 or info[NUM_AUDIO_SAMPLES] < 0:
        raise ValueError(f"info vector {info.tolist()} has no video frames, no frame size or negative samples")
    return info


def corruption_reason(ref: SampleRef) -> str | None:
    """None if every member reads, decodes and agrees with the info vector; otherwise why not."""
    try:
        info = read_info(ref)
        frames, size = 0, None
        with av.open(io.BytesIO(ref.read(VIDEO_EXT))) as container:
            for frame in container.decode(video=0):
                frames, size = frames + 1, (frame.width, frame.height)
        if frames != info[NUM_FRAMES]:
            return f"video decodes to {frames} frames, its info vector says {info[NUM_FRAMES]}"
        if size != (info[WIDTH], info[HEIGHT]):
            return f"video frames are {size[0]}x{size[1]}, its info vector says {info[WIDTH]}x{info[HEIGHT]}"
        audio, _ = soundfile.read(io.BytesIO(ref.read(AUDIO_EXT)), dtype="float32")
        if len(audio) != info[NUM_AUDIO_SAMPLES]:
            return f"audio decodes to {len(audio)} samples, its info vector says {info[NUM_AUDIO_SAMPLES]}"
    except Exception as error:  # any read or decode failure means the sample is unusable
        return describe(error)
    return None


class CorruptSamples:
    """The corrupt samples a loader knows of: each logged once (key and shard), counted, resumable.

    ``known`` are skipped without being read. They change only in :meth:`sync` (every rank, same
    step) and come back from a checkpoint, so a batch is a function of (epoch, position, known)
    and a resumed run builds the batches of an uninterrupted one even though only rank 0's state
    is saved. ``found`` are this rank's finds since the last sync: already replaced in their
    batches by stand-ins, and counted, but not yet skipped unread.
    """

    def __init__(self, samples: Sequence[SampleRef], state: dict | None = None):
        self.samples = samples
        state = state or {}
        self.known = {int(i) for i in state.get("corrupt_samples", ())}
        self.found = {int(i) for i in state.get("corrupt_pending", ())} - self.known
        self.changed = False  # known grew: batches planned before are stale

    @property
    def count(self) -> int:
        return len(self.known | self.found)

    def note(self, found: Iterable[tuple[int, str]]) -> None:
        """Count (index, reason) finds of a batch the loader hands out; log each sample once."""
        for index, reason in found:
            index = int(index)
            if index in self.known or index in self.found:
                continue
            self.found.add(index)
            ref = self.samples[index]
            log.warning("skipping corrupt sample %r of shard %s: %s", ref.key, ref.shard, reason)

    def state(self) -> dict[str, list[int]]:
        return {"corrupt_samples": sorted(self.known), "corrupt_pending": sorted(self.found - self.known)}

    def sync(self) -> int:
        """Make every rank's finds known to all ranks; returns how many corrupt samples the run
        found. Collective when torch.distributed is initialised: every rank calls it at the same
        step (the trainer does, at log steps)."""
        new = sorted(self.found - self.known)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[int] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, new)
            new = [index for part in gathered for index in part or ()]
        before = len(self.known)
        self.known.update(new)
        self.found.clear()
        self.changed = self.changed or len(self.known) > before
        return len(self.known)
