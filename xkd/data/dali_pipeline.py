"""NVIDIA DALI loader: shard bytes in, the global and local views of docs/method.md §1 out.

Stages (one DALI graph; the video decoder depends on the device):

    ShardSource (Python, per batch)      the 4 s audio window (libsndfile: seek + window decode),
                                         ClipViewParams, and the video: on the GPU (and with
                                         ``cpu_decoder="dali"``) the member cut to the window's
                                         packets; on the CPU the window decoded by PyAV in worker
                                         processes, written with the audio window into the batch's
                                         shared memory beside the graph (xkd.data.batch_memory)
    -> decoders.video                    GPU: the window's frames by NVDEC ("mixed"), uint8 FHWC RGB
                                         (CPU with ``cpu_decoder="dali"``: DALI's CPU decoder)
    (the audio window and the parameters pass through; moved to the GPU on the GPU path)
    then, in the loader (torch, where DALI left the frames: host or GPU)
    -> each clip's window                 padded to the batch's largest frame (xkd.data.video_crops;
                                         PyAV's: tensors viewing the shared memory, no copy)

Why PyAV decodes on the CPU path: DALI 2.4's CPU ``decoders.video`` cannot seek (it decodes every
frame before the window; the source's cut limits that to the window's GOP) and converts every
frame to RGB, which at 128 px costs more than the decode itself. PyAV seeks, and its YUV planes
go to the trainer, which cuts the views and converts them on its device: a third less CPU per
window (BENCHMARKS.md, issue 15). The PyTorch loader decodes the same way, so on the CPU the two
loaders deliver identical views. ``cpu_decoder="dali"`` keeps DALI's decoder
on the CPU: the GPU path's graph, run where there is no GPU (tests, benchmarks).

The video views are not cut in the graph either (DALI 2.4's CPU ``resize`` cost 4-11 ms per
sample; BENCHMARKS.md, issue 15): every view's parameters pass through it beside the frames and
the audio window, with each clip's YUV -> RGB matrix (``video_to_rgb``; for DALI's decoder, which
converts with BT.601 whatever the stream says, the correction to the stream's standard), and the
trainer makes the views on its device (:class:`xkd.data.batch_finish.BatchFinisher`, shared with
the PyTorch loader): crops and resizes, conversion to RGB, colour jitter, grayscale, blur, flip
and normalisation of the video, gains, log-mels and spectrogram crops of the audio. With
``data.samples_per_decode`` k, a DALI batch is B / k clips: each is decoded once and gives k
samples, each with its own view parameters, side by side in the batch of B (a clip's samples
share its window, video and audio).

Sample order and every random parameter are decided in Python (``EpochPlan`` and
``draw_view_params``) and passed into the graph. DALI 2.4 cannot checkpoint a pipeline
that contains ``decoders.video``, so a DALI reader could not resume mid-epoch; with the
order and parameters outside the graph, a position (epoch, samples consumed) restores
exactly the same batches, and the PyTorch fallback loader draws identical views.

Corrupt samples (``xkd.data.sample_check``) are replaced in their batch by a stand-in
(``xkd.data.sampler.slot_candidates``, the PyTorch loader's rule). The source finds unreadable
members, audio and info vectors while it reads them, and with PyAV also undecodable videos and
videos with fewer frames than their info vector claims (``decode_window`` pads a window past the
end of a short clip by repeating its last frame, as the PyTorch loader does). With DALI's decoder
a video decode failure fails DALI's whole batch, so the loader decodes that batch's samples in
Python to find the culprits and rebuilds the graph at the same position with them excluded;
that decoder gets explicit frame indices (the window, clamped to the frames the info vector
claims, which pads short clips by repeating their last frame) with no DALI padding, so a video
with fewer frames than it claims fails instead of being padded silently.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import numpy as np
import torch

from xkd.config import ViewsConfig
from xkd.data.audio_window import audio_window_samples, read_audio_window
from xkd.data.format import AUDIO_EXT, HEIGHT, NUM_FRAMES, VIDEO_EXT, WIDTH
from xkd.data.packed_params import pack_view_params, unpack_view_params
from xkd.data.sample_check import CorruptSamples, NoReadableSample, corruption_reason, describe, read_info
from xkd.data.sampler import EpochPlan, clip_view_params, slot_candidates
from xkd.data.batch_memory import BatchBuffer, BufferPool, StoredBatch, batch_media, store_row
from xkd.data.row_workers import RowWorkers, WorkerDied
from xkd.data.shard_index import SampleRef
from xkd.data.video_crops import RGB_PLANE_KEYS, pad_planes, plane_sizes
from xkd.data.video_cut import cut_window
from xkd.data.video_decode import bt601_rgb_matrix, decode_window, stream_colour_standard
from xkd.data.view_params import ClipViewParams

# Who decodes the video (DaliClipLoader's ``cpu_decoder``; the GPU path always uses DALI's NVDEC decode)
# and the media columns the source hands to the graph for it: DALI's decoder takes the cut member and
# its frame indices, and the audio window rides along (to the GPU on the GPU path). PyAV's windows
# and audio go around the graph: each row is written into its batch's shared memory where it is read
# (xkd.data.batch_memory), which the trainer's batch views (through DALI, two more copies).
MEDIA_COLUMNS = {"dali": ("video", "video_frames", "audio_window"), "pyav": ()}


def source_column_names(decoder: str) -> tuple[str, ...]:
    """Columns the Python source hands to the graph, in order: per clip the media for ``decoder``,
    its YUV -> RGB matrix, its samples' packed view parameters (repeats, P) and its index."""
    return (*MEDIA_COLUMNS[decoder], "video_to_rgb", "view_params", "sample_index")


