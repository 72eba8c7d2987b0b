"""The trainer's finishing of a loader batch (xkd/data/batch_finish.py, xkd/data/audio_finish.py):
video views cut from the clips' windows, converted to RGB and normalised with their parameters,
audio log-mels and spectrogram crops from the window."""
import math

import numpy as np
import pytest
import torch

from media import TINY_VIEWS, views_config
from xkd.data.audio_finish import crop_spectrogram, crop_spectrograms, finish_audio, local_segments
from xkd.data.batch_finish import VIEW_KEYS, BatchFinisher
from xkd.data.logmel import LogMel
from xkd.data.video_decode import RGB_TO_RGB, yuv_to_rgb_matrix

VIEWS = views_config(**TINY_VIEWS)  # 2 s global (32000 samples, 224 frames), 1 s locals (112 frames)


def random_windows(clips: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """(clips, T, 3, S, S) uint8: Y, U, V at full size (4:4:4)."""
    return torch.randint(0, 256, (clips, frames, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


WINDOWS = random_windows(2, 8, 32)  # TINY_VIEWS: 8 global frames of 32 px, locals of 4 frames at 16 px


def loader_batch(b: int = 2, n: int = 2) -> dict[str, torch.Tensor]:
    """Crops that cut without resampling: the global box is the whole 32 px frame (its size), local
    view v the 16 px quadrant (v, v) at frame offset 2 v."""
    g = torch.Generator().manual_seed(1)
    quadrants = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    return {
        "video_luma": WINDOWS[:b, :, :1], "video_chroma": WINDOWS[:b, :, 1:],
        "video_plane_size": torch.tensor([[[32, 32], [32, 32]]] * b),
        "video_global_box": torch.tensor([[0.0, 0.0, 1.0, 1.0]] * b),
        "video_local_offset": torch.tensor([[0, 2]] * b), "video_local_box": quadrants.expand(b, n, 4),
        # sample 0 decoded to RGB (DALI's decoders), sample 1 to BT.601 limited-range YUV (PyAV)
        "video_to_rgb": torch.from_numpy(np.stack([RGB_TO_RGB, yuv_to_rgb_matrix("bt601", full_range=False)])),
        "video_global_color": torch.tensor([[1.0, 1.0, 1.0, 0.0]] * b), "video_global_flip": torch.tensor([True, False]),
        "video_local_color": torch.tensor([[1.0, 1.0, 1.0, 0.0]] * (b * n)).unflatten(0, (b, n)),
        "video_local_flip": torch.zeros(b, n, dtype=torch.bool), "video_local_blur": torch.zeros(b, n),
        "audio_window": 0.1 * torch.randn(b, 32000, generator=g),
        "audio_global_gain": torch.tensor([1.0, 1.1]),
        "audio_local_offset": torch.tensor([[0, 16000], [700, 12300]]),
        "audio_local_gain": torch.tensor([[1.0, 0.8], [1.2, 1.0]]),
        "audio_local_box": torch.tensor([[[0.0, 0.0, 80.0, 112.0], [0.0, -20.0, 80.0, 140.0]],
                                         [[10.0, 5.0, 60.0, 80.0], [0.0, 0.0, 80.0, 112.0]]]),
        "sample_index": torch.arange(b),
    }


def bt601_limited_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """(3, ...) uint8 Y, U, V -> RGB in [0, 1]: R = 1.164383 (Y - 16) + 1.596027 (V - 128), G =
    1.164383 (Y - 16) - 0.391762 (U - 128) - 0.812968 (V - 128), B = 1.164383 (Y - 16) + 2.017232 (U - 128),
    over 255 and clamped."""
    y, u, v = (c.double() for c in yuv)
    y, u, v = y - 16, u - 128, v - 128
    rgb = torch.stack([1.164383 * y + 1.596027 * v, 1.164383 * y - 0.391762 * u - 0.812968 * v,
                       1.164383 * y + 2.017232 * u]) / 255
    return rgb.clamp(0, 1).float()


def test_finisher_gives_the_model_inputs():
    batch = loader_batch()
    out = BatchFinisher(VIEWS)(batch)
    assert set(out) == set(VIEW_KEYS)
    assert all(v.dtype == torch.float32 for v in out.values())
    assert out["audio_global"].shape == (2, 1, 80, 224) and out["audio_local"].shape == (2, 2, 1, 80, 112)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1, 1)
    video_global = WINDOWS.transpose(1, 2)  # (clips, C, T, H, W): the whole frames
    video_local = video_global[:, :, 2:6, 16:, 16:]  # local view 1: frames 2..5, the bottom-right quadrant
    plain = (video_global.float() / 255 - mean) / std
    torch.testing.assert_close(out["video_global"][0], plain[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["video_local"][0, 1], (video_local[0].float() / 255 - mean) / std,
                               atol=1e-5, rtol=0)
    # sample 1 is YUV: the textbook BT.601 studio-swing equations, then the same normalisation
    torch.testing.assert_close(out["video_global"][1], (bt601_limited_to_rgb(video_global[1]) - mean) / std,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(out["video_local"][1, 1], (bt601_limited_to_rgb(video_local[1]) - mean) / std,
                               atol=1e-5, rtol=0)
    # audio: docs/method.md §1.2-1.3 by hand, view by view
    logmel = LogMel(VIEWS)
    window = batch["audio_window"]
    torch.testing.assert_close(out["audio_global"][1, 0], logmel(window[1] * 1.1), atol=1e-5, rtol=0)
    segment = window[1, 12300:12300 + 16000]  # sample 1, local view 1: gain 1.0, full box = no crop
    torch.testing.assert_close(out["audio_local"][1, 1, 0], logmel(segment), atol=1e-5, rtol=0)
    segment = window[1, 700:700 + 16000] * 1.2
    torch.testing.assert_close(out["audio_local"][1, 0], crop_spectrogram(logmel(segment), (10, 5, 60, 80)),
                               atol=1e-5, rtol=0)


def test_gain_shifts_the_log_mel_by_two_log_gain():
    """The power spectrum scales with the square of the gain: log-mel + 2 ln(g) / std where the mel
    energies dwarf the log's epsilon (a loud tone: every bin of a broadband noise is)."""
    batch = loader_batch()
    logmel = LogMel(VIEWS)
    global_view, _ = finish_audio(batch["audio_window"], torch.tensor([1.0, 1.1]), batch["audio_local_offset"],
                                  batch["audio_local_gain"], batch["audio_local_box"], logmel, 16000)
    unit, _ = finish_audio(batch["audio_window"], torch.ones(2), batch["audio_local_offset"],
                           batch["audio_local_gain"], batch["audio_local_box"], logmel, 16000)
    shift = 2 * math.log(1.1) / VIEWS.mel_std
    torch.testing.assert_close(global_view[1] - unit[1], torch.full_like(unit[1], shift), atol=1e-3, rtol=0)
    assert torch.equal(global_view[0], unit[0])


def test_local_segments_are_the_windows_samples():
    window = torch.arange(20.0).reshape(2, 10)
    got = local_segments(window, torch.tensor([[0, 6], [3, 1]]), 4)
    assert got.tolist() == [[[0, 1, 2, 3], [6, 7, 8, 9]], [[13, 14, 15, 16], [11, 12, 13, 14]]]


def test_crop_aligns_corners_like_the_reference():
    """BYOL-A's resize crop with align_corners=True (the reference code): the crop's first and last
    columns land exactly on the output's first and last; the frequency axis, unchanged in size,
    is untouched; outside the spectrogram is 0."""
    spec = torch.randn(80, 112, generator=torch.Generator().manual_seed(0))
    out = crop_spectrogram(spec, (0, 10, 80, 66))[0]  # frames 10..65 stretched to 112
    torch.testing.assert_close(out[:, 0], spec[:, 10], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, -1], spec[:, 65], atol=1e-5, rtol=0)
    torch.testing.assert_close(crop_spectrogram(spec, (0, 0, 80, 112))[0], spec)
    padded = crop_spectrogram(spec, (0, -112, 80, 112))[0]  # left half of the crop is padding
    assert padded[:, :50].abs().max() < 1e-6 and padded[:, 60:].abs().mean() > 0.5


def test_batched_crops_equal_the_per_view_crop():
    """The two-matrix-product crop of a batch is crop_spectrogram view by view: boxes inside, past
    every border, larger than the spectrogram (zoom out), one bin or frame wide, and the identity."""
    generator = torch.Generator().manual_seed(3)
    bins, frames, views = 80, 50, 64
    specs = torch.randn(views, bins, frames, generator=generator)
    starts = torch.randint(-30, 60, (views, 2), generator=generator)
    sizes = torch.randint(1, 120, (views, 2), generator=generator)
    boxes = torch.cat([starts, starts + sizes], dim=1)  # (f0, t0, f1, t1)
    boxes[0] = torch.tensor([0, 0, bins, frames])  # identity
    boxes[1] = torch.tensor([5, -20, 6, 70])  # one bin tall, past both time borders
    boxes[2] = torch.tensor([-40, -25, bins + 40, frames + 25])  # zoom out
    boxes[3] = torch.tensor([79, 49, 80, 50])  # the last bin and frame only
    got = crop_spectrograms(specs, boxes.float())
    assert got.shape == (views, 1, bins, frames)
    for view in range(views):
        want = crop_spectrogram(specs[view], tuple(boxes[view].tolist()))
        torch.testing.assert_close(got[view], want, atol=2e-5, rtol=1e-5, msg=f"box {boxes[view].tolist()}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_finisher_on_the_gpu_matches_the_cpu():
    batch = loader_batch()
    on_cpu = BatchFinisher(VIEWS)(batch)
    on_gpu = BatchFinisher(VIEWS).to("cuda")(batch)
    for name in VIEW_KEYS:
        torch.testing.assert_close(on_gpu[name].cpu(), on_cpu[name], atol=1e-3, rtol=0)
