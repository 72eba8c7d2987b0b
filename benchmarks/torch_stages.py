"""Per-stage CPU cost of the PyTorch loader (``xkd.data.torch_loader``) and its decode-only floor (issue 15).

``sample_stages`` runs the steps of :meth:`ClipDataset.load` one by one with the loader's own
functions, each under a CPU clock (``time.process_time``, one thread: run with
OMP_NUM_THREADS=1, as a DataLoader worker does), and checks that the views equal ``load``'s.
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
from xkd.data.batch_finish import LOADER_KEYS
from xkd.data.torch_views import crop_planes
from xkd.data.video_decode import decode_planes
from xkd.data.video_finish import video_param_tensors

# The log-mels and spectrogram crops are not a loader stage: the trainer computes them on its
# device (xkd.data.audio_finish), as it finishes the video.
STAGES = ("tar/member read", "view parameters", "video decode (window, YUV planes)", "audio decode (window)",
          "video crop + resize", "layout (to CTHW) + finishing parameters", "collation")


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


def video_view(clock: StageClock, planes, box, size: int):
    """One video view, stage by stage (``global_video_view`` / ``local_video_views``); the conversion
    to RGB, colour, blur, flip and normalisation run on the training device
    (``xkd.data.video_finish``), not here."""
    with clock("video crop + resize"):
        x = crop_planes(planes, box, size)
    with clock("layout (to CTHW) + finishing parameters"):
        return x.permute(1, 0, 2, 3)


def sample_stages(dataset: ClipDataset, index: int, clock: StageClock) -> dict:
    """``dataset.load(index)`` (one sample per decode) split into timed stages; returns the same sample."""
    v, ref = dataset.views, dataset.samples[index]
    with clock("tar/member read"):
        info, video, audio = read_info(ref), ref.read(VIDEO_EXT), ref.read(AUDIO_EXT)
    with clock("view parameters"):
        (p,) = dataset._params(info, index, None)  # one sample per decode (k = 1)
    with clock("video decode (window, YUV planes)"):
        decoded = decode_planes(video, p.video_start, v.video_global_frames, v.video_fps,
                                stored_frames=int(info[NUM_FRAMES]))
    planes = decoded.planes
    with clock("audio decode (window)"):
        window = read_audio(audio, p.audio_start, int(round(v.audio_global_seconds * v.audio_sample_rate)),
                            v.audio_sample_rate)
    with torch.no_grad():
        video_global = video_view(clock, planes, p.global_box, v.video_global_size).contiguous()
        video_local = torch.stack([
            video_view(clock, [plane[int(o):int(o) + v.video_local_frames] for plane in planes], p.local_boxes[i],
                       v.video_local_size)
            for i, o in enumerate(p.local_offsets)])
        with clock("layout (to CTHW) + finishing parameters"):
            finishing = {**video_param_tensors(p, decoded.to_rgb), **audio_param_tensors(p)}
    return {"video_global": video_global, "video_local": video_local, "audio_window": window, **finishing,
            "key": ref.key, "index": index}


def stage_costs(dataset: ClipDataset, batch_size: int, epochs: int) -> dict[str, float]:
    """CPU ms per sample of each stage over ``epochs`` passes of the dataset, in full batches."""
    clock = StageClock()
    (first,) = dataset.load(int(dataset.indices[0]))
    staged = sample_stages(dataset, int(dataset.indices[0]), StageClock())
    if not all(torch.equal(first[name], staged[name]) for name in LOADER_KEYS):
        raise AssertionError("the staged sample differs from ClipDataset.load: torch_stages is out of date")
    samples = 0
    for _ in range(epochs):
        for begin in range(0, len(dataset.indices) - batch_size + 1, batch_size):
            items = [sample_stages(dataset, int(i), clock) for i in dataset.indices[begin:begin + batch_size]]
            with clock("collation"):
                collate_clips([{"samples": [item], "found": []} for item in items])
            samples += batch_size
    return {stage: 1000 * clock.seconds[stage] / samples for stage in STAGES}


def floor_ms(dataset: ClipDataset) -> dict[str, float]:
    """Decode-only CPU ms of exactly what one sample needs, averaged over the samples: the global
    window's frames (the local windows lie inside it) and the global audio window, each at the
    per-frame / per-sample cost of decoding its whole clip sequentially (no seek, no GOP waste)."""
    v = dataset.views
    window_samples = int(round(v.audio_global_seconds * v.audio_sample_rate))
    video, audio = [], []
    for ref in dataset.samples:
        info = read_info(ref)
        stored, samples = int(info[NUM_FRAMES]), int(info[NUM_AUDIO_SAMPLES])
        data = ref.read(VIDEO_EXT)
        begin = time.process_time()
        decode_planes(data, 0, stored, v.video_fps, stored_frames=stored)
        video.append((time.process_time() - begin) / stored * min(stored, v.video_global_frames))
        data = ref.read(AUDIO_EXT)
        begin = time.process_time()
        read_audio(data, 0, samples, v.audio_sample_rate)
        audio.append((time.process_time() - begin) / samples * min(samples, window_samples))
    video_ms, audio_ms = 1000 * float(np.mean(video)), 1000 * float(np.mean(audio))
    return {"video": video_ms, "audio": audio_ms, "total": video_ms + audio_ms}
