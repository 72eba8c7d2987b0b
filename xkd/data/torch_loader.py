"""Pure-PyTorch fallback loader: shards -> batches of global and local views (spec section 1).

Applies the same :class:`~xkd.data.view_params.ClipViewParams` as the DALI pipeline, drawn per
(seed, epoch, sample index), so a sample's views do not depend on the worker, the batch or a
resume. Video is decoded with PyAV (frame index = decode order at the shard's constant fps),
audio with soundfile; the view operations live in :mod:`xkd.data.torch_views`.

Batch layout (xkd/models/xkd.py): video_global (B, 3, Tg, S, S), video_local (B, n_v, 3, Tl, s, s),
audio_global (B, 1, F, Tg_a), audio_local (B, n_a, 1, F, Tl_a), plus "key" (list of str) and
"index" (B,) int64 split-level sample indices.
"""
from __future__ import annotations

import io
import logging
from fractions import Fraction

import av
import numpy as np
import soundfile
import torch
from torch.utils.data import DataLoader, Dataset

from xkd.config import ViewsConfig
from xkd.data.format import AUDIO_EXT, HEIGHT, INFO_EXT, NUM_AUDIO_SAMPLES, NUM_FRAMES, VIDEO_EXT, WIDTH
from xkd.data.logmel import LogMel
from xkd.data.sampler import EpochPlan
from xkd.data.shard_index import SampleRef
from xkd.data.torch_views import global_audio_view, global_video_view, local_audio_views, local_video_views
from xkd.data.view_params import ClipViewParams, draw_view_params, sample_seed

log = logging.getLogger(__name__)

VIEW_KEYS = ("video_global", "video_local", "audio_global", "audio_local")


def decode_frames(data: bytes, start: int, count: int, fps: int, seek: bool = True) -> torch.Tensor:
    """Frames [start, start + count) of a video as uint8 (count, 3, H, W).

    Seeks to the keyframe at or before ``start`` (when start > 0), decodes forward, and pads by
    repeating the last frame when the video is shorter (DALI's pad_mode "edge").
    """
    frames, first = [], None
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # the DataLoader workers parallelise; codec threads only oversubscribe
        origin, time_base = stream.start_time or 0, stream.time_base
        if seek and start > 0:
            container.seek(origin + int(Fraction(start, fps) / time_base), stream=stream, backward=True)
        index = -1
        for frame in container.decode(stream):
            index = index + 1 if frame.pts is None else round((frame.pts - origin) * time_base * fps)
            first = index if first is None else first
            if index >= start:
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if len(frames) == count:
                    break
    if seek and first is not None and first > start:  # the seek overshot: decode from the beginning instead
        return decode_frames(data, start, count, fps, seek=False)
    if not frames:
        raise ValueError(f"no frames decoded at or after frame {start}")
    video = torch.stack(frames).permute(0, 3, 1, 2)
    if len(frames) < count:
        video = torch.cat([video, video[-1:].expand(count - len(frames), -1, -1, -1)])
    return video


def read_audio(data: bytes, start: int, count: int, sample_rate: int) -> torch.Tensor:
    """Samples [start, start + count) of a mono FLAC as float32 (count,), zero padded at the end."""
    window = torch.zeros(count)
    with soundfile.SoundFile(io.BytesIO(data)) as audio:
        if audio.samplerate != sample_rate or audio.channels != 1:
            raise ValueError(f"expected {sample_rate} Hz mono audio, got {audio.samplerate} Hz x {audio.channels}")
        if start < audio.frames:
            audio.seek(start)
            samples = audio.read(count, dtype="float32")
            window[:len(samples)] = torch.from_numpy(samples)
    return window


