"""Rows read in worker processes (xkd/data/row_workers.py) and stored in their batch's shared memory
(xkd/data/batch_memory.py):
the same batches as reader threads, the same corrupt samples, a dead worker stops the run, and
the batch's planes are padded exactly as ``pad_windows`` pads them whatever the buffer held."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from media import TINY_VIEWS, views_config
from xkd.data.dali_pipeline import DaliClipLoader, read_row
from xkd.data.batch_memory import BufferPool, PlanesWindow, StoredBatch, batch_media, write_clip
from xkd.data.row_workers import RowWorkers, WorkerDied
from xkd.data.batch_finish import loader_keys
from xkd.data.sample_check import DescribedError, describe
from xkd.data.sampler import EpochPlan
from xkd.data.shard_index import SampleRef
from xkd.data.video_crops import pad_windows

VIEWS = views_config(**TINY_VIEWS)
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to build the test shard")


def dali(split, plan, **kwargs):
    return DaliClipLoader(split, VIEWS, 2 * plan.samples_per_decode, plan, seed=7, device="cpu", num_threads=2,
                          **kwargs)


@needs_ffmpeg
@pytest.mark.parametrize("repeats", [1, 2])
def test_worker_processes_give_the_batches_of_reader_threads(split, repeats):
    plan = EpochPlan(len(split), seed=7, samples_per_decode=repeats)
    from_processes, from_threads = dali(split, plan), dali(split, plan, decode_processes=False)
    for epoch in range(2):
        got, expected = list(from_processes), list(from_threads)
        assert len(got) == len(expected) == len(split) // 2
        for x, y in zip(got, expected):
            for name in loader_keys(x):
                assert torch.equal(x[name], y[name]), (epoch, name)
    assert len(from_processes.worker_pids()) == 2 and from_threads.worker_pids() == []
    from_processes.close()
    from_threads.close()


def kill_this_process(*_):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_worker_is_an_error_of_the_run_not_of_a_sample():
    workers, pool = RowWorkers(1), BufferPool()
    try:
        buffer = pool.take(1, 8, (4, 4), (2, 2), 16)
        with pytest.raises(WorkerDied, match="worker process died"):
            workers.submit(kill_this_process, (), buffer, 0).result(timeout=60)
        with pytest.raises(WorkerDied):
            workers.submit(kill_this_process, (), buffer, 0)
    finally:
        workers.close()
        pool.close()


@needs_ffmpeg
def test_an_unreadable_row_fails_with_the_description_of_its_error(split, tmp_path):
    """A row a worker cannot read fails with the text describe() gives the same error read here."""
    ref = split[0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(ref.shard).read_bytes()[:ref.member("webm")[0] + 100])
    broken = SampleRef(str(cut), ref.key, ref.members)
    arguments = (broken, 0, None, VIEWS, 7, 0, 1, True, "pyav")
    with pytest.raises(OSError) as here:
        read_row(*arguments)
    workers, pool = RowWorkers(1), BufferPool()
    try:
        future = workers.submit(read_row, arguments, pool.take(1, 8, (128, 256), (64, 128), 32000), 0)
        with pytest.raises(DescribedError) as there:
            future.result(timeout=60)
        assert describe(there.value) == describe(here.value)
    finally:
        workers.close()
        pool.close()


def planes_window(height: int, width: int, value: int, frames: int = 3) -> PlanesWindow:
    luma = np.full((frames, 1, height, width), value, dtype=np.uint8)
    chroma = np.full((frames, 2, (height + 1) // 2, (width + 1) // 2), value + 1, dtype=np.uint8)
    return PlanesWindow(luma, chroma)


def store(pool, windows, luma_cap, audio_value=0.5):
    buffer = pool.take(len(windows), 3, luma_cap, tuple((c + 1) // 2 for c in luma_cap), 5)
    kept = [None if write_clip(buffer.layout, buffer.arrays(), clip, window, np.full(5, audio_value, np.float32))
            else window for clip, window in enumerate(windows)]
    return StoredBatch(buffer, [window.plane_sizes() for window in windows], kept)


def test_batch_planes_are_padded_as_pad_windows_pads_them():
    pool = BufferPool()
    try:
        windows = [planes_window(6, 8, 10), planes_window(4, 4, 20)]
        expected = pad_windows(windows)
        # Caps that are the batch's largest frame: the tensors view the shared memory (no copy).
        stored = store(pool, windows, (6, 8))
        media = batch_media(stored)
        assert media["video_luma"].data_ptr() == stored.buffer.luma.ctypes.data
        # Caps larger than the frames (info vectors that overstate), and a window larger than the
        # caps (one that understates): copied, padded to the decoded frames.
        for caps, sizes in (((10, 12), None), ((4, 4), None)):
            media = batch_media(store(pool, windows, caps))
            for key in ("video_luma", "video_chroma", "video_plane_size"):
                assert torch.equal(media[key], expected[key]), (caps, key)
            assert torch.equal(media["audio_window"], torch.full((2, 5), 0.5))
        del stored, media
        # One buffer reused: what a larger window left around a smaller one is zeroed.
        names = set()
        for windows in ([planes_window(6, 8, 30), planes_window(6, 8, 40)],
                        [planes_window(2, 8, 50), planes_window(6, 2, 60)],
                        [planes_window(6, 8, 70), planes_window(5, 7, 80)]):
            stored = store(pool, windows, (6, 8))
            names.add(stored.buffer.layout.name)
            media, expected = batch_media(stored), pad_windows(windows)
            for key in ("video_luma", "video_chroma"):
                assert torch.equal(media[key], expected[key]), key
            del stored, media
        assert len(names) == 1
    finally:
        segments = [segment.name for segment in pool.segments]
        pool.close()
    assert segments and not any((Path("/dev/shm") / name.lstrip("/")).exists() for name in segments)


@needs_ffmpeg
def test_a_loader_whose_worker_dies_stops_counting_nothing_corrupt(split):
    samples = split * 8  # rows still to read when the workers die (read-ahead and DALI's prefetch are 3 batches)
    loader = dali(samples, EpochPlan(len(samples), seed=7))
    iterator = iter(loader)
    next(iterator)
    for pid in loader.worker_pids():
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerDied):
        for _ in iterator:
            pass
    assert loader.corrupt_samples == 0
    loader.close()


def test_a_full_dev_shm_is_a_clear_error_not_a_crash_later(monkeypatch):
    """Space for a batch is taken when its segment is made: a full /dev/shm (a container's default
    64 MB) is an error naming the remedies there, not a SIGBUS in whoever writes into it later."""
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    pool = BufferPool()
    with pytest.raises(OSError, match=r"shared memory .* --shm-size.* data.decode_processes: false"):
        pool.take(4, 32, (128, 228), (64, 114), 64000)
    assert pool.segments == []
    pool.close()


def test_a_pool_unlinks_what_a_killed_process_left():
    """Segments of a process that no longer runs (killed: no finalizer ran) are unlinked by the next
    pool; those of live processes, and files that are not a pool's, stay."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    shm = Path("/dev/shm")
    left = shm / f"xkd_rows_{dead}_0123456789ab"
    live = shm / f"xkd_rows_{os.getpid()}_0123456789ab"
    other = shm / f"not_xkd_{dead}"
    for path in (left, live, other):
        path.write_bytes(b"x" * 64)
    try:
        BufferPool().close()
        assert not left.exists() and live.exists() and other.exists()
    finally:
        for path in (left, live, other):
            path.unlink(missing_ok=True)


