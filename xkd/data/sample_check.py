"""Decode one sample in Python to tell whether it is corrupt (used when a DALI batch fails)."""
from __future__ import annotations

import io

import av
import numpy as np
import soundfile

from xkd.data.format import AUDIO_EXT, INFO_EXT, SAMPLE_INFO_FIELDS, VIDEO_EXT
from xkd.data.shard_index import SampleRef


def corruption_reason(ref: SampleRef) -> str | None:
    """None if every member of the sample reads and decodes; otherwise why not."""
    try:
        info = np.load(io.BytesIO(ref.read(INFO_EXT)))
        if info.shape != (len(SAMPLE_INFO_FIELDS),):
            return f"info vector has shape {info.shape}, expected ({len(SAMPLE_INFO_FIELDS)},)"
        with av.open(io.BytesIO(ref.read(VIDEO_EXT))) as container:
            frames = sum(1 for _ in container.decode(video=0))
        if frames == 0:
            return "video has no decodable frame"
        soundfile.read(io.BytesIO(ref.read(AUDIO_EXT)), dtype="float32")
    except Exception as error:  # any decode failure means the sample is unusable
        return f"{type(error).__name__}: {error}"
    return None