class ClipDataset(Dataset):
    """Item i: the views of split-level sample ``indices[i]`` for (seed, epoch); None if corrupt."""

    def __init__(self, samples: list[SampleRef], views: ViewsConfig, seed: int, epoch: int, indices: np.ndarray,
                 augment: bool = True):
        self.samples, self.views, self.seed, self.epoch, self.augment = samples, views, seed, epoch, augment
        self.indices = np.asarray(indices, dtype=np.int64)
        self.logmel = LogMel(views)

    def __len__(self) -> int:
        return len(self.indices)

    def params(self, index: int) -> ClipViewParams:
        """View parameters of split-level sample ``index`` (uses the sample's .npy info vector)."""
        info = np.load(io.BytesIO(self.samples[index].read(INFO_EXT)))
        return draw_view_params(sample_seed(self.seed, self.epoch, index), self.views, int(info[NUM_FRAMES]),
                                int(info[NUM_AUDIO_SAMPLES]), int(info[HEIGHT]), int(info[WIDTH]), self.augment)

    def __getitem__(self, i: int) -> dict | None:
        index = int(self.indices[i])
        ref = self.samples[index]
        try:
            return self.load(index)
        except Exception as error:  # any unreadable member makes the sample corrupt, never the run
            log.warning("skipping corrupt sample %r of shard %s: %s: %s", ref.key, ref.shard,
                        type(error).__name__, error)
            return None

    def load(self, index: int) -> dict:
        v, ref = self.views, self.samples[index]
        p = self.params(index)
        frames = decode_frames(ref.read(VIDEO_EXT), p.video_start, v.video_global_frames, v.video_fps)
        audio_window = int(round(v.audio_global_seconds * v.audio_sample_rate))
        window = read_audio(ref.read(AUDIO_EXT), p.audio_start, audio_window, v.audio_sample_rate)
        with torch.no_grad():
            return {
                "video_global": global_video_view(frames, p, v),
                "video_local": local_video_views(frames, p, v),
                "audio_global": global_audio_view(window, p, self.logmel),
                "audio_local": local_audio_views(window, p, v, self.logmel),
                "key": ref.key,
                "index": index,
            }


def collate_clips(items: list[dict | None]) -> dict:
    """Drop corrupt (None) items, stack the rest; "corrupt" counts the dropped ones."""
    good = [item for item in items if item is not None]
    batch = {"corrupt": len(items) - len(good)}
    if good:
        batch.update({name: torch.stack([item[name] for item in good]) for name in VIEW_KEYS})
        batch["key"] = [item["key"] for item in good]
        batch["index"] = torch.tensor([item["index"] for item in good], dtype=torch.int64)
    return batch


class TorchClipLoader:
    """Epochs of batches for one rank, resumable at (epoch, samples consumed).

    Iterating yields the rest of the current epoch (the rank's :class:`EpochPlan` order from
    ``position`` on, full batches only), then advances to the next epoch. Batches whose samples
    were all corrupt are skipped; corrupt samples are counted in ``corrupt_samples`` and still
    count as consumed, so a resumed run reads the same samples as an uninterrupted one.
    """

    def __init__(self, samples: list[SampleRef], views: ViewsConfig, batch_size: int, num_workers: int,
                 plan: EpochPlan, seed: int, start_epoch: int = 0, start_position: int = 0,
                 pin_memory: bool | None = None, augment: bool = True):
        if plan.num_samples != len(samples):
            raise ValueError(f"plan covers {plan.num_samples} samples but the split has {len(samples)}")
        self.samples, self.views, self.plan, self.seed = samples, views, plan, seed
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.epoch, self.position = start_epoch, start_position
        self.corrupt_samples = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch(self.batch_size)

    def __len__(self) -> int:
        """Batches the next iteration yields at most (the rest of the current epoch)."""
        return (self.plan.samples_per_rank - self.position) // self.batch_size

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):
        epoch = self.epoch
        dataset = ClipDataset(self.samples, self.views, self.seed, epoch, self.plan.indices(epoch)[self.position:],
                              self.augment)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, drop_last=True,
                            num_workers=self.num_workers, collate_fn=collate_clips, pin_memory=self.pin_memory,
                            persistent_workers=False)
        for batch in loader:
            self.position += self.batch_size
            self.corrupt_samples += batch.pop("corrupt")
            if "video_global" in batch:
                yield batch
        self.epoch, self.position = epoch + 1, 0
