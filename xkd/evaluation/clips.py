"""Evaluation clips of an item: where they lie in time, how they are read and augmented (docs/method.md §1, §6).

Placement (seconds, over ``LabeledItem.duration``, the same for both modalities so that clip i of
the audio and clip i of the video of an item cover the same span, as late fusion needs):

* test: ``k`` windows uniformly spaced from the start to the end of the item
  (starts ``i * (D - W) / (k - 1)``; one clip: the centre);
* train: one window at a uniformly random start per clip, drawn from a generator seeded by
  (seed, item key, clip index), so features do not depend on batch order or workers.

Short items (paper: ESC-50 clips and game sound effects shorter than the 4 s window): the
item is **looped** to fill the window - the waveform is repeated end to start (frames likewise,
by index modulo the frame count). A loop keeps the clip's own sound statistics over the whole
window, whereas zero padding would make the mean-pooled feature of a 0.3 s clip mostly the
feature of silence. A short item's test clips all start at 0 (identical clips); its random
training clips start at a random point of the loop (a circular shift).

Views (no augmentation at test time): video frames -> the centred square, resized to
``size`` (antialiased bilinear), ImageNet normalisation, (3, T, S, S); audio -> log-mel with the
pretraining recipe, (1, 80, frames). Training views apply :class:`~xkd.evaluation.protocol.LinearAugment`.
"""
from __future__ import annotations

import io
import zlib

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from xkd.config import ViewsConfig
from xkd.data import format as fmt
from xkd.data.logmel import LogMel
from xkd.data.torch_views import crop_resize, finish_view
from xkd.data.video_decode import decode_frames
from xkd.data.view_params import ColorJitter, centre_box, color_jitter, random_resized_box
from xkd.evaluation.datasets import DatasetError, LabeledItem
from xkd.evaluation.errors import EvalInputError
from xkd.evaluation.protocol import ClipSpec, LinearAugment



def clip_rng(seed: int, key: str, clip: int, epoch: int = 0) -> np.random.Generator:
    """Independent, reproducible stream per (seed, item key, clip index, epoch)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(key.encode("utf-8")), clip, epoch]))


def uniform_starts(duration: float, window: float, k: int) -> np.ndarray:
    """Starts (seconds) of ``k`` uniformly spaced windows; all 0 when the item is shorter than the window."""
    room = max(0.0, duration - window)
    if k == 1:
        return np.array([room / 2])
    return np.linspace(0.0, room, k)


def random_start(rng: np.random.Generator, duration: float, window: float) -> float:
    """A uniformly random start; inside the loop of an item shorter than the window."""
    room = duration - window
    return float(rng.uniform(0.0, room)) if room > 0 else float(rng.uniform(0.0, max(duration, 0.0)))


def looped_indices(start: int, count: int, length: int) -> np.ndarray:
    """Indices [start, start + count) into a sequence of ``length``: clamped to the end when the
    sequence is long enough (rounding), else wrapped around (the loop)."""
    if length <= 0:
        raise ValueError("cannot take a window of an empty sequence")
    if length >= count:
        start = min(max(start, 0), length - count)
        return np.arange(start, start + count)
    return (start + np.arange(count)) % length


def read_waveform(item: LabeledItem, sample_rate: int) -> torch.Tensor:
    """The item's whole mono waveform, float32 (samples,)."""
    data = item.ref.read(fmt.AUDIO_EXT)
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise DatasetError(f"{item.source}: audio is {rate} Hz, the encoder expects {sample_rate} Hz "
                           "(make the shards with --audio-rate matching views.audio_sample_rate)")
    wave = torch.from_numpy(samples.mean(axis=1))
    if wave.numel() == 0:
        raise DatasetError(f"{item.source}: empty audio")
    return wave


def audio_windows(item: LabeledItem, starts: np.ndarray, spec: ClipSpec, sample_rate: int) -> list[torch.Tensor]:
    """Raw waveform windows (W * rate,) at ``starts`` seconds, looped when the item is short."""
    wave = read_waveform(item, sample_rate)
    count = int(round(spec.seconds * sample_rate))
    return [wave[torch.from_numpy(looped_indices(int(round(s * sample_rate)), count, wave.numel()))] for s in starts]


