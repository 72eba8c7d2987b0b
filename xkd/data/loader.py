"""One entry point for the training data: the DALI loader, or the PyTorch fallback (``data.loader``)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from xkd.config import XKDConfig
from xkd.data.format import MANIFEST_NAME, VIDEO_EXT
from xkd.data.manifest import ManifestError, read_manifest
from xkd.data.sampler import EpochPlan
from xkd.data.shard_index import SampleRef, index_split

log = logging.getLogger(__name__)


def dali_device(requested: str) -> str:
    """"gpu" when asked for (or "auto") and both torch and DALI see a GPU, else "cpu"."""
    if requested == "cpu":
        return "cpu"
    from nvidia.dali.backend import GetCUDADeviceCount

    has_gpu = torch.cuda.is_available() and GetCUDADeviceCount() > 0
    if requested == "gpu" and not has_gpu:
        raise RuntimeError("data.device=gpu but no CUDA device is visible to DALI")
    return "gpu" if has_gpu else "cpu"


def training_samples(config: XKDConfig, shards: str, world_size: int) -> list[SampleRef]:
    """Every sample of the split, checked for pretraining: audio-visual, enough for a batch per rank.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the shards and what was expected."""
    samples = index_split(shards)
    if not samples:
        raise ValueError(f"{shards}: the shards hold no samples (expected make_shards.py output)")
    audio_only = [ref for ref in samples if not any(ext == VIDEO_EXT for ext, _, _ in ref.members)]
    if audio_only:
        raise ValueError(f"{shards}: {len(audio_only)} of {len(samples)} samples have no video member (first: "
                         f"{audio_only[0].key} in {audio_only[0].shard}); pretraining needs audio-visual clips. "
                         "Audio-only shards (make_shards --no-video-policy audio-only) are for eval/.")
    check_media_rates(config, samples)
    repeats = config.data.samples_per_decode
    per_rank = EpochPlan(len(samples), world_size, 0, config.train.seed).clips_per_rank
    if per_rank * repeats < config.train.micro_batch_size:
        raise ValueError(f"{shards}: {len(samples)} samples give {per_rank} per rank with {world_size} ranks, "
                         f"fewer than a micro-batch holds (train.micro_batch_size {config.train.micro_batch_size}"
                         + (f" / data.samples_per_decode {repeats})" if repeats > 1 else ")"))
    return samples


def check_media_rates(config: XKDConfig, samples: list[SampleRef]) -> None:
    """The frame and sample rates the shards were made with (each shard folder's make_shards
    manifest, where there is one) are those of ``config.views``: a window counts frames at
    ``views.video_fps`` (a slower video would miss frames in every window, a faster one would be
    read slow) and the audio window is ``views.audio_sample_rate`` samples per second."""
    for folder in sorted({Path(ref.shard).parent for ref in samples}):
        try:
            manifest = read_manifest(folder)
        except ManifestError:  # hand-made shards, or a damaged manifest (make_shards --verify says which)
            continue
        for kind, rate, key, option in (("video", "fps", "video_fps", "--fps"),
                                        ("audio", "rate", "audio_sample_rate", "--audio-rate")):
            made, wanted = manifest.get(kind, {}).get(rate), getattr(config.views, key)
            if made is not None and made != wanted:
                raise ValueError(f"{folder / MANIFEST_NAME}: the shards' {kind} {rate} is {made}, views.{key} is "
                                 f"{wanted}: set views.{key}={made}, or make the shards with make_shards.py "
                                 f"{option} {wanted}")


def build_train_loader(config: XKDConfig, shards: str, rank: int, world_size: int, state: dict[str, int],
                       samples: list[SampleRef] | None = None):
    """The loader of this rank, positioned at ``state`` = {"epoch", "position"} (plus the corrupt
    samples known, when the state came from a loader that tracks them); ``samples``:
    :func:`training_samples` when the caller has already indexed and checked the split."""
    samples = samples if samples is not None else training_samples(config, shards, world_size)
    plan = EpochPlan(len(samples), world_size, rank, config.train.seed, config.data.samples_per_decode)
    batch = config.train.micro_batch_size
    common = dict(views=config.views, batch_size=batch, plan=plan, seed=config.train.seed,
                  start_epoch=state["epoch"], start_position=state["position"], corrupt_state=state)
    if config.data.loader == "dali":
        from xkd.data.dali_pipeline import DaliClipLoader

        return DaliClipLoader(samples, device=dali_device(config.data.device),
                              num_threads=max(1, config.data.num_workers),
                              cpu_decoder=config.data.cpu_video_decoder,
                              decode_processes=config.data.decode_processes, **common)
    from xkd.data.torch_loader import TorchClipLoader

    return TorchClipLoader(samples, num_workers=config.data.num_workers, **common)
