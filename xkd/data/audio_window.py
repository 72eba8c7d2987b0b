"""The 4 s audio window of a sample, read from its FLAC member with libsndfile (issue 15).

Both loaders read it the same way, in their reader threads / workers: a seek to the window's first
sample (FLAC seek tables: no decode of what comes before) and a decode of the window alone, where
DALI's ``decoders.audio`` decoded the whole clip and sliced it (BENCHMARKS.md, "Audio window read
in the source"). Past the end of the sound the window is zeros (docs/method.md §1).
"""
from __future__ import annotations

import io

import numpy as np
import soundfile


def audio_window_samples(views) -> int:
    """Samples in the global audio window (``views``: a ViewsConfig): its seconds at its rate."""
    return int(round(views.audio_global_seconds * views.audio_sample_rate))


def read_audio_window(data: bytes, start: int, count: int, sample_rate: int) -> np.ndarray:
    """Samples [start, start + count) of a mono FLAC at ``sample_rate`` as float32 (count,), zero
    padded at the end. A FLAC of another rate or channel count raises ValueError (make_shards writes
    mono at the configured rate); a damaged one raises libsndfile's error."""
    window = np.zeros(count, dtype=np.float32)
    with soundfile.SoundFile(io.BytesIO(data)) as audio:
        if audio.samplerate != sample_rate or audio.channels != 1:
            raise ValueError(f"expected {sample_rate} Hz mono audio, got {audio.samplerate} Hz x {audio.channels}")
        if start < audio.frames:
            audio.seek(start)
            audio.read(out=window)  # decoded into the window: up to its length, the rest stays zeros
    return window
