"""Per-stage CPU cost of the DALI CPU pipeline (``xkd.data.dali_pipeline``) and its decode-only floor (issue 15).

DALI 2.4 reports no per-operator time on the CPU backend (its executor statistics are memory
only), so stages are costed on whole graphs, by process CPU (getrusage: all of DALI's threads):

  - additive: the source alone (a graph that only takes the rows of ``ShardSource``: member reads,
    the cut of each video to its window (``xkd.data.video_cut``),
    info vectors, view parameters), then source + ``decoders.video`` of the window, source +
    ``decoders.audio``; a decoder's cost is its graph minus the source graph;
  - knock-out: the production graph (``build_pipeline``, unchanged) built with one operator
    replaced by a near-free stand-in (``knockouts``); the stage's cost is the full graph minus
    that graph. Stand-in: a crop to the output size (the video resizes);
  - collation: ``DaliClipLoader._to_batch`` (DALI outputs to torch tensors, the video views copied
    from DALI's FHWC into the model's CFHW layout), timed on its thread.

What no knock-out covers (slices, the audio window, the executor) is "other". The log-mels are
not in the graph: the trainer computes them on its device (``xkd.data.audio_finish``).
The floor: ``decoders.video`` / ``decoders.audio`` of whole clips (sequential, no window, the
source's cut of each video to its window switched off), per frame / per audio sample, times what
one sample needs. Used by ``benchmarks/loader_speed.py``.
"""
from __future__ import annotations

import contextlib
import resource
import time
import warnings

import numpy as np

from xkd.data import dali_pipeline
from xkd.data.dali_pipeline import SOURCE_COLUMNS, DaliClipLoader, ShardSource
from xkd.data.format import NUM_AUDIO_SAMPLES, NUM_FRAMES
from xkd.data.sample_check import read_info

# Partial graphs leave source columns unused on purpose; DALI warns once per graph.
warnings.filterwarnings("ignore", message="The external source node .* are not used")


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def crop_to_size(resize):
    """fn.resize -> a crop (padded) to the requested size."""
    from nvidia.dali import fn

    return lambda data, **kw: fn.crop(data, crop=kw["size"], out_of_bounds_policy="pad")


def knockouts() -> dict[str, tuple[str, object]]:
    """Stage -> (the ``nvidia.dali.fn`` operator replaced, a function of the original giving its stand-in)."""
    return {"video crop + resize": ("resize", crop_to_size)}


@contextlib.contextmanager
def replaced(name: str, make_stand_in):
    """``nvidia.dali.fn.<name>`` replaced while graphs are defined (build_pipeline looks ops up then)."""
    from nvidia.dali import fn

    original = getattr(fn, name)
    setattr(fn, name, make_stand_in(original))
    try:
        yield
    finally:
        setattr(fn, name, original)


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


def loader_cpu_ms(make_loader, epochs: int) -> tuple[float, float]:
    """(CPU ms per sample of iterating ``epochs`` epochs after a first batch, of which in ``_to_batch``)."""
    loader = make_loader()
    to_batch, collation = loader._to_batch, [0.0]

    def timed_to_batch(outputs):
        begin = time.thread_time()
        try:
            return to_batch(outputs)
        finally:
            collation[0] += time.thread_time() - begin

    loader._to_batch = timed_to_batch
    iterator = iter(loader)
    next(iterator)
    samples, collation[0], begin = 0, 0.0, process_cpu()
    for epoch in range(epochs):
        for batch in (iterator if epoch == 0 else loader):
            samples += batch["video_global"].shape[0]
    return 1000 * (process_cpu() - begin) / samples, 1000 * collation[0] / samples


