"""Per-stage CPU cost of the DALI CPU loader (``xkd.data.dali_pipeline``) and its decode-only floor (issue 15),
for either CPU video decoder (the loader's ``cpu_decoder``: "pyav", the default, or "dali").

DALI 2.4 reports no per-operator time on the CPU backend (its executor statistics are memory
only), so the graph's stages are costed on whole graphs, by process CPU (getrusage: all of DALI's
threads). The loader reads its rows on one thread of this process here (``decode_processes``
False: with worker processes their CPU would not be in getrusage; ``loader_speed`` counts them):

  - additive: the source alone (a graph that only takes the rows of ``ShardSource``: member reads,
    the audio window's read (``xkd.data.audio_window``: libsndfile seek + decode of the window),
    info vectors, view parameters, and the video: with "pyav" its window decoded (YUV frames,
    ``xkd.data.video_decode``) and copied with the audio into the batch's shared memory
    (``xkd.data.batch_memory``), with "dali" its cut to the window (``xkd.data.video_cut``)); with
    "dali", source + ``decoders.video`` of the window (its graph minus the source graph). The audio
    window's read, and PyAV's window decode, are also timed alone (one thread, the same calls) and
    reported apart from the rest of the source;
  - the loader's own work on DALI's outputs, timed on its thread: the batch's planes
    (``DaliClipLoader._media``: with PyAV tensors viewing the rows' shared memory, copies only when
    a batch is padded again; DALI's frames copied out of its buffers into padded planes) and the
    rest of the collation (``DaliClipLoader._to_batch`` without it: parameters to torch tensors).

What neither covers (the executor) is "other". The video crops and the log-mels are not loader
work: the trainer computes them on its device (``xkd.data.video_crops``, ``xkd.data.audio_finish``).
The floor, with the loader's own decoders: whole clips decoded sequentially (no window, no seek)
per frame, and libsndfile's decode of whole FLAC members per audio sample, times what one sample
needs; with "pyav" the PyTorch loader's floor (the same decoders, ``torch_stages.pyav_floor_ms``),
with "dali" ``decoders.video`` with the source's cut switched off. Used by ``benchmarks/loader_speed.py``.
"""
from __future__ import annotations

import contextlib
import io
import resource
import time
import warnings

import numpy as np
import soundfile

import torch_stages
from xkd.data import dali_pipeline
from xkd.data.audio_window import read_audio_window
from xkd.data.dali_pipeline import DaliClipLoader, ShardSource
from xkd.data.batch_memory import BufferPool
from xkd.data.format import AUDIO_EXT, NUM_AUDIO_SAMPLES, NUM_FRAMES, VIDEO_EXT
from xkd.data.sample_check import read_info
from xkd.data.sampler import clip_view_params
from xkd.data.video_decode import decode_window

# Partial graphs leave source columns unused on purpose; DALI warns once per graph.
warnings.filterwarnings("ignore", message="The external source node .* are not used")


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def whole_videos():
    """The source hands over every video whole (no ``cut_window``), as the floor's sequential
    decode of whole clips needs: its per-frame cost is the clip's frames over the clip's decode."""
    cut = dali_pipeline.cut_window
    dali_pipeline.cut_window = lambda data, frames, fps: (data, frames)
    try:
        yield
    finally:
        dali_pipeline.cut_window = cut


def loader_cpu_ms(make_loader, epochs: int) -> tuple[float, float, float]:
    """CPU ms per sample of iterating ``epochs`` epochs after a first one: (everything, of which in
    ``_to_batch``, of which in ``_media``), the last two on the thread that makes the batch
    (the loader's ``batcher``). From an epoch's end on, as ``loader_speed.measure``: what the
    loader has under way there is the same at both ends of the timing."""
    loader = make_loader()
    timed = {"_to_batch": [0.0], "_media": [0.0]}
    for name, seconds in timed.items():
        original = getattr(loader, name)

        def clocked(*args, original=original, seconds=seconds):
            begin = time.thread_time()
            try:
                return original(*args)
            finally:
                seconds[0] += time.thread_time() - begin
        setattr(loader, name, clocked)
    for _ in loader:
        pass
    samples, begin = 0, process_cpu()
    for seconds in timed.values():
        seconds[0] = 0.0
    for _ in range(epochs):
        for batch in loader:
            samples += batch["audio_window"].shape[0]
    cpu = process_cpu() - begin
    loader.close()
    return (1000 * cpu / samples, 1000 * timed["_to_batch"][0] / samples,
            1000 * timed["_media"][0] / samples)


