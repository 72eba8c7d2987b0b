"""The DALI loader (CPU backend) on a real shard: layout, agreement with the PyTorch loader,
the same audio windows and parameters, synchronised windows, rank split, resume and corrupt samples.

Tests that depend on who decodes the video run with both CPU decoders: PyAV (the default, the
PyTorch loader's decoder) and DALI's own (the GPU path's graph, with DALI's CPU decoder)."""
from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
import torch

from media import TINY_VIEWS, views_config, write_shard
from xkd.data.dali_pipeline import DaliClipLoader
from xkd.data.sampler import EpochPlan
from xkd.data.torch_loader import TorchClipLoader
from xkd.data.audio_finish import AUDIO_PARAM_KEYS
from xkd.data.batch_finish import BatchFinisher, cut_video_views, loader_keys
from xkd.data.video_finish import VIDEO_PARAM_KEYS

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to build the test shard")

VIEWS = views_config(**TINY_VIEWS)
FINISH = BatchFinisher(VIEWS)
DECODERS = pytest.mark.parametrize("decoder", ["pyav", "dali"])


def dali(split, batch_size=2, plan=None, **kwargs):
    return DaliClipLoader(split, VIEWS, batch_size, plan or EpochPlan(len(split)), seed=7, device="cpu",
                          num_threads=2, **kwargs)


def torch_loader(split, batch_size=2, plan=None, **kwargs):
    return TorchClipLoader(split, VIEWS, batch_size, num_workers=0, plan=plan or EpochPlan(len(split)), seed=7,
                           **kwargs)


def video(batch):
    """The global video views of a loader batch (cut as the trainer cuts them; 0..255 floats)."""
    return cut_video_views(batch, VIEWS)[0]


def first_batch(loader):
    return next(iter(loader))


def finished(batch):
    """The model's inputs: what the trainer makes of a loader batch."""
    return FINISH(batch)


def test_same_layout_as_torch_loader(split):
    from_dali, from_torch = first_batch(dali(split)), first_batch(torch_loader(split))
    assert loader_keys(from_dali) == loader_keys(from_torch)
    for name in loader_keys(from_dali):
        assert from_dali[name].shape == from_torch[name].shape, name
        assert from_dali[name].dtype == from_torch[name].dtype, name
    assert from_dali["video_luma"].dtype == from_dali["video_chroma"].dtype == torch.uint8
    assert from_dali["video_luma"].shape[:3] == (2, 8, 1) and from_dali["video_chroma"].shape[:3] == (2, 8, 2)
    assert from_dali["video_plane_size"].shape == (2, 2, 2)
    video_global, video_local = cut_video_views(from_dali, VIEWS)
    assert video_global.shape == (2, 3, 8, 32, 32)
    assert video_local.shape == (2, 2, 3, 4, 16, 16)
    assert from_dali["audio_window"].shape == (2, 32000) and from_dali["audio_window"].dtype == torch.float32
    assert from_dali["audio_local_box"].shape == (2, 2, 4)
    model_inputs = finished(from_dali)
    assert model_inputs["audio_global"].shape == (2, 1, 80, 224)
    assert model_inputs["audio_local"].shape == (2, 2, 1, 80, 112)


def test_pyav_decoder_delivers_the_torch_loaders_views(split):
    """With PyAV decoding (the CPU default), the DALI loader's batches equal the PyTorch loader's:
    the same YUV planes, crops, matrices and parameters, byte for byte."""
    plan = EpochPlan(len(split), seed=7)
    for x, y in zip(dali(split, plan=plan), torch_loader(split, plan=plan), strict=True):
        for name in loader_keys(x):
            assert torch.equal(x[name], y[name]), name


@DECODERS
def test_unaugmented_views_agree_with_torch_loader(split, decoder):
    """Same windows, no augmentation: the audio windows are equal (both loaders read them with
    libsndfile, xkd.data.audio_window), so the log-mels made from them on the device agree. Both loaders cut
    the video views with the same torchvision crop. With DALI's decoder the RGB frames are DALI's
    conversion where the PyTorch loader's YUV views are converted on the device: measured ~1 grey
    level on average (mean |diff| 0.010-0.018 in normalised units, bound 0.03) and every frame's mean
    within 0.035, half the 0.069 between neighbouring frames of the brightness ramp, so both loaders
    decoded the very same frames."""
    plan = EpochPlan(len(split))
    a = list(dali(split, plan=plan, augment=False, cpu_decoder=decoder))
    b = list(torch_loader(split, plan=plan, augment=False))
    for x, y in zip(a, b):
        assert torch.equal(x["audio_window"], y["audio_window"])
        x, y = finished(x), finished(y)
        for name in ("audio_global", "audio_local"):
            assert torch.allclose(x[name], y[name], atol=1e-3), (name, (x[name] - y[name]).abs().max())
        for name in ("video_global", "video_local"):
            assert (x[name] - y[name]).abs().mean() < 0.03, name
        per_frame = (x["video_global"].mean(dim=(1, 3, 4)) - y["video_global"].mean(dim=(1, 3, 4))).abs()
        assert per_frame.max() < 0.035


