"""A batch's decoded windows and audio windows in one shared-memory segment, written where each
row is read (a worker process, a reader thread), viewed by the trainer's batch tensors (issue 15).

A window copied anywhere else (the reader's own array, DALI's buffers) is copied again into the
batch's padded planes, ~0.45 ms per clip when the frames are no longer in the cache. Here the
reader that decoded a window copies its frames once, at once, into their clip's place in the
batch's planes (:class:`BatchBuffer`), and the trainer gets tensors that view that memory. The
planes are padded to the largest frame the batch's info vectors give; a window larger than that
comes back on its own and the batch is padded by copying (:func:`batch_media`), so a batch is
always padded to its decoded frames' largest, whatever its info vectors say (the PyTorch
loader's batch, bit for bit). Segments are reused batch after batch (:class:`BufferPool`).
"""
from __future__ import annotations

import collections
import os
import secrets
import shutil
import threading
import weakref
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import NamedTuple

import numpy as np
import torch

from xkd.data.video_crops import YUV_PLANE_KEYS, pad_windows

ALIGN = 64  # offsets of the planes and the audio in a batch's memory


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


class BatchLayout(NamedTuple):
    """Where a batch's arrays lie in its shared memory: "written" (clips, 2, 2) int32, the (height,
    width) of the luma and chroma last written at each clip's place; luma (clips, frames, 1, H, W)
    and chroma (clips, frames, 2, h, w) uint8, padded to ``luma_cap`` (H, W) and ``chroma_cap`` (h, w),
    zero outside what "written" says; audio (clips, samples) float32."""
    name: str  # the shared-memory segment
    clips: int
    frames: int
    luma_cap: tuple[int, int]
    chroma_cap: tuple[int, int]
    audio_samples: int

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.clips, 2, 2), (self.clips, self.frames, 1, *self.luma_cap),
                (self.clips, self.frames, 2, *self.chroma_cap), (self.clips, self.audio_samples))

    def offsets(self) -> list[int]:
        offsets, end = [], 0
        for shape, dtype in zip(self.shapes(), LAYOUT_DTYPES):
            offsets.append(_aligned(end))
            end = offsets[-1] + int(np.prod(shape)) * np.dtype(dtype).itemsize
        return offsets

    def nbytes(self) -> int:
        return self.offsets()[-1] + 4 * self.clips * self.audio_samples


LAYOUT_DTYPES = (np.int32, np.uint8, np.uint8, np.float32)  # written, luma, chroma, audio


def layout_arrays(layout: BatchLayout, buffer) -> tuple[np.ndarray, ...]:
    """(written, luma, chroma, audio) of ``layout`` viewing ``buffer`` (one array whose views they are)."""
    memory = buffer if isinstance(buffer, np.ndarray) else np.ndarray((layout.nbytes(),), np.uint8, buffer)
    arrays = []
    for shape, offset, dtype in zip(layout.shapes(), layout.offsets(), LAYOUT_DTYPES):
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        arrays.append(memory[offset:offset + size].view(dtype).reshape(shape))
    return tuple(arrays)


def write_clip(layout: BatchLayout, arrays, clip: int, window, audio: np.ndarray) -> bool:
    """A row's audio window into its clip's place and, if it fits the caps, its decoded window
    (frames copied out of the decoder's buffers); False when the window is larger. Of what the last
    window at this place left outside the new one, only that is zeroed (a buffer is reused batch
    after batch: zeroing every margin would write the whole padded batch again)."""
    written, luma, chroma, audio_out = arrays
    audio_out[clip] = audio
    sizes = window.plane_sizes()
    if any(size > cap for size, cap in zip((*sizes[0], *sizes[1]), (*layout.luma_cap, *layout.chroma_cap))):
        return False
    window.copy_into(luma[clip], chroma[clip])
    for planes, (height, width), (last_height, last_width) in zip((luma[clip], chroma[clip]), sizes,
                                                                    written[clip].tolist()):
        planes[..., height:last_height, :last_width] = 0
        planes[..., :min(height, last_height), width:last_width] = 0
    written[clip] = sizes
    return True


def store_row(row: dict, layout: BatchLayout, arrays, clip: int) -> dict:
    """``row`` (``dali_pipeline.read_row``'s, with PyAV) with its window and audio written into the batch:
    "window" is then None and "plane_sizes" its sizes, or "window" stays (larger than the caps)."""
    window, audio = row.pop("window"), row.pop("audio_window")
    row["plane_sizes"] = window.plane_sizes()
    row["window"] = None if write_clip(layout, arrays, clip, window, audio) else window
    return row