def subgraph_cpu_ms(samples, views, plan, batch_size: int, epochs: int, decode: str | None,
                    decoder: str = "dali") -> float:
    """CPU ms per sample of the source alone (``decode`` None; for ``decoder``) or, with DALI's
    decoder, with it ("video": the window's frames, as the loader; "video_all": whole clips), one thread."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(enable_conditionals=False)
    def graph(source):
        columns = dict(zip(source.columns, fn.external_source(
            source=source, num_outputs=len(source.columns), batch=True, batch_info=True, parallel=False)))
        if decode == "video":
            return fn.decoders.video(columns["video"], device="cpu", frames=columns["video_frames"], pad_mode="none")
        if decode == "video_all":
            return fn.decoders.video(columns["video"], device="cpu")
        return columns["sample_index"]

    count, begin = 0, None
    buffers = BufferPool()  # the loader's own persists across epochs: its shared memory is reused
    for epoch in range(epochs + 1):  # epoch 0 warms up
        source = ShardSource(samples, views, plan, batch_size, seed=0, epoch=epoch, decoder=decoder, buffers=buffers)
        pipe = graph(source, batch_size=batch_size,
                     num_threads=1, device_id=None, prefetch_queue_depth=2, exec_dynamic=True)
        pipe.build()
        begin = process_cpu() if epoch == 1 else begin
        try:
            while True:
                pipe.run()
                source.media.clear()  # as the loader takes each batch's media: its memory is reused
                count += batch_size if epoch else 0
        except StopIteration:
            pass
        del pipe
    cpu = process_cpu() - begin
    buffers.close()
    return 1000 * cpu / count


def stage_costs(samples, views, plan, batch_size: int, epochs: int, repeats: int = 3, decoder: str = "pyav"
                ) -> dict[str, float]:
    """CPU ms per sample per stage of the DALI CPU pipeline with ``decoder`` (one thread), median of
    ``repeats``."""
    def median(measure) -> float:
        return float(np.median([measure() for _ in range(repeats)]))

    def loader():
        return DaliClipLoader(samples, views, batch_size, plan, seed=0, device="cpu", num_threads=1,
                              cpu_decoder=decoder, decode_processes=False)

    def sub(decode):
        return median(lambda: subgraph_cpu_ms(samples, views, plan, batch_size, epochs, decode, decoder))

    full_runs = [loader_cpu_ms(loader, epochs) for _ in range(repeats)]
    full, collation, planes = (float(np.median([run[i] for run in full_runs])) for i in range(3))
    source = sub(None)
    audio = median(lambda: audio_window_cpu_ms(samples, views))
    if decoder == "pyav":  # the source decodes: its decode is timed alone and taken out of it
        video = median(lambda: pyav_window_cpu_ms(samples, views))
        stages = {"source: tar/member read, view parameters, window stored in the batch": source - audio - video,
                  "audio window read (libsndfile, in the source)": audio,
                  "video decode (PyAV: seek, window, YUV frames; in the source)": video}
    else:
        stages = {"source: tar/member read, video cut, view parameters": source - audio,
                  "audio window read (libsndfile, in the source)": audio,
                  "video decode (DALI decoders.video, window)": sub("video") - source}
    planes_stage = ("batch planes (views of the stored rows; copies if padded again)" if decoder == "pyav"
                    else "window planes padded into the batch (DALI's frames copied)")
    stages.update({planes_stage: planes,
                   "collation (parameters -> torch)": collation - planes})
    stages["other (executor)"] = full - sum(stages.values())
    stages["total (full graph)"] = full
    return stages


def audio_window_cpu_ms(samples, views) -> float:
    """CPU ms per sample of the source's audio window read (``read_audio_window``), one thread, at
    the window start the loader would draw for the sample's first epoch."""
    count = int(round(views.audio_global_seconds * views.audio_sample_rate))
    rows = []
    for index, ref in enumerate(samples):
        start = clip_view_params(0, 0, index, None, 1, views, read_info(ref), True)[0].audio_start
        rows.append((ref.read(AUDIO_EXT), start))
    begin = time.thread_time()
    for data, start in rows:
        read_audio_window(data, start, count, views.audio_sample_rate)
    return 1000 * (time.thread_time() - begin) / len(rows)


def pyav_window_cpu_ms(samples, views) -> float:
    """CPU ms per sample of the source's PyAV window decode (``decode_window``: the frames, not yet
    copied), one thread, at the window start the loader would draw for the sample's first epoch."""
    rows = []
    for index, ref in enumerate(samples):
        info = read_info(ref)
        start = clip_view_params(0, 0, index, None, 1, views, info, True)[0].video_start
        rows.append((ref.read(VIDEO_EXT), start, int(info[NUM_FRAMES])))
    begin = time.thread_time()
    for data, start, stored in rows:
        decode_window(data, start, views.video_global_frames, views.video_fps, stored)
    return 1000 * (time.thread_time() - begin) / len(rows)


def whole_audio_cpu_ms_per_sample(samples) -> float:
    """libsndfile's CPU ms per audio sample decoding whole FLAC members (the floor's audio rate)."""
    members = [ref.read(AUDIO_EXT) for ref in samples]
    begin, decoded = time.thread_time(), 0
    for data in members:
        decoded += len(soundfile.read(io.BytesIO(data), dtype="float32")[0])
    return 1000 * (time.thread_time() - begin) / decoded


def floor_ms(samples, views, plan, batch_size: int, epochs: int, decoder: str = "pyav") -> dict[str, float]:
    """Decode-only CPU ms of what one sample needs with the loader's decoders. PyAV (the CPU
    default): the PyTorch loader's floor, the same decoders (``torch_stages.pyav_floor_ms``: per
    sample, its clip decoded whole, per frame and per audio sample). DALI's decoder: the global
    window's frames (the local windows lie inside it) at the per-frame cost of ``decoders.video``
    decoding whole clips without frame indices, and the 4 s audio window at the per-sample cost of
    libsndfile decoding whole FLAC members."""
    if decoder == "pyav":
        return torch_stages.pyav_floor_ms(samples, views)
    infos = [read_info(ref) for ref in samples]
    frames = np.mean([int(i[NUM_FRAMES]) for i in infos])
    needed_frames = np.mean([min(int(i[NUM_FRAMES]), views.video_global_frames) for i in infos])
    window = int(round(views.audio_global_seconds * views.audio_sample_rate))
    needed_audio = np.mean([min(int(i[NUM_AUDIO_SAMPLES]), window) for i in infos])
    with whole_videos():
        source = subgraph_cpu_ms(samples, views, plan, batch_size, epochs, None)
        video = (subgraph_cpu_ms(samples, views, plan, batch_size, epochs, "video_all") - source
                 ) / frames * needed_frames
    sound = whole_audio_cpu_ms_per_sample(samples) * needed_audio
    return {"video": video, "audio": sound, "total": video + sound}