def subgraph_cpu_ms(samples, views, plan, batch_size: int, epochs: int, decode: str | None) -> float:
    """CPU ms per sample of the source alone (``decode`` None) or with one decoder ("video": the
    window's frames, as the loader; "video_all", "audio": whole clips), one thread."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(enable_conditionals=False)
    def graph(source):
        columns = dict(zip(SOURCE_COLUMNS, fn.external_source(
            source=source, num_outputs=len(SOURCE_COLUMNS), batch=True, batch_info=True, parallel=False)))
        if decode == "video":
            return fn.decoders.video(columns["video"], device="cpu", frames=columns["video_frames"], pad_mode="none")
        if decode == "video_all":
            return fn.decoders.video(columns["video"], device="cpu")
        if decode == "audio":
            return fn.decoders.audio(columns["audio"], sample_rate=views.audio_sample_rate, downmix=True,
                                     dtype=types.FLOAT)[0]
        return columns["audio_start"]

    count, begin = 0, None
    for epoch in range(epochs + 1):  # epoch 0 warms up
        pipe = graph(ShardSource(samples, views, plan, batch_size, seed=0, epoch=epoch), batch_size=batch_size,
                     num_threads=1, device_id=None, prefetch_queue_depth=2, exec_dynamic=True)
        pipe.build()
        begin = process_cpu() if epoch == 1 else begin
        try:
            while True:
                pipe.run()
                count += batch_size if epoch else 0
        except StopIteration:
            pass
        del pipe
    return 1000 * (process_cpu() - begin) / count


def stage_costs(samples, views, plan, batch_size: int, epochs: int, repeats: int = 3) -> dict[str, float]:
    """CPU ms per sample per stage of the DALI CPU pipeline (one thread), median of ``repeats``."""
    def median(measure) -> float:
        return float(np.median([measure() for _ in range(repeats)]))

    def loader():
        return DaliClipLoader(samples, views, batch_size, plan, seed=0, device="cpu", num_threads=1)

    def sub(decode):
        return median(lambda: subgraph_cpu_ms(samples, views, plan, batch_size, epochs, decode))

    full_runs = [loader_cpu_ms(loader, epochs) for _ in range(repeats)]
    full = float(np.median([cpu for cpu, _ in full_runs]))
    source = sub(None)
    stages = {"source: tar/member read, video cut, view parameters": source,
              "video decode (window)": sub("video") - source, "audio decode (whole FLAC)": sub("audio") - source}
    for stage, (name, stand_in) in knockouts().items():
        with replaced(name, stand_in):
            stages[stage] = full - median(lambda: loader_cpu_ms(loader, epochs)[0])
    stages["collation (DALI outputs -> torch, FHWC -> CFHW)"] = float(np.median([c for _, c in full_runs]))
    stages["other (slices, audio window, executor)"] = full - sum(stages.values())
    stages["total (full graph)"] = full
    return stages


def floor_ms(samples, views, plan, batch_size: int, epochs: int) -> dict[str, float]:
    """Decode-only CPU ms of what one sample needs with DALI's decoders: the global window's frames
    (the local windows lie inside it) and the 4 s audio window, at the per-frame / per-sample cost
    of decoding whole clips (``decoders.video`` without frame indices, ``decoders.audio``)."""
    infos = [read_info(ref) for ref in samples]
    frames = np.mean([int(i[NUM_FRAMES]) for i in infos])
    needed_frames = np.mean([min(int(i[NUM_FRAMES]), views.video_global_frames) for i in infos])
    audio = np.mean([int(i[NUM_AUDIO_SAMPLES]) for i in infos])
    window = int(round(views.audio_global_seconds * views.audio_sample_rate))
    needed_audio = np.mean([min(int(i[NUM_AUDIO_SAMPLES]), window) for i in infos])
    with whole_videos():
        source = subgraph_cpu_ms(samples, views, plan, batch_size, epochs, None)
        video = (subgraph_cpu_ms(samples, views, plan, batch_size, epochs, "video_all") - source) / frames * needed_frames
        sound = (subgraph_cpu_ms(samples, views, plan, batch_size, epochs, "audio") - source) / audio * needed_audio
    return {"video": video, "audio": sound, "total": video + sound}