def video_windows(item: LabeledItem, starts: np.ndarray, spec: ClipSpec) -> list[torch.Tensor]:
    """Raw uint8 frame windows (T, 3, H, W) at ``starts`` seconds; frames are decoded once per item
    (only the span the windows need), looped when the item is short."""
    if not item.has_video:
        raise DatasetError(f"{item.source}: an audio-only sample has no video to evaluate")
    if item.fps != spec.fps:
        raise DatasetError(f"{item.source}: shards at {item.fps} fps, the protocol needs {spec.fps} fps "
                           "(make the shards with --fps matching)")
    n = item.num_frames
    indices = [looped_indices(int(round(s * spec.fps)), spec.frames, n) for s in starts]
    if n < spec.frames:
        first, span = 0, n
    else:
        first = int(min(i[0] for i in indices))
        span = int(max(i[-1] for i in indices)) - first + 1
    frames = decode_frames(item.ref.read(fmt.VIDEO_EXT), first, span, spec.fps)
    return [frames[torch.from_numpy(i - first)] for i in indices]


def video_test_view(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Centre square resized to ``size``, normalised: (3, T, S, S)."""
    return finish_view(crop_resize(frames, centre_box(frames.shape[-2], frames.shape[-1]), size))


def video_train_view(frames: torch.Tensor, size: int, rng: np.random.Generator, augment: LinearAugment) -> torch.Tensor:
    """Multi-scale crop, flip, colour jitter / grayscale (docs/method.md §1.3, linear eval): (3, T, S, S)."""
    height, width = frames.shape[-2:]
    box = random_resized_box(rng, height, width, scale=augment.crop_scale)
    flip = bool(rng.random() < augment.flip_probability)
    if augment.color_jitter:
        color = color_jitter(rng, grayscale_probability=augment.grayscale_probability)
    else:
        gray = bool(rng.random() < augment.grayscale_probability)
        color = ColorJitter(1.0, 1.0, 0.0 if gray else 1.0, 0.0)
    return finish_view(crop_resize(frames, box, size), color, flip)


class EvalClips(Dataset):
    """Item i -> (n_clips, ...) processed clips of ``items[i]``: the ``k`` uniform test clips
    (``augment`` None) or ``n_clips`` random augmented training clips."""

    def __init__(self, items: list[LabeledItem], spec: ClipSpec, views: ViewsConfig, n_clips: int,
                 augment: LinearAugment | None = None, seed: int = 0):
        if n_clips < 1:
            raise EvalInputError(f"{n_clips} clips per item (--train-clips / --test-clips): expected at least 1")
        self.items, self.spec, self.views, self.n_clips, self.augment, self.seed = (
            items, spec, views, n_clips, augment, seed)
        self.logmel = LogMel(views) if spec.modality == "audio" else None

    def __len__(self) -> int:
        return len(self.items)

    def starts(self, item: LabeledItem) -> tuple[np.ndarray, list[np.random.Generator | None]]:
        if self.augment is None:
            return uniform_starts(item.duration, self.spec.seconds, self.n_clips), [None] * self.n_clips
        rngs = [clip_rng(self.seed, item.key, c) for c in range(self.n_clips)]
        return np.array([random_start(r, item.duration, self.spec.seconds) for r in rngs]), rngs

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        starts, rngs = self.starts(item)
        try:
            with torch.no_grad():
                if self.spec.modality == "video":
                    raw = video_windows(item, starts, self.spec)
                    clips = [video_test_view(f, self.spec.size) if r is None
                             else video_train_view(f, self.spec.size, r, self.augment) for f, r in zip(raw, rngs)]
                else:
                    raw = audio_windows(item, starts, self.spec, self.views.audio_sample_rate)
                    gains = [1.0 if r is None else float(r.uniform(1 - self.augment.volume_jitter,
                                                                     1 + self.augment.volume_jitter)) for r in rngs]
                    waves = torch.stack(raw) * torch.tensor(gains, dtype=torch.float32)[:, None]
                    clips = list(self.logmel(waves)[:, None])  # one STFT call for all clips of the item
        except DatasetError:
            raise
        except Exception as error:  # name the item: evaluation sets are curated, a bad item is a bug to fix
            raise DatasetError(f"{item.source} (key {item.key}, shard {item.ref.shard}): cannot read: "
                               f"{type(error).__name__}: {error}") from error
        return torch.stack(clips)