def window_frames(start: int, length: int, stored_frames: int) -> np.ndarray:
    """Frame indices of a global window: [start, start + length) clamped to the last stored frame."""
    return np.minimum(np.arange(start, start + length), stored_frames - 1).astype(np.int32)


def video_columns(data: bytes, start: int, views: ViewsConfig, stored_frames: int, decoder: str) -> dict:
    """The video columns of a clip's row for ``decoder`` (``MEDIA_COLUMNS``; with PyAV, "window", its
    :class:`~xkd.data.video_decode.DecodedWindow`, which goes around the graph) and its "video_to_rgb"."""
    if decoder == "pyav":  # seek + decode of the window, no RGB conversion (xkd.data.video_decode)
        window = decode_window(data, start, views.video_global_frames, views.video_fps, stored_frames)
        return {"window": window, "video_to_rgb": window.to_rgb}
    # Only the packets from the window's keyframe on: DALI's decoder does not seek (xkd.data.video_cut).
    video, frames = cut_window(np.frombuffer(data, dtype=np.uint8),
                               window_frames(start, views.video_global_frames, stored_frames), views.video_fps)
    # DALI converts to RGB with BT.601 whatever the stream's tag: a BT.709 (...) stream's colours are
    # corrected on the device, so both decoders and the evaluation see the same colours.
    return {"video": video, "video_frames": frames, "video_to_rgb": bt601_rgb_matrix(stream_colour_standard(data))}


def source_columns(ref: SampleRef, params: list[ClipViewParams], views: ViewsConfig, stored_frames: int,
                   decoder: str = "dali") -> dict:
    """One clip's row of the source: the video for ``decoder`` (:func:`video_columns`), the audio
    window (float32), both at the window the clip's samples share (``params[0]``'s), and the view
    parameters of each of its samples, packed (``xkd.data.packed_params``) and stacked (repeats, P)."""
    video = video_columns(ref.read(VIDEO_EXT), params[0].video_start, views, stored_frames, decoder)
    # The audio window alone (seek + decode of 4 s), not the whole clip's FLAC (xkd.data.audio_window).
    audio_window = read_audio_window(ref.read(AUDIO_EXT), params[0].audio_start, audio_window_samples(views),
                                     views.audio_sample_rate)
    return {
        **video,
        "audio_window": audio_window,
        "view_params": np.stack([pack_view_params(p) for p in params]),
    }