@needs_ffmpeg
def test_the_jobs_signals_leave_the_workers_to_the_training_process(split):
    """SLURM signals every process of a job step (requeue, preemption, time-limit warnings): the
    workers and their fork server ignore those signals, so the batches the training process needs
    to reach its checkpoint still come."""
    import multiprocessing.forkserver
    import time

    samples = split * 8
    loader = dali(samples, EpochPlan(len(samples), seed=7))
    iterator = iter(loader)
    next(iterator)
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    for pid in [*loader.worker_pids(), server]:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
            os.kill(pid, sig)
    time.sleep(0.5)
    assert len(list(iterator)) == len(samples) // 2 - 1
    for pid in [*loader.worker_pids(), server]:
        os.kill(pid, 0)  # still running
    loader.close()


@needs_ffmpeg
def test_the_jobs_signals_leave_the_pytorch_loaders_workers_alone(split):
    """The DataLoader's workers (forked: this process's command line) ignore the job's signals too."""
    import time

    from media import child_pids
    from xkd.data.torch_loader import TorchClipLoader

    samples = split * 4
    loader = TorchClipLoader(samples, VIEWS, 2, num_workers=2, plan=EpochPlan(len(samples), seed=7), seed=7)
    iterator = iter(loader)
    next(iterator)
    ours = Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
    workers = [pid for pid in child_pids(os.getpid()) if Path(f"/proc/{pid}/cmdline").read_bytes() == ours]
    assert len(workers) == 2
    for pid in workers:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            os.kill(pid, sig)
    time.sleep(0.5)
    assert len(list(iterator)) == len(samples) // 2 - 1
