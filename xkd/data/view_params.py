"""Random augmentation parameters of one clip's views, drawn in Python from a per-sample seed.

Both loaders (DALI and PyTorch) apply exactly these parameters, so a sample's views depend
only on (seed, epoch, sample index): resuming mid-epoch reproduces the same views, and the
two loaders draw identical windows, crops, flips and gains. Values follow docs/method.md §1.3
(paper Tables S1/S2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xkd.config import ViewsConfig

BRIGHTNESS = CONTRAST = SATURATION = 0.4  # ColorJitter(0.4, 0.4, 0.4, 0.2)
HUE = 0.2  # fraction of the hue circle
BLUR_SIGMA_RANGE = (0.1, 2.0)  # Gaussian blur of a local view, with probability 0.5
BLUR_SIGMA_MAX = BLUR_SIGMA_RANGE[1]


@dataclass
class ColorJitter:
    brightness: float
    contrast: float
    saturation: float  # 0 when the view is turned to grayscale
    hue: float  # fraction of the hue circle, in [-0.2, 0.2]

    def as_array(self) -> np.ndarray:
        return np.array([self.brightness, self.contrast, self.saturation, self.hue], dtype=np.float32)


IDENTITY_COLOR = ColorJitter(1.0, 1.0, 1.0, 0.0)


@dataclass
class ClipViewParams:
    """Everything random about one clip's global and local views.

    Crop boxes are (top, left, bottom, right) relative to the decoded frame (0..1);
    audio boxes are (freq0, time0, freq1, time1) in spectrogram bins/frames and may reach
    outside the spectrogram (zero padding, BYOL-A's virtual canvas).
    """

    video_start: int  # first frame of the global window
    audio_start: int  # first sample of the global window (synchronised with video_start)
    global_box: np.ndarray  # (4,)
    global_flip: bool
    global_color: ColorJitter
    local_offsets: np.ndarray  # (n_v,) frame offsets inside the global window
    local_boxes: np.ndarray  # (n_v, 4)
    local_flips: np.ndarray  # (n_v,) bool
    local_colors: list[ColorJitter]
    local_blur_sigmas: np.ndarray  # (n_v,) 0 means no blur
    audio_gain: float
    audio_local_offsets: np.ndarray  # (n_a,) sample offsets inside the global window
    audio_local_gains: np.ndarray  # (n_a,)
    audio_local_boxes: np.ndarray  # (n_a, 4)


def sample_seed(seed: int, epoch: int, sample_index: int) -> np.random.Generator:
    """Independent, reproducible stream per (run seed, epoch, sample)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, sample_index]))