def read_row(ref: SampleRef, index: int, stand_in_for: int | None, views: ViewsConfig, seed: int, epoch: int,
             repeats: int, augment: bool, decoder: str, info: tuple[int, ...] | None = None) -> dict:
    """The source's row of sample ``index`` (``ref``) in the slot of ``stand_in_for`` (None: its own):
    its info vector (``info``, as the source read it, or read here), its samples' view parameters
    (:func:`~xkd.data.sampler.clip_view_params`) and :func:`source_columns`. A pure function of its
    arguments: read in a reader thread, a worker process (:mod:`xkd.data.row_workers`) or the
    graph's own thread, a row is the same."""
    info = read_info(ref) if info is None else info
    params = clip_view_params(seed, epoch, index, stand_in_for, repeats, views, info, augment)
    # The sample's index rides through the graph, so a batch says which samples it holds.
    return {**source_columns(ref, params, views, int(info[NUM_FRAMES]), decoder),
            "sample_index": np.array(index, dtype=np.int64)}


def store_read_row(arguments: tuple, buffer: BatchBuffer, clip: int) -> dict:
    """:func:`read_row` on this thread, its window and audio written into clip ``clip`` of ``buffer``
    (:func:`~xkd.data.batch_memory.store_row`)."""
    return store_row(read_row(*arguments), buffer.layout, buffer.arrays(), clip)