class PlanesWindow:
    """A window already in planes (count, 1, H, W) and (count, 2, h, w), read like a
    :class:`~xkd.data.video_decode.DecodedWindow` by ``video_crops.pad_windows``: a window that did
    not fit its batch, or a clip of a batch padded again because another did not."""

    def __init__(self, luma: np.ndarray, chroma: np.ndarray):
        self.luma, self.chroma, self.count = luma, chroma, luma.shape[0]

    def plane_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (self.luma.shape[-2], self.luma.shape[-1]), (self.chroma.shape[-2], self.chroma.shape[-1])

    def copy_into(self, luma: np.ndarray, chroma: np.ndarray) -> None:
        luma[:, :, :self.luma.shape[-2], :self.luma.shape[-1]] = self.luma
        chroma[:, :, :self.chroma.shape[-2], :self.chroma.shape[-1]] = self.chroma


class BatchBuffer:
    """A batch's planes and audio windows in a shared-memory segment of the pool. ``luma``,
    ``chroma``, ``audio`` view it; the segment goes back to the pool when neither this nor any
    view of them (the trainer's batch tensors) is left, and no row is still being written into it
    (each pending row's callback holds this)."""

    def __init__(self, layout: BatchLayout, segment: shared_memory.SharedMemory, release: Callable[[], None]):
        self.layout = layout
        memory = np.ndarray((layout.nbytes(),), np.uint8, segment.buf)
        self.written, self.luma, self.chroma, self.audio = layout_arrays(layout, memory)
        weakref.finalize(memory, release)  # every view above keeps ``memory`` alive

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.written, self.luma, self.chroma, self.audio


class StoredBatch(NamedTuple):
    """A batch's media as its rows were stored (PyAV): the buffer, each clip's (luma, chroma) sizes
    and its window where it did not fit the buffer (else None)."""
    buffer: BatchBuffer
    sizes: list[tuple[tuple[int, int], tuple[int, int]]]
    windows: list


def batch_media(stored: StoredBatch) -> dict[str, torch.Tensor]:
    """The loader batch's PyAV media: ``YUV_PLANE_KEYS`` planes padded to the batch's largest frame
    (as ``video_crops.pad_windows`` pads them, so the same tensors whatever the buffer's caps),
    "video_plane_size" and "audio_window" (clips, samples). When every window is in the buffer and
    the caps are the batch's largest frame (the info vectors' sizes were right), the tensors view
    the buffer: no copy. Otherwise the planes are copied, padded to the decoded frames' largest."""
    buffer = stored.buffer
    media = {"audio_window": torch.from_numpy(buffer.audio), "video_plane_size": torch.tensor(stored.sizes)}
    caps = buffer.layout.luma_cap, buffer.layout.chroma_cap
    largest = tuple(tuple(max(size[group][axis] for size in stored.sizes) for axis in (0, 1)) for group in (0, 1))
    if largest == caps and all(window is None for window in stored.windows):
        return {**media, **dict(zip(YUV_PLANE_KEYS, (torch.from_numpy(buffer.luma), torch.from_numpy(buffer.chroma))))}
    windows = [window if window is not None else
               PlanesWindow(buffer.luma[clip, :, :, :luma[0], :luma[1]], buffer.chroma[clip, :, :, :chroma[0], :chroma[1]])
               for clip, (window, (luma, chroma)) in enumerate(zip(stored.windows, stored.sizes))]
    return {**pad_windows(windows), **media}


# Segment names carry the creating process: a pool unlinks what a killed one left (SIGKILL, the OOM
# killer, a preempted job: no finalizer runs), which /dev/shm would otherwise keep until a reboot.
SEGMENT_PREFIX = "xkd_rows_"


