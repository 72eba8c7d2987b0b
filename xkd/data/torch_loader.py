"""Pure-PyTorch fallback loader: shards -> batches of global and local views (docs/method.md §1).

Delivers the same :class:`~xkd.data.view_params.ClipViewParams` as the DALI pipeline, drawn per
(seed, epoch, sample index), so a sample's views do not depend on the worker, the batch or a
resume. Video is decoded with PyAV into its YUV planes (:func:`xkd.data.video_decode.decode_window`),
audio with libsndfile; the views are cut and finished by the trainer on its device
(:mod:`xkd.data.batch_finish`).

Batch layout (``xkd.data.batch_finish.loader_keys``): per clip, its decoded window as uint8
video_luma (clips, Tg, 1, H, W) and video_chroma (clips, Tg, 2, h, w), padded to the batch's
largest frame, with video_plane_size (clips, 2, 2) the true sizes; per sample, its crop boxes and
offsets, its video_to_rgb matrix (B, 3, 4), the float32 audio_window (B, N) of the 4 s window and
each view's remaining parameters (:class:`~xkd.data.batch_finish.BatchFinisher` crops the views
and turns them into the model's inputs on the training device), plus "key" (list of str) and
"index" (B,) int64 split-level sample indices. With ``data.samples_per_decode`` k, a batch holds
B / k clips, each decoded once and giving k consecutive samples
(:func:`~xkd.data.sampler.clip_view_params`).

A corrupt sample is replaced in its batch by the first readable stand-in of its slot
(:func:`~xkd.data.sampler.slot_candidates`, the same rule as the DALI loader), so batches stay
full; the worker that met it reports it with the item and the loader logs and counts it
(:class:`~xkd.data.sample_check.CorruptSamples`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xkd.config import ViewsConfig
from xkd.data.audio_finish import audio_param_tensors
from xkd.data.audio_window import read_audio_window
from xkd.data.batch_finish import SAMPLE_KEYS
from xkd.data.format import AUDIO_EXT, NUM_FRAMES, VIDEO_EXT
from xkd.data.sample_check import CorruptSamples, NoReadableSample, describe, read_info
from xkd.data.sampler import EpochPlan, clip_view_params, slot_candidates
from xkd.data.shard_index import SampleRef
from xkd.data.video_crops import crop_param_tensors, pad_windows
from xkd.data.video_decode import DecodedWindow, decode_window
from xkd.data.video_finish import video_param_tensors
from xkd.data.view_params import ClipViewParams


def read_audio(data: bytes, start: int, count: int, sample_rate: int) -> torch.Tensor:
    """Samples [start, start + count) of a mono FLAC as float32 (count,), zero padded at the end
    (:func:`xkd.data.audio_window.read_audio_window`, shared with the DALI source)."""
    return torch.from_numpy(read_audio_window(data, start, count, sample_rate))


class ClipDataset(Dataset):
    """Item i: the ``repeats`` samples (``data.samples_per_decode``) of the clip slot at position
    ``start + i`` of ``indices`` (a rank's epoch order of clips) for (seed, epoch), from one decode:
    its own clip, or the first readable stand-in when that is corrupt. ``batch_size`` counts clips.

    ``known``: samples known to be corrupt, skipped unread. An item is {"window": the clip's
    :class:`~xkd.data.video_decode.DecodedWindow` (frames still in the decoder's buffers: collated in
    the worker that decoded them, copied once, into the batch), "samples": each sample's parameters
    and audio window, "found": the (index, reason) of the corrupt samples it tried, for the loader to
    log and count}.
    """

    def __init__(self, samples: list[SampleRef], views: ViewsConfig, seed: int, epoch: int, indices: np.ndarray,
                 augment: bool = True, start: int = 0, batch_size: int = 1, known: frozenset[int] = frozenset(),
                 repeats: int = 1):
        self.samples, self.views, self.seed, self.epoch, self.augment = samples, views, seed, epoch, augment
        self.indices = np.asarray(indices, dtype=np.int64)
        self.start, self.batch_size, self.known, self.repeats = start, batch_size, known, repeats

    def __len__(self) -> int:
        return len(self.indices) - self.start

    def params(self, index: int, stand_in_for: int | None = None) -> list[ClipViewParams]:
        """View parameters of the samples of split-level clip ``index`` (uses the sample's .npy info
        vector), as a stand-in for the slot at ``stand_in_for`` if given."""
        return self._params(read_info(self.samples[index]), index, stand_in_for)

    def _params(self, info: np.ndarray, index: int, stand_in_for: int | None) -> list[ClipViewParams]:
        return clip_view_params(self.seed, self.epoch, index, stand_in_for, self.repeats, self.views, info,
                                self.augment)

    def __getitem__(self, i: int) -> dict:
        position, found = self.start + i, []
        for index, stand_in_for in slot_candidates(self.indices, position, self.batch_size):
            if index in self.known:
                continue
            try:
                window, samples = self.load(index, stand_in_for)
            except Exception as error:  # any unreadable member makes the sample corrupt, never the run
                found.append((index, describe(error)))
                continue
            return {"window": window, "samples": samples, "found": found}
        raise NoReadableSample(f"epoch {self.epoch}: no sample of this rank's {len(self.indices)} is readable "
                               f"(slot {position}; last: {found[-1][1] if found else 'all known corrupt'})")

    def load(self, index: int, stand_in_for: int | None = None) -> tuple[DecodedWindow, list[dict]]:
        """One decode of the window the clip's samples share (its YUV frames), and each sample's
        parameters and audio window; the views are cut from its planes on the training device."""
        v, ref = self.views, self.samples[index]
        info = read_info(ref)
        params = self._params(info, index, stand_in_for)
        first = params[0]
        window = decode_window(ref.read(VIDEO_EXT), first.video_start, v.video_global_frames, v.video_fps,
                               stored_frames=int(info[NUM_FRAMES]))
        audio_window = int(round(v.audio_global_seconds * v.audio_sample_rate))
        audio = read_audio(ref.read(AUDIO_EXT), first.audio_start, audio_window, v.audio_sample_rate)
        return window, [{
            "audio_window": audio,  # the log-mels are computed on the training device
            **crop_param_tensors(p),  # crops, RGB, colour, flip, blur: on the training device
            **video_param_tensors(p, window.to_rgb),
            **audio_param_tensors(p),  # gains, local offsets, spectrogram crops: likewise
            "key": ref.key,
            "index": index,
        } for p in params]


def collate_clips(items: list[dict]) -> dict:
    """The clips' frames copied into one padded tensor per plane group (``pad_windows``), and every
    sample's parameters stacked (a clip's samples next to each other); "found" lists the corrupt
    samples the batch's slots tried."""
    samples = [sample for item in items for sample in item["samples"]]
    batch = pad_windows([item["window"] for item in items])
    batch.update({name: torch.stack([sample[name] for sample in samples]) for name in SAMPLE_KEYS})
    batch["key"] = [sample["key"] for sample in samples]
    batch["index"] = torch.tensor([sample["index"] for sample in samples], dtype=torch.int64)
    batch["found"] = [found for item in items for found in item["found"]]
    return batch


