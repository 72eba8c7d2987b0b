"""Per-stage CPU cost of the PyTorch loader (``xkd.data.torch_loader``) and its decode-only floor (issue 15).

``sample_stages`` runs the steps of :meth:`ClipDataset.load` one by one with the loader's own
functions, each under a CPU clock (``time.process_time``, one thread: run with
OMP_NUM_THREADS=1, as a DataLoader worker does), and checks that its items equal ``load``'s.
``floor_ms`` is the decode-only cost of exactly the frames and audio one sample needs, with the
same decoders (PyAV video into YUV planes, libsndfile FLAC), from sequential decodes of whole clips.
Used by ``benchmarks/loader_speed.py``.
"""
from __future__ import annotations

import collections
import contextlib
import time

import numpy as np
import torch

from xkd.data.format import AUDIO_EXT, NUM_AUDIO_SAMPLES, NUM_FRAMES, VIDEO_EXT
from xkd.data.sample_check import read_info
from xkd.data.torch_loader import ClipDataset, collate_clips, read_audio
from xkd.data.audio_finish import audio_param_tensors
from xkd.data.batch_finish import SAMPLE_KEYS
from xkd.data.video_crops import crop_param_tensors
from xkd.data.video_decode import decode_planes, decode_window
from xkd.data.video_finish import video_param_tensors

# The video crops, log-mels and spectrogram crops are not loader stages: the trainer computes them
# on its device (xkd.data.video_crops, xkd.data.audio_finish), as it finishes the views.
STAGES = ("tar/member read", "view parameters", "video decode (window, YUV frames)", "audio decode (window)",
          "view parameters as tensors", "collation (frames copied into padded planes, parameters stacked)")


class StageClock:
    """CPU seconds (``time.process_time``) accumulated per stage name."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        begin = time.process_time()
        try:
            yield
        finally:
            self.seconds[stage] += time.process_time() - begin


def sample_stages(dataset: ClipDataset, index: int, clock: StageClock) -> dict:
    """``dataset[i]`` for clip ``index`` (one sample per decode) split into timed stages; returns the
    same item."""
    v, ref = dataset.views, dataset.samples[index]
    with clock("tar/member read"):
        info, video, audio = read_info(ref), ref.read(VIDEO_EXT), ref.read(AUDIO_EXT)
    with clock("view parameters"):
        (p,) = dataset._params(info, index, None)  # one sample per decode (k = 1)
    with clock("video decode (window, YUV frames)"):
        decoded = decode_window(video, p.video_start, v.video_global_frames, v.video_fps,
                                stored_frames=int(info[NUM_FRAMES]))
    with clock("audio decode (window)"):
        window = read_audio(audio, p.audio_start, int(round(v.audio_global_seconds * v.audio_sample_rate)),
                            v.audio_sample_rate)
    with clock("view parameters as tensors"):
        sample = {"audio_window": window, **crop_param_tensors(p), **video_param_tensors(p, decoded.to_rgb),
                  **audio_param_tensors(p), "key": ref.key, "index": index}
    return {"window": decoded, "samples": [sample], "found": []}


def stage_costs(dataset: ClipDataset, batch_size: int, epochs: int) -> dict[str, float]:
    """CPU ms per sample of each stage over ``epochs`` passes of the dataset, in full batches."""
    clock = StageClock()
    window, (first,) = dataset.load(int(dataset.indices[0]))
    staged = sample_stages(dataset, int(dataset.indices[0]), StageClock())
    same = all(torch.equal(a, b) for a, b in zip(window.planes(), staged["window"].planes())) and all(
        torch.equal(first[name], staged["samples"][0][name]) for name in SAMPLE_KEYS)
    if not same:
        raise AssertionError("the staged sample differs from ClipDataset.load: torch_stages is out of date")
    samples = 0
    for _ in range(epochs):
        for begin in range(0, len(dataset.indices) - batch_size + 1, batch_size):
            items = [sample_stages(dataset, int(i), clock) for i in dataset.indices[begin:begin + batch_size]]
            with clock("collation (frames copied into padded planes, parameters stacked)"):
                collate_clips(items)
            samples += batch_size
    return {stage: 1000 * clock.seconds[stage] / samples for stage in STAGES}


def floor_ms(dataset: ClipDataset) -> dict[str, float]:
    """:func:`pyav_floor_ms` of the dataset's samples."""
    return pyav_floor_ms(dataset.samples, dataset.views)


def pyav_floor_ms(samples, views) -> dict[str, float]:
    """Decode-only CPU ms of exactly what one sample needs, averaged over the samples: the global
    window's frames (the local windows lie inside it) and the global audio window, each at the
    per-frame / per-sample cost of decoding its whole clip sequentially (no seek, no GOP waste),
    with the CPU loaders' decoders (PyAV into YUV planes, libsndfile). Both CPU loaders decode with
    these, so this is the floor of both (``dali_stages.floor_ms`` with the PyAV decoder)."""
    window_samples = int(round(views.audio_global_seconds * views.audio_sample_rate))
    video, audio = [], []
    for ref in samples:
        info = read_info(ref)
        stored, count = int(info[NUM_FRAMES]), int(info[NUM_AUDIO_SAMPLES])
        data = ref.read(VIDEO_EXT)
        begin = time.process_time()
        decode_planes(data, 0, stored, views.video_fps, stored_frames=stored)
        video.append((time.process_time() - begin) / stored * min(stored, views.video_global_frames))
        data = ref.read(AUDIO_EXT)
        begin = time.process_time()
        read_audio(data, 0, count, views.audio_sample_rate)
        audio.append((time.process_time() - begin) / count * min(count, window_samples))
    video_ms, audio_ms = 1000 * float(np.mean(video)), 1000 * float(np.mean(audio))
    return {"video": video_ms, "audio": audio_ms, "total": video_ms + audio_ms}