@DECODERS
def test_augmented_video_agrees_with_torch_loader(split, decoder):
    """Augmented: both loaders deliver the same colour, flip and blur parameters, and the video views
    finished with them (one implementation, on the device) agree up to the YUV->RGB conversions, as
    the unaugmented views do (DALI's decoder: measured mean |diff| 0.010-0.022)."""
    plan = EpochPlan(len(split), seed=7)
    for x, y in zip(dali(split, plan=plan, cpu_decoder=decoder), torch_loader(split, plan=plan)):
        for name in VIDEO_PARAM_KEYS:
            if name != "video_to_rgb" or decoder == "pyav":  # DALI's decoder delivers RGB
                assert torch.equal(x[name], y[name]), name
        x, y = finished(x), finished(y)
        for name in ("video_global", "video_local"):
            assert (x[name] - y[name]).abs().mean() < 0.03, (name, (x[name] - y[name]).abs().mean())


def test_augmented_audio_agrees_with_torch_loader(split):
    """Augmented: both loaders deliver the same window (drawn in Python) and the same gains, local
    offsets and crop boxes; the log-mels and crops made from them on the device agree."""
    x, y = first_batch(dali(split)), first_batch(torch_loader(split))
    for name in AUDIO_PARAM_KEYS:
        assert torch.equal(x[name], y[name]), name
    x, y = finished(x), finished(y)
    assert torch.allclose(x["audio_global"], y["audio_global"], atol=1e-3)
    assert torch.allclose(x["audio_local"], y["audio_local"], atol=1e-3)


@DECODERS
def test_short_clip_padded_with_its_last_frame_like_torch_loader(split, decoder):
    """Paper geometry (32 frames) on a clip of fewer frames: the clamped frame indices repeat its
    last frame, as the PyTorch loader pads."""
    short = [ref for ref in split if ref.key == "single_face"]
    views = views_config()
    x = next(iter(DaliClipLoader(short, views, 1, EpochPlan(1), seed=0, device="cpu", augment=False,
                                 cpu_decoder=decoder)))
    y = next(iter(TorchClipLoader(short, views, 1, num_workers=0, plan=EpochPlan(1), seed=0, augment=False)))
    assert torch.equal(video(x)[:, :, -1], video(x)[:, :, -2])
    assert (finished(x)["video_global"] - finished(y)["video_global"]).abs().mean() < 0.05


def test_two_ranks_disjoint_and_complete(split):
    """What DALI delivered (each batch carries its samples' indices), not what the plan promised."""
    delivered = []
    for rank in range(2):
        plan = EpochPlan(len(split), world_size=2, rank=rank, seed=3)
        loader = DaliClipLoader(split, VIEWS, 1, plan, seed=3, device="cpu")
        indices = [int(i) for batch in loader for i in batch["sample_index"]]
        assert indices == plan.indices(0).tolist()[:len(indices)] and len(indices) == plan.samples_per_rank
        delivered.append([split[i].key for i in indices])
    assert not set(delivered[0]) & set(delivered[1])
    assert sorted(delivered[0] + delivered[1]) == sorted(ref.key for ref in split)


@DECODERS
def test_resume_mid_epoch_gives_identical_batches(split, decoder):
    straight = [video(b) for b in dali(split, batch_size=1, cpu_decoder=decoder)]
    resumed_loader = dali(split, batch_size=1, start_epoch=0, start_position=3, cpu_decoder=decoder)
    resumed = [video(b) for b in resumed_loader]
    assert len(resumed) == len(straight) - 3
    for x, y in zip(straight[3:], resumed):
        assert torch.equal(x, y)
    assert resumed_loader.state() == {"epoch": 1, "position": 0, "corrupt_samples": [], "corrupt_pending": []}


def test_epochs_advance_and_change_views(split):
    loader = dali(split, batch_size=2)
    first = torch.cat([finished(b)["audio_global"] for b in loader])
    assert loader.state()["epoch"] == 1 and loader.state()["position"] == 0
    second = torch.cat([finished(b)["audio_global"] for b in loader])
    assert first.shape == second.shape and not torch.equal(first, second)