class ShardSource:
    """DALI external source (batch mode): one epoch of one rank's batches, from a position on.
    Positions and ``batch_size`` count clips (each gives ``plan.samples_per_decode`` samples).

    Batch ``iteration`` is a pure function of the plan, the known corrupt samples and the
    failures found so far, so DALI's prefetching can neither skip nor repeat samples; the loader
    counts what was consumed. A new epoch, a resume or a new corrupt sample builds a new source.

    Reading (3 open/seek/read per sample, the view parameters and, with PyAV, the decode) would
    otherwise run on the thread that calls ``pipeline.run()``, i.e. the training loop's. With a
    ``reader`` (threads, or :class:`~xkd.data.row_workers.RowWorkers`' processes), each call starts
    reading the next batch's samples in the background; a row is a pure function of (sample,
    stand-in slot) (:func:`read_row`), so what is read ahead is exactly what would be read now.

    With PyAV each batch has a :class:`~xkd.data.batch_memory.BatchBuffer` from ``buffers``, and
    each row is written into its clip's place there by whoever reads it (a worker, a reader thread,
    or this thread for a stand-in); ``media`` holds the batch for the loader, beside the graph.
    """

    def __init__(self, samples: list[SampleRef], views: ViewsConfig, plan: EpochPlan, batch_size: int, seed: int,
                 epoch: int = 0, start_position: int = 0, known: frozenset[int] = frozenset(),
                 failed: dict[int, frozenset[int]] | None = None, augment: bool = True,
                 reader: Executor | RowWorkers | None = None, decoder: str = "dali", buffers: BufferPool | None = None,
                 infos: dict[int, tuple[int, ...]] | None = None):
        self.samples, self.views, self.plan, self.augment = samples, views, plan, augment
        self.decoder, self.columns = decoder, source_column_names(decoder)
        self.batch_size, self.seed, self.repeats = batch_size, seed, plan.samples_per_decode
        self.epoch, self.start_position = epoch, start_position
        self.order = plan.indices(epoch)
        self.known = known  # corrupt samples every rank skips unread
        self.failed = failed or {}  # batch position -> samples whose decode failed in that batch
        self.chosen: dict[int, list[tuple[int, int | None]]] = {}  # batch position -> (sample, stand-in for)
        self.found: dict[int, list[tuple[int, str]]] = {}  # batch position -> unreadable samples it met
        self.reader = reader
        self.ahead: dict[tuple[int, int | None], Future] = {}  # (sample, stand-in slot) -> its row being read
        # PyAV: batch position -> the memory its rows are written into, then (once made) the batch's media.
        self.buffers = (buffers or BufferPool()) if decoder == "pyav" else None
        self.stored: dict[int, BatchBuffer] = {}
        # Sample -> its info vector, read once per loader (PyAV): its frame size pads its batches
        # (``buffer``), and its row is read without reading it again.
        self.infos = {} if infos is None else infos
        self.media: dict[int, StoredBatch] = {}
        self.read_ahead(start_position)  # the first batch too: DALI asks for it as soon as the graph runs

    def batch_position(self, iteration: int) -> int:
        begin = self.start_position + iteration * self.batch_size
        if begin + self.batch_size > len(self.order):
            raise StopIteration
        return begin

    def __call__(self, batch_info) -> tuple[list[np.ndarray], ...]:
        begin = self.batch_position(batch_info.iteration)
        skip = self.known | self.failed.get(begin, frozenset())
        rows, chosen, found = [], [], []
        for position in range(begin, begin + self.batch_size):
            index, stand_in_for, row = self.slot(begin, position, skip, found)
            chosen.append((index, stand_in_for))
            rows.append(row)
        self.chosen[begin], self.found[begin] = chosen, found
        if self.buffers is not None:
            self.media[begin] = StoredBatch(self.stored.pop(begin), [row["plane_sizes"] for row in rows],
                                            [row["window"] for row in rows])
        self.read_ahead(begin + self.batch_size)
        return tuple([row[name] for row in rows] for name in self.columns)

    def read_ahead(self, begin: int) -> None:
        """Start reading the batch at ``begin`` (each slot's own sample; stand-ins are rare)."""
        if self.reader is None or begin + self.batch_size > len(self.order):
            return
        buffer = self.buffer(begin) if self.buffers is not None else None  # (first: it reads the info vectors)
        keys = [(int(self.order[position]), None, position - begin) for position in range(begin, begin + self.batch_size)]
        keys = [(index, stand_in_for, clip) for index, stand_in_for, clip in keys
                if index not in self.known and (index, stand_in_for) not in self.ahead]
        if isinstance(self.reader, RowWorkers):  # a few rows per task (RowWorkers.submit_rows)
            chunk = max(1, -(-len(keys) // self.reader.workers))
            for first in range(0, len(keys), chunk):
                part = keys[first:first + chunk]
                rows = [(self.row_arguments(index, stand_in_for), clip) for index, stand_in_for, clip in part]
                futures = self.reader.submit_rows(read_row, rows, buffer)
                self.ahead.update(((index, stand_in_for), future) for (index, stand_in_for, _), future in zip(part, futures))
            return
        for index, stand_in_for, clip in keys:
            arguments = self.row_arguments(index, stand_in_for)
            if buffer is None:
                self.ahead[(index, stand_in_for)] = self.reader.submit(read_row, *arguments)
            else:
                self.ahead[(index, stand_in_for)] = self.reader.submit(store_read_row, arguments, buffer, clip)

    def buffer(self, begin: int) -> BatchBuffer:
        """The memory the rows of the batch at ``begin`` are written into (PyAV): planes padded to the
        largest frame the info vectors of its samples give (4:2:0 chroma; a window that does not fit,
        or a batch whose decoded frames are smaller, is padded by copying: ``batch_memory.batch_media``)."""
        if begin not in self.stored:
            sizes = []
            for position in range(begin, begin + self.batch_size):
                index = int(self.order[position])
                if index not in self.known and index not in self.infos:
                    try:
                        self.infos[index] = tuple(int(value) for value in read_info(self.samples[index]))
                    except Exception:  # its row fails as well (reading it again), and a stand-in takes its place
                        continue
                if index in self.infos:
                    sizes.append((self.infos[index][HEIGHT], self.infos[index][WIDTH]))
            height, width = (max(axis, default=0) for axis in zip(*sizes)) if sizes else (0, 0)
            self.stored[begin] = self.buffers.take(self.batch_size, self.views.video_global_frames, (height, width),
                                                   ((height + 1) // 2, (width + 1) // 2), audio_window_samples(self.views))
        return self.stored[begin]

    def slot(self, begin: int, position: int, skip: frozenset[int], found: list[tuple[int, str]]
             ) -> tuple[int, int | None, dict[str, np.ndarray]]:
        """The first candidate of the slot at ``position`` (of the batch at ``begin``) whose members
        and info vector read."""
        buffer = self.buffer(begin) if self.buffers is not None else None  # (its errors are not the sample's)
        for index, stand_in_for in slot_candidates(self.order, position, self.batch_size):
            if index in skip or any(index == bad for bad, _ in found):
                continue
            try:
                ahead = self.ahead.pop((index, stand_in_for), None)
                if ahead is not None:
                    return index, stand_in_for, ahead.result()
                arguments = self.row_arguments(index, stand_in_for)
                if buffer is None:
                    return index, stand_in_for, read_row(*arguments)
                return index, stand_in_for, store_read_row(arguments, buffer, position - begin)
            except WorkerDied:  # not the sample's fault (as a decoder crash in a reader thread would end the run)
                raise
            except Exception as error:  # a truncated member, a missing one, a bad info vector
                found.append((index, describe(error)))
        raise NoReadableSample(f"epoch {self.epoch}: no sample of this rank's {len(self.order)} is readable "
                               f"(slot {position})")

    def row_arguments(self, index: int, stand_in_for: int | None) -> tuple:
        return (self.samples[index], index, stand_in_for, self.views, self.seed, self.epoch, self.repeats,
                self.augment, self.decoder, self.infos.get(index))

    def row(self, index: int, stand_in_for: int | None) -> dict:
        """The row read on this thread, on its own (:func:`read_row`: media in the row)."""
        return read_row(*self.row_arguments(index, stand_in_for))


class OneSample:
    """External source of a single one-sample batch: one sample through DALI alone."""

    def __init__(self, row: dict, decoder: str):
        self.row, self.decoder, self.columns = row, decoder, source_column_names(decoder)

    def __call__(self, batch_info) -> tuple[list[np.ndarray], ...]:
        if batch_info.iteration:
            raise StopIteration
        return tuple([self.row[name]] for name in self.columns)


def build_pipeline(source: ShardSource | OneSample, views: ViewsConfig, batch_size: int, device: str,
                   num_threads: int, seed: int, prefetch: int = 2):
    """The DALI graph. ``device``: "cpu" (CPU backend) or "gpu" (NVDEC decode; frames and audio window
    delivered on the GPU); the source's ``decoder`` says whether the graph decodes the video
    ("dali") or the source did ("pyav"). ``batch_size`` counts clips. Outputs per clip: with DALI's
    decoder its decoded window (FHWC uint8 RGB) and the audio window (with PyAV both go around the
    graph), then the YUV -> RGB matrix, the packed view parameters (repeat axis first) and the
    sample index."""
    from nvidia.dali import fn, pipeline_def

    on_gpu = device == "gpu"
    if on_gpu and source.decoder != "dali":
        raise ValueError(f"the GPU pipeline decodes with NVDEC: its source must hand it video for DALI's decoder, "
                         f"not {source.decoder!r}")

    @pipeline_def
    def pipeline():
        columns = dict(zip(source.columns, fn.external_source(
            source=source, num_outputs=len(source.columns), batch=True, batch_info=True, parallel=False)))
        media = ()
        if source.decoder == "dali":  # (PyAV: the loader takes the media from the source, ShardSource.media)
            # Explicit indices, no padding by DALI: frames a video lacks are an error, not edge copies.
            # One decode of the shared window per clip; every sample's views are cut from it (in the loader).
            frames = fn.decoders.video(columns["video"], device="mixed" if on_gpu else "cpu",
                                       frames=columns["video_frames"], pad_mode="none")
            # The shared 4 s window, read by the source (zeros past the end of the sound); log-mels
            # follow on the device.
            segment = columns["audio_window"].gpu() if on_gpu else columns["audio_window"]
            media = (frames, segment)
        return (*media, columns["video_to_rgb"], columns["view_params"], columns["sample_index"])

    # The rank's own GPU (made current by xkd.distributed before anything else), not GPU 0 for every
    # rank; DALI's CPU threads pinned to the CPUs near that GPU (NVML), as the decode feeds it.
    return pipeline(batch_size=batch_size, num_threads=num_threads, device_id=pipeline_device_id(device),
                    seed=seed, prefetch_queue_depth=prefetch, exec_dynamic=True, set_affinity=on_gpu)


def pipeline_device_id(device: str) -> int | None:
    """DALI's ``device_id``: the current CUDA device for a GPU pipeline, None for the CPU backend."""
    return torch.cuda.current_device() if device == "gpu" else None


def check_pipeline_device(pipeline, device: str) -> None:
    """A GPU pipeline must sit on the rank's current GPU (so its outputs land there, not on cuda:0)."""
    if device != "gpu":
        return
    from xkd.devices import DeviceError, dali_device_error

    message = dali_device_error(pipeline.device_id, torch.cuda.current_device())
    if message:
        raise DeviceError(message)


def dali_error_summary(error: Exception) -> str:
    """The operator's own message in a DALI pipeline error (the line after "encountered:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for before, line in zip(lines, lines[1:]):
        if before.endswith("encountered:"):
            return line
    return lines[0] if lines else type(error).__name__


EPOCH_END = object()  # DaliClipLoader.ahead at the end of an epoch


class DaliClipLoader:
    """Batches of views from shards through DALI, with an exact position for checkpoints.

    Iterating yields one epoch of batch dicts (``xkd.data.batch_finish.loader_keys`` plus
    ``sample_index``; the trainer's ``BatchFinisher`` makes the model's inputs); ``state()`` is
    {"epoch", "position"}, the epoch and the samples this rank consumed in it, plus the corrupt
    samples known (:class:`~xkd.data.sample_check.CorruptSamples`).

    On the CPU-decode path the next batch is made while the caller works on the current one (DALI's
    own prefetch covers the graph; ``ahead`` covers the padding copies after it). The position counts
    consumed batches only. A batch made ahead is the batch at the position: a new iterator (after
    one left mid-epoch) starts with it; it is dropped, and made again, when more corrupt samples
    become known. An error making it is raised when that batch is asked for, with the graph rebuilt
    at the position, so nothing is skipped by a caller that goes on. On the GPU the copies are
    kernels on the training stream: nothing is made ahead there.
    """

    def __init__(self, samples: list[SampleRef], views: ViewsConfig, batch_size: int, plan: EpochPlan, seed: int,
                 device: str = "cpu", num_threads: int = 2, start_epoch: int = 0, start_position: int = 0,
                 augment: bool = True, corrupt_state: dict | None = None, cpu_decoder: str = "pyav",
                 decode_processes: bool = True):
        if cpu_decoder not in MEDIA_COLUMNS:
            raise ValueError(f"cpu_decoder {cpu_decoder!r}: expected one of {sorted(MEDIA_COLUMNS)}")
        self.samples, self.views, self.batch_size, self.plan = samples, views, batch_size, plan
        self.augment = augment
        self.device, self.num_threads, self.seed = device, num_threads, seed
        self.decoder = "dali" if device == "gpu" else cpu_decoder  # the GPU decodes with NVDEC
        self.epoch, self.position = start_epoch, start_position
        self.clips_per_batch = plan.clips_per_batch(batch_size)
        self.corrupt = CorruptSamples(samples, corrupt_state)
        # Batch position (in clips) -> {sample: reason} of samples whose decode failed there (this epoch).
        self.failed: dict[int, dict[int, str]] = {}
        # Reads the next batch's samples while DALI and the model work (ShardSource.read_ahead). With PyAV
        # the readers also decode the video, so they get all of num_threads: worker processes
        # (xkd.data.row_workers: no GIL between them), or with ``decode_processes`` False threads of this
        # process. DALI's decoder only needs the members read and cut: threads.
        self.reader: ThreadPoolExecutor | RowWorkers
        if self.decoder == "pyav" and decode_processes:
            self.reader = RowWorkers(max(1, num_threads))
        else:
            readers = num_threads if self.decoder == "pyav" else min(4, num_threads)
            self.reader = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="xkd-read")
        # PyAV: the shared memory each batch's rows are written into, reused batch after batch, and
        # each sample's info vector (ShardSource.infos).
        self.buffers = BufferPool() if self.decoder == "pyav" else None
        self.infos: dict[int, tuple[int, ...]] = {}
        # Turns DALI's outputs into the next batch (the parameters, and DALI's decoded frames, copied out
        # of its buffers; PyAV's batch is already in shared memory) while the model
        # trains on this one. CPU decode only: on the GPU the copies are kernels, queued from the loop's
        # thread (its device).
        self.batcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xkd-batch") if device == "cpu" else None
        # What was made ahead of ``position`` (CPU decode): (its clip position, the corrupt samples found
        # there, the future of the batch); EPOCH_END; the error making it raised; None: nothing.
        self.ahead: tuple[int, list, Future] | object | Exception | None = None
        self._build()

    @property
    def corrupt_samples(self) -> int:
        return self.corrupt.count

    def worker_pids(self) -> list[int]:
        """The row worker processes running (none with reader threads)."""
        return self.reader.pids() if isinstance(self.reader, RowWorkers) else []

    def sync_corrupt_samples(self) -> int:
        """Share the corrupt samples found with every rank (collective); returns the run's count."""
        return self.corrupt.sync()

    @property
    def clip_position(self) -> int:
        """The position in the epoch's order of clips (the source's positions count clips)."""
        return self.position // self.plan.samples_per_decode

    def _build(self) -> None:
        """(Re)build the graph to continue at the current position."""
        self.corrupt.changed = False
        failed = {position: frozenset(bad) for position, bad in self.failed.items()}
        self.source = ShardSource(self.samples, self.views, self.plan, self.clips_per_batch, self.seed, self.epoch,
                                  self.clip_position, frozenset(self.corrupt.known), failed, self.augment,
                                  self.reader, self.decoder, self.buffers, self.infos)
        # With PyAV the graph only passes the source's arrays through: one DALI thread is enough.
        dali_threads = self.num_threads if self.decoder == "dali" else 1
        self.pipeline = build_pipeline(self.source, self.views, self.clips_per_batch, self.device, dali_threads,
                                       self.seed)
        self.pipeline.build()
        check_pipeline_device(self.pipeline, self.device)

    def _exclude_failed(self, error: Exception) -> None:
        """DALI failed to decode the batch at the current position: find its corrupt samples
        (in Python, else each through DALI alone), exclude them from it, and rebuild there. DALI
        reports a failure with the batch that failed; the prefetched batches are looked at only if
        that one has no culprit."""
        begin, clips = self.clip_position, self.clips_per_batch
        for position in range(begin, begin + 3 * clips, clips):
            bad = {index: reason for index, _ in self.source.chosen.get(position, ())
                   if (reason := corruption_reason(self.samples[index]))}
            if not bad and position == begin:
                bad = self._rejected_by_dali(position)
            if bad:
                self.failed.setdefault(position, {}).update(bad)
                self._build()
                return
        keys = [self.samples[i].key for i, _ in self.source.chosen.get(begin, ())]
        raise RuntimeError(f"DALI failed on the batch at epoch {self.epoch}, position {self.position} (samples "
                           f"{keys}), but each of them decodes, in Python and in DALI alone") from error

    def _rejected_by_dali(self, position: int) -> dict[int, str]:
        """Samples of the batch at ``position`` that a one-sample DALI graph fails on although they
        decode in Python (DALI and FFmpeg/PyAV can disagree on a damaged stream). Slow, and rare."""
        bad = {}
        for index, stand_in_for in self.source.chosen.get(position, ()):
            probe = build_pipeline(OneSample(self.source.row(index, stand_in_for), self.decoder), self.views, 1,
                                   self.device, 1, self.seed, prefetch=1)
            probe.build()
            try:
                probe.run()
            except RuntimeError as error:
                bad[index] = f"DALI cannot decode it: {dali_error_summary(error)}"
        # Every sample failing alone is DALI or the device failing, not the data.
        return bad if len(bad) < len(self.source.chosen.get(position, ())) else {}

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch(self.batch_size)

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, **self.corrupt.state()}

    def _to_batch(self, outputs, stored: StoredBatch | None) -> dict[str, torch.Tensor]:
        """DALI's outputs and, with PyAV, the batch's stored media (``ShardSource.media``) -> a batch."""
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        media = self._media(outputs[:2] if stored is None else None, stored)
        to_rgb, view_params, sample_index = outputs[2:] if stored is None else outputs
        repeats = self.plan.samples_per_decode

        def per_sample(per_clip: torch.Tensor) -> torch.Tensor:  # a clip's samples share its window
            return per_clip if repeats == 1 else per_clip.repeat_interleave(repeats, dim=0)

        # (clips, repeats, P) -> (clips * repeats, P): the same clip-major order as the views.
        packed = to_torch_tensor(view_params.as_tensor(), copy=False).flatten(0, 1)
        return {
            **media,
            "video_to_rgb": per_sample(to_torch_tensor(to_rgb.as_tensor(), copy=True)),
            "audio_window": per_sample(media["audio_window"]),
            # Index into the loader's samples (not a model input), once per sample.
            "sample_index": per_sample(to_torch_tensor(sample_index.as_tensor(), copy=True).reshape(-1)),
            **unpack_view_params(packed, self.views),  # (copies out of DALI's buffer)
        }

    def _media(self, decoded, stored: StoredBatch | None) -> dict[str, torch.Tensor]:
        """Each clip's window padded to the batch's largest frame, one tensor per plane group, with the
        true sizes (the trainer cuts the views from them on its device), and each clip's audio window.
        PyAV: the batch as its rows stored it (``batch_memory.batch_media``: no copy). DALI's decoder:
        ``decoded``, its outputs (FHWC RGB frames, on the host or the GPU; ``video_crops.pad_planes``)
        and the audio windows."""
        from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

        if stored is not None:
            return batch_media(stored)
        frames, audio = decoded
        # On the GPU a copy first: DALI may reuse its buffer on its own stream before the padding
        # copy queued on torch's runs. On the host the padding copies out of DALI's buffer at once.
        on_gpu = self.device == "gpu"
        windows = [to_torch_tensor(frames[clip], copy=on_gpu).permute(0, 3, 1, 2)  # (F, H, W, C) -> (F, C, H, W)
                   for clip in range(len(frames))]
        return {RGB_PLANE_KEYS[0]: pad_planes(windows),
                "video_plane_size": torch.stack([plane_sizes((window,)) for window in windows]),
                "audio_window": to_torch_tensor(audio.as_tensor(), copy=True)}

    def _make(self) -> tuple[int, list, Future] | object:
        """Run the graph for the batch at the graph's position and start turning it into a batch
        (in the background on the host); EPOCH_END when the epoch's batches are all made."""
        while True:
            try:
                outputs = self.pipeline.run()
            except StopIteration:
                return EPOCH_END
            except RuntimeError as error:  # DALI's decode errors (the source's own are caught in the source)
                self._exclude_failed(error)
                continue
            position = self.clip_position
            found = list(self.source.found.get(position, []))
            stored = self.source.media.pop(position, None)
            if self.batcher is None:
                future: Future = Future()
                future.set_result(self._to_batch(outputs, stored))
            else:  # DALI's buffers stay in use until the next run(), which waits for this (_deliver)
                future = self.batcher.submit(self._to_batch, outputs, stored)
            return position, found, future

    def _deliver(self) -> dict[str, torch.Tensor]:
        """The batch made ahead, consumed: its corrupt samples noted, the position past it."""
        position, found, future = self.ahead
        self.ahead = None
        try:
            batch = future.result()
        except Exception:
            self._build()  # the graph is past this batch: back to the position, so a new iterator retries it
            raise
        self.corrupt.note([*found, *self.failed.pop(position, {}).items()])
        self.position += self.batch_size
        return batch

    def _drop_ahead(self) -> None:
        """Forget what was made ahead (more corrupt samples are known than when it was made, or it
        failed) and rebuild the graph at the consumed position."""
        if isinstance(self.ahead, tuple):
            self.ahead[2].exception()  # waits: it reads DALI's buffers, done before the graph goes
        self.ahead = None
        self._build()

    def close(self) -> None:
        """Stop the loader's threads (read-ahead, the batch made ahead) and free the graph.
        The position and ``state()`` stay valid; the loader cannot be iterated afterwards."""
        if isinstance(self.ahead, tuple):
            self.ahead[2].exception()  # it reads DALI's buffers: done before the graph goes
        self.ahead = None
        for pool in (self.batcher, self.reader):
            if isinstance(pool, RowWorkers):
                pool.close()
            elif pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.buffers is not None:
            self.buffers.close()
        self.batcher = self.reader = self.buffers = None
        self.pipeline = self.source = None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.pipeline is None:
            raise RuntimeError("DaliClipLoader.close() was called: build a new loader (from state()) to go on")
        # A batch made ahead by an iterator left mid-epoch is the one at the position: it is used.
        while True:
            if isinstance(self.ahead, Exception):  # making this batch failed after the last one was handed out
                error = self.ahead
                self._drop_ahead()
                raise error
            if self.corrupt.changed:  # a sync made more samples known: what was made ahead is stale
                self._drop_ahead()
            if self.ahead is None:
                try:
                    self.ahead = self._make()
                except Exception:
                    self._drop_ahead()
                    raise
            if self.ahead is EPOCH_END:
                self.ahead = None
                self.epoch += 1
                self.position = 0
                self.failed.clear()
                self._build()
                return
            batch = self._deliver()
            if self.batcher is not None:  # host copies: made while the model trains on this batch
                try:
                    self.ahead = self._make()
                except Exception as error:  # raised when that batch is asked for, not instead of this one
                    self.ahead = error
            yield batch