def _unlink_orphans(folder: str = "/dev/shm") -> list[str]:
    """Unlink the segments of processes that no longer run; returns their names."""
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if not name.startswith(SEGMENT_PREFIX):
            continue
        try:
            os.kill(int(name[len(SEGMENT_PREFIX):].split("_")[0]), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:  # another pool's sweep got there first
                pass
        except (ValueError, PermissionError):  # not one of ours / a live process of another user
            pass
    return removed


def _new_segment(size: int) -> shared_memory.SharedMemory:
    """A shared-memory segment of ``size`` bytes, its space taken now: on a full /dev/shm (a container's
    is 64 MB unless told otherwise) writing into it later would kill the writer with SIGBUS."""
    segment = shared_memory.SharedMemory(f"{SEGMENT_PREFIX}{os.getpid()}_{secrets.token_hex(6)}", create=True,
                                         size=size)
    try:
        os.posix_fallocate(segment._fd, 0, size)
    except OSError as error:
        segment.close()
        segment.unlink()
        free = shutil.disk_usage("/dev/shm").free / 2**20 if os.path.isdir("/dev/shm") else float("nan")
        raise OSError(f"the DALI loader's batches need {size / 2**20:.0f} MiB more shared memory and /dev/shm has "
                      f"{free:.0f} MiB free ({error}): give the machine or container more (docker run "
                      "--shm-size=4g), lower train.micro_batch_size, or set data.decode_processes: false") from error
    return segment


class BufferPool:
    """Shared-memory segments for :class:`BatchBuffer`, reused batch after batch. A segment comes
    back laid out as it was for a batch of the same layout (its planes zero outside what each
    clip's "written" says), or is zeroed and laid out anew."""

    # Segments kept free at most (beyond them the least recently returned are unlinked): the batches
    # in flight are a few (DALI's prefetch, the read-ahead, the batch made ahead), and a paper-geometry
    # batch of 32 clips is ~55 MB of /dev/shm.
    MAX_FREE = 8

    def __init__(self):
        self.lock = threading.Lock()
        # Buffers come back from finalizers: on any thread, and inside ``take`` itself when its
        # allocations start a garbage collection. So no lock there: an atomic append, drained in ``take``.
        self.returned: collections.deque[shared_memory.SharedMemory] = collections.deque()
        self.free: list[shared_memory.SharedMemory] = []
        self.segments: list[shared_memory.SharedMemory] = []  # every one made, to unlink at close
        self.layouts: dict[str, BatchLayout] = {}  # each segment's last layout (its name left out)
        self.closed = False
        weakref.finalize(self, BufferPool._unlink, self.segments)  # at exit, if never closed
        _unlink_orphans()

    def take(self, clips: int, frames: int, luma_cap: tuple[int, int], chroma_cap: tuple[int, int],
             audio_samples: int) -> BatchBuffer:
        """A buffer for ``clips`` windows of ``frames`` frames, planes padded to ``luma_cap`` and
        ``chroma_cap`` (height, width), and as many audio windows of ``audio_samples``."""
        wanted = BatchLayout("", clips, frames, tuple(luma_cap), tuple(chroma_cap), audio_samples)
        with self.lock:
            while self.returned:
                self.free.append(self.returned.popleft())
            while len(self.free) > self.MAX_FREE:
                self._drop(self.free.pop(0))
            # The most recently returned segment of this layout (the likeliest still in the caches).
            segment = next((s for s in reversed(self.free) if self.layouts[s.name] == wanted), None)
            if segment is None:  # one laid out otherwise, large enough: zeroed, as a new segment is
                needed = wanted.nbytes()
                segment = next((s for s in reversed(self.free) if s.size >= needed), None)
                if segment is not None:
                    np.ndarray((segment.size,), np.uint8, segment.buf)[:] = 0
            if segment is not None:
                self.free.remove(segment)
            else:
                segment = _new_segment(max(wanted.nbytes(), ALIGN))
                self.segments.append(segment)
            self.layouts[segment.name] = wanted
        layout = wanted._replace(name=segment.name)
        return BatchBuffer(layout, segment, lambda: self._give_back(segment))

    def _give_back(self, segment: shared_memory.SharedMemory) -> None:
        if not self.closed:  # after close every segment is unlinked already
            self.returned.append(segment)

    def _drop(self, segment: shared_memory.SharedMemory) -> None:
        if segment in self.segments:
            self.segments.remove(segment)
            try:
                segment.close()
            except BufferError:  # still viewed: the mapping goes with the views
                pass
            segment.unlink()

    @staticmethod
    def _unlink(segments: list[shared_memory.SharedMemory]) -> None:
        for segment in segments:
            try:
                segment.unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Unlink every segment (batches still viewed keep their mapping)."""
        with self.lock:
            self.closed = True
            for segment in list(self.segments):
                self._drop(segment)
