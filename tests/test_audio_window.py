"""The 4 s audio window (xkd.data.audio_window): a real FLAC through libsndfile, read at a seek,
zero padded past the end of the sound, refused at another rate or channel count."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from xkd.data.audio_window import read_audio_window


def flac(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


RAMP = np.arange(1000, dtype=np.float32) / 1000  # a ramp: each sample tells its position


def test_the_window_is_the_decoded_samples_from_its_start_and_zeros_past_the_end():
    data = flac(RAMP)
    decoded = soundfile.read(io.BytesIO(data), dtype="float32")[0]
    inside = read_audio_window(data, 100, 300, 16000)
    assert inside.dtype == np.float32 and np.array_equal(inside, decoded[100:400])
    tail = read_audio_window(data, 900, 300, 16000)
    assert np.array_equal(tail[:100], decoded[900:]) and not tail[100:].any()
    assert not read_audio_window(data, 2000, 10, 16000).any()  # a window past the sound: silence


def test_another_rate_or_stereo_is_refused():
    with pytest.raises(ValueError, match="expected 16000 Hz mono audio, got 8000 Hz x 1"):
        read_audio_window(flac(RAMP, 8000), 0, 10, 16000)
    with pytest.raises(ValueError, match="got 16000 Hz x 2"):
        read_audio_window(flac(np.stack([RAMP, RAMP], 1)), 0, 10, 16000)