@DECODERS
def test_corrupt_sample_replaced_and_counted(clips, tmp_path, caplog, decoder):
    """An unopenable webm: PyAV's decode in the source fails on it, or it fails DALI's batch and the
    loader finds it in Python; either way a stand-in takes its place (batches stay full, each other
    sample still comes once as itself), and it is logged once."""
    broken = dict(clips)
    broken["ramp"] = {**clips["ramp"], "webm": b"\x1aE\xdf\xa3 this is not a webm" * 50}
    split = write_shard(tmp_path / "broken-000000.tar", broken)
    loader = DaliClipLoader(split, VIEWS, 2, EpochPlan(len(split)), seed=1, device="cpu", cpu_decoder=decoder)
    with caplog.at_level(logging.WARNING, logger="xkd.data.sample_check"):
        batches = list(loader)
        batches += list(loader)  # the next epoch meets it again: not logged again
    assert [video(b).shape[0] for b in batches] == [2] * (2 * (len(split) // 2))
    assert all(torch.isfinite(video(b)).all() for b in batches)
    ramp = next(i for i, ref in enumerate(split) if ref.key == "ramp")
    delivered = [int(i) for b in batches for i in b["sample_index"]]
    assert ramp not in delivered  # a stand-in took its place
    per_epoch = len(delivered) // 2
    for epoch in (delivered[:per_epoch], delivered[per_epoch:]):  # every other sample, each at least once as itself
        assert len(split) % 2 == 0 and set(epoch) == set(range(len(split))) - {ramp}
    assert loader.corrupt_samples == 1
    assert caplog.text.count("skipping corrupt sample 'ramp'") == 1 and "broken-000000.tar" in caplog.text


def test_pretraining_refuses_audio_only_shards(sound_shards):
    from xkd.config import load_config
    from xkd.data.loader import build_train_loader

    config = load_config("configs/tiny.yaml")
    with pytest.raises(ValueError, match="have no video member"):
        build_train_loader(config, str(sound_shards), 0, 1, {"epoch": 0, "position": 0})


def test_pretraining_refuses_shards_made_at_other_rates(sample_shards, tmp_path):
    """A window counts frames at views.video_fps and samples at views.audio_sample_rate: shards
    made at other rates are refused up front, naming their manifest, instead of every sample
    failing (or a faster video being read slow)."""
    from xkd.config import load_config
    from xkd.data.loader import training_samples

    config = load_config("configs/tiny.yaml")
    assert len(training_samples(config, str(sample_shards), 1)) == 8
    manifest = sample_shards / "manifest.json"
    with pytest.raises(ValueError, match=re.escape(
            f"{manifest}: the shards' video fps is 8, views.video_fps is 16: set views.video_fps=8, or make the "
            "shards with make_shards.py --fps 16")):
        training_samples(load_config("configs/tiny.yaml", ["views.video_fps=16"]), str(sample_shards), 1)
    shards = tmp_path / "shards"
    shutil.copytree(sample_shards, shards)
    made = json.loads((shards / "manifest.json").read_text())
    made["audio"]["rate"] = 22050
    (shards / "manifest.json").write_text(json.dumps(made))
    with pytest.raises(ValueError, match=re.escape("the shards' audio rate is 22050, views.audio_sample_rate is "
                                                   "16000: set views.audio_sample_rate=22050, or make the shards "
                                                   "with make_shards.py --audio-rate 16000")):
        training_samples(config, str(shards), 1)


@DECODERS
def test_read_ahead_reads_the_next_batch_and_changes_nothing(split, decoder):
    """The source reads batch k+1 in background threads while batch k is used; the columns equal a
    source that reads everything on the calling thread."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    import numpy as np

    from xkd.data.dali_pipeline import ShardSource

    plan = EpochPlan(len(split))
    plain = ShardSource(split, VIEWS, plan, 2, seed=7, decoder=decoder)
    with ThreadPoolExecutor(2) as reader:
        ahead = ShardSource(split, VIEWS, plan, 2, seed=7, reader=reader, decoder=decoder)
        for iteration in range(len(split) // 2):
            info = SimpleNamespace(iteration=iteration)
            expected, got = plain(info), ahead(info)
            for column_expected, column_got in zip(expected, got):
                assert all(np.array_equal(a, b) for a, b in zip(column_expected, column_got))
            upcoming = {int(i) for i in plan.indices(0)[(iteration + 1) * 2:(iteration + 2) * 2]}
            assert {index for index, _ in ahead.ahead} == upcoming  # the next batch is being read
    assert not ahead.ahead  # the last batch has no successor: every read-ahead row was used
    dali_batches = [b["audio_window"] for b in dali(split)]  # the loader (with its reader) matches too
    assert len(dali_batches) == len(split) // 2


def test_batch_made_ahead_is_not_consumed(split):
    """The loader makes batch k+1 while batch k is used; the position (what a checkpoint saves) counts
    batch k only, and an iterator left mid-epoch is continued by the next one without a gap or a
    repeat, as is a loader resumed from the saved state."""
    straight = [video(b) for b in dali(split, batch_size=1)]
    loader = dali(split, batch_size=1)
    iterator = iter(loader)
    first = next(iterator)
    assert loader.ahead[0] == 1  # batch 1 made, batch 0 consumed
    assert loader.state()["position"] == 1
    second = next(iterator)
    saved = loader.state()
    assert saved["position"] == 2
    del iterator  # the trainer stops here (checkpoint, end of run); a new iterator continues
    rest = [video(b) for b in loader]
    assert len(rest) == len(straight) - 2
    for x, y in zip(straight, [video(first), video(second), *rest]):
        assert torch.equal(x, y)
    resumed = [video(b) for b in dali(split, batch_size=1, start_epoch=saved["epoch"],
                                               start_position=saved["position"])]
    assert all(torch.equal(x, y) for x, y in zip(straight[2:], resumed)) and len(resumed) == len(rest)


def test_close_stops_every_loader_thread_and_keeps_the_position(split):
    """close() (the trainer's end of run) waits for the batch made ahead and stops the read-ahead,
    crop and batch threads; the saved position is unchanged and a loader built from it goes on."""
    import threading

    def loader_threads():
        return {t for t in threading.enumerate() if t.name.startswith("xkd-")}

    reference = dali(split, batch_size=1)
    straight = [video(b) for b in reference]
    reference.close()
    before = loader_threads()  # other tests' loaders, never closed
    loader = dali(split, batch_size=1)
    iterator = iter(loader)
    next(iterator)
    assert loader.ahead is not None and loader_threads() - before  # batch 1 being made by the threads
    saved = loader.state()
    loader.close()
    assert loader_threads() - before == set()
    assert loader.state() == saved
    with pytest.raises(RuntimeError, match="close"):
        next(iter(loader))
    resumed = [video(b) for b in dali(split, batch_size=1, start_epoch=saved["epoch"],
                                               start_position=saved["position"])]
    assert len(resumed) == len(straight) - 1
    assert all(torch.equal(x, y) for x, y in zip(straight[1:], resumed))


def test_batch_made_ahead_is_remade_when_more_corrupt_samples_are_known(split):
    """A sync between two batches that makes a sample of the batch made ahead known as corrupt: that
    batch is made again without it, as a loader resumed from the state at that point makes it."""
    straight = [b for b in dali(split, batch_size=1)]
    loader = dali(split, batch_size=1)
    iterator = iter(loader)
    next(iterator), next(iterator)  # batch 2 is being made
    corrupt = int(straight[2]["sample_index"][0])
    loader.corrupt.known.add(corrupt)  # what a sync does when another rank found it
    loader.corrupt.changed = True
    rest = list(iterator)
    resumed = list(dali(split, batch_size=1, start_position=2, corrupt_state={"corrupt_samples": [corrupt]}))
    assert corrupt not in {int(i) for b in rest for i in b["sample_index"]}
    assert len(rest) == len(resumed) == len(straight) - 2
    for got, expected in zip(rest, resumed):
        assert torch.equal(video(got), video(expected))
        assert torch.equal(got["sample_index"], expected["sample_index"])


def test_an_error_making_the_next_batch_skips_nothing(split):
    """The crops of batch 2 fail while batch 1 is used: batch 1 is handed out, the error comes when
    batch 2 is asked for, and a new iterator starts again at batch 2 (no batch lost, none twice)."""
    straight = [video(b) for b in dali(split, batch_size=1)]
    loader = dali(split, batch_size=1)
    to_batch, calls = loader._to_batch, []

    def failing_once(outputs, windows):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("a crop thread failed")
        return to_batch(outputs, windows)

    loader._to_batch = failing_once
    iterator = iter(loader)
    got = [video(next(iterator)), video(next(iterator))]
    with pytest.raises(OSError, match="a crop thread failed"):
        next(iterator)
    assert loader.state()["position"] == 2
    got += [video(b) for b in loader]
    assert len(got) == len(straight) and all(torch.equal(x, y) for x, y in zip(got, straight))