def random_resized_box(rng: np.random.Generator, height: float, width: float, scale: tuple[float, float],
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """RandomResizedCrop box (torchvision's algorithm: 10 tries, then a centre crop), relative coordinates."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.integers(0, height - h + 1)
            left = rng.integers(0, width - w + 1)
            return np.array([top / height, left / width, (top + h) / height, (left + w) / width], dtype=np.float32)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return np.array([top / height, left / width, (top + h) / height, (left + w) / width], dtype=np.float32)


def color_jitter(rng: np.random.Generator, grayscale_probability: float = 0.0) -> ColorJitter:
    saturation = rng.uniform(1 - SATURATION, 1 + SATURATION)
    jitter = ColorJitter(
        brightness=rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS),
        contrast=rng.uniform(1 - CONTRAST, 1 + CONTRAST),
        saturation=saturation,
        hue=rng.uniform(-HUE, HUE),
    )
    if grayscale_probability and rng.random() < grayscale_probability:
        jitter.saturation = 0.0
    return jitter


def spectrogram_crop_box(rng: np.random.Generator, freq_bins: int, frames: int, canvas_scale=(1.0, 1.5),
                         freq_scale=(0.6, 1.5), time_scale=(0.6, 1.5)) -> np.ndarray:
    """BYOL-A random resize crop on a virtual canvas (freq x1.0, time x1.5) centred on the spectrogram.

    Returns (f0, t0, f1, t1) in spectrogram coordinates (negative / beyond the end = zero padding).
    """
    canvas_f, canvas_t = int(freq_bins * canvas_scale[0]), int(frames * canvas_scale[1])
    # Crop sizes scale the spectrogram (not the canvas), clipped to the canvas, as in BYOL-A.
    h = min(max(int(freq_bins * rng.uniform(*freq_scale)), 1), canvas_f)
    w = min(max(int(frames * rng.uniform(*time_scale)), 1), canvas_t)
    i = int(rng.integers(0, canvas_f - h + 1)) if canvas_f > h else 0
    j = int(rng.integers(0, canvas_t - w + 1)) if canvas_t > w else 0
    pad_f, pad_t = (canvas_f - freq_bins) // 2, (canvas_t - frames) // 2
    return np.array([i - pad_f, j - pad_t, i - pad_f + h, j - pad_t + w], dtype=np.int32)


def centre_box(height: float, width: float) -> np.ndarray:
    """The largest centred square, relative coordinates (the un-augmented crop)."""
    side = min(height, width)
    top, left = (height - side) / 2, (width - side) / 2
    return np.array([top / height, left / width, (top + side) / height, (left + side) / width], dtype=np.float32)


def neutral_params(params: ClipViewParams, views: ViewsConfig, frame_height: int, frame_width: int) -> ClipViewParams:
    """The same windows without augmentation: centre squares, no flip, jitter, blur or gain, and
    the whole local spectrogram (what evaluation views and loader cross-checks use)."""
    identity = IDENTITY_COLOR
    n_video, n_audio = views.video_local_views, views.audio_local_views
    box = centre_box(frame_height, frame_width)
    return ClipViewParams(
        video_start=params.video_start, audio_start=params.audio_start,
        global_box=box, global_flip=False, global_color=identity,
        local_offsets=params.local_offsets, local_boxes=np.stack([box] * n_video),
        local_flips=np.zeros(n_video, dtype=bool), local_colors=[identity] * n_video,
        local_blur_sigmas=np.zeros(n_video, dtype=np.float32), audio_gain=1.0,
        audio_local_offsets=params.audio_local_offsets, audio_local_gains=np.ones(n_audio, dtype=np.float32),
        audio_local_boxes=np.tile(np.array([0, 0, views.mel_bins, views.audio_local_frames], dtype=np.int32),
                                  (n_audio, 1)),
    )


def draw_view_params(rng: np.random.Generator, views: ViewsConfig, num_frames: int, num_audio_samples: int,
                     frame_height: int, frame_width: int, augment: bool = True) -> ClipViewParams:
    """Draw one clip's view parameters (docs/method.md §1). ``augment=False`` keeps only the
    random windows (see :func:`neutral_params`)."""
    # One window valid for both streams: the global views are synchronised.
    audio_window = int(round(views.audio_global_seconds * views.audio_sample_rate))
    last_start = min(num_frames - views.video_global_frames,
                     int((num_audio_samples - audio_window) * views.video_fps // views.audio_sample_rate))
    video_start = int(rng.integers(0, last_start + 1)) if last_start > 0 else 0
    audio_start = int(round(video_start * views.audio_sample_rate / views.video_fps))

    # Global video: short side to the view size first, then RandomResizedCrop scale (0.2, 1).
    short = min(frame_height, frame_width)
    resized_h = views.video_global_size * frame_height / short
    resized_w = views.video_global_size * frame_width / short
    global_box = random_resized_box(rng, round(resized_h), round(resized_w), scale=(0.2, 1.0))
    global_flip = bool(rng.random() < 0.5)
    global_color = color_jitter(rng)

    n_video = views.video_local_views
    local_offsets = rng.integers(0, views.video_global_frames - views.video_local_frames + 1, size=n_video)
    local_boxes = np.stack([random_resized_box(rng, frame_height, frame_width, scale=(0.08, 0.4))
                            for _ in range(n_video)])
    local_flips = rng.random(n_video) < 0.5
    local_colors = [color_jitter(rng, grayscale_probability=0.2) for _ in range(n_video)]
    blur = rng.random(n_video) < 0.5
    local_blur_sigmas = np.where(blur, rng.uniform(*BLUR_SIGMA_RANGE, size=n_video), 0.0).astype(np.float32)

    audio_gain = float(rng.uniform(0.9, 1.1))
    n_audio = views.audio_local_views
    local_window = int(round(views.audio_local_seconds * views.audio_sample_rate))
    steps = (audio_window - local_window) // 100  # offsets in steps of 100 samples
    audio_local_offsets = 100 * rng.integers(0, steps + 1, size=n_audio)
    audio_local_gains = rng.uniform(0.8, 1.2, size=n_audio).astype(np.float32)
    local_frames = views.audio_local_frames
    audio_local_boxes = np.stack([spectrogram_crop_box(rng, views.mel_bins, local_frames) for _ in range(n_audio)])

    params = ClipViewParams(
        video_start=video_start, audio_start=audio_start,
        global_box=global_box, global_flip=global_flip, global_color=global_color,
        local_offsets=local_offsets.astype(np.int32), local_boxes=local_boxes.astype(np.float32),
        local_flips=local_flips, local_colors=local_colors, local_blur_sigmas=local_blur_sigmas,
        audio_gain=audio_gain, audio_local_offsets=audio_local_offsets.astype(np.int32),
        audio_local_gains=audio_local_gains, audio_local_boxes=audio_local_boxes.astype(np.int32),
    )
    return params if augment else neutral_params(params, views, frame_height, frame_width)