def leave_job_signals_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker leaves SLURM's signals (requeue, preemption, time-limit warnings: sent to
    every process of the job step) to the training process, which checkpoints on them. Called, not
    only imported: a module imported before the fork would not run again in the worker."""
    from xkd.data.row_worker_signals import ignore_job_signals  # workers only: it ignores them on import

    ignore_job_signals()


class TorchClipLoader:
    """Epochs of batches for one rank, resumable at (epoch, samples consumed).

    Iterating yields the rest of the current epoch (the rank's :class:`EpochPlan` order from
    ``position`` on, full batches only), then advances to the next epoch. A corrupt sample is
    replaced by a stand-in, logged once and counted (``corrupt_samples``); ``state()`` carries
    the known corrupt samples, so a loader built from it yields the batches an uninterrupted one
    would have.
    """

    def __init__(self, samples: list[SampleRef], views: ViewsConfig, batch_size: int, num_workers: int,
                 plan: EpochPlan, seed: int, start_epoch: int = 0, start_position: int = 0,
                 pin_memory: bool | None = None, augment: bool = True, corrupt_state: dict | None = None):
        if plan.num_samples != len(samples):
            raise ValueError(f"plan covers {plan.num_samples} samples but the split has {len(samples)}")
        self.samples, self.views, self.plan, self.seed = samples, views, plan, seed
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.epoch, self.position = start_epoch, start_position
        self.corrupt = CorruptSamples(samples, corrupt_state)

    @property
    def corrupt_samples(self) -> int:
        return self.corrupt.count

    def sync_corrupt_samples(self) -> int:
        """Share the corrupt samples found with every rank (collective); returns the run's count."""
        return self.corrupt.sync()

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch(self.batch_size)

    def __len__(self) -> int:
        """Batches the next iteration yields at most (the rest of the current epoch)."""
        return (self.plan.samples_per_rank - self.position) // self.batch_size

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, **self.corrupt.state()}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.corrupt = CorruptSamples(self.samples, state)

    def close(self) -> None:
        """Nothing to stop: each epoch's workers end with its iterator (like ``DaliClipLoader.close``)."""

    def _loader(self, epoch: int) -> DataLoader:
        """Batches of ``epoch`` from the current position, planned with the corrupt samples known now."""
        self.corrupt.changed = False
        repeats, clips = self.plan.samples_per_decode, self.plan.clips_per_batch(self.batch_size)
        dataset = ClipDataset(self.samples, self.views, self.seed, epoch, self.plan.indices(epoch), self.augment,
                              start=self.position // repeats, batch_size=clips, known=frozenset(self.corrupt.known),
                              repeats=repeats)
        return DataLoader(dataset, batch_size=clips, shuffle=False, drop_last=True,
                          num_workers=self.num_workers, collate_fn=collate_clips, pin_memory=self.pin_memory,
                          persistent_workers=False, worker_init_fn=leave_job_signals_to_the_trainer)

    def __iter__(self):
        epoch = self.epoch
        while len(self):
            for batch in self._loader(epoch):
                self.position += self.batch_size
                self.corrupt.note(batch.pop("found"))
                yield batch
                if self.corrupt.changed:  # a sync made more samples known: the workers' prefetch is stale
                    break
        self.epoch, self.position = epoch + 1, 0
