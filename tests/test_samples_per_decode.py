"""``data.samples_per_decode`` k (issue 15): one decoded clip gives k training samples.

Both loaders on a real shard: a batch of B samples holds B / k whole clips, a clip's k samples
side by side with views of their own (one shared window), the DALI and PyTorch loaders agree,
an epoch reads every clip of the rank k times, a resume at any batch boundary gives the same
batches, ranks stay disjoint. k = 1 is the paper's loader, unchanged; the batch derivation keeps
whole clips in a micro-batch."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from media import TINY_VIEWS, views_config
from xkd.config import ConfigError, load_config
from xkd.data.audio_window import audio_window_samples
from xkd.data.dali_pipeline import DaliClipLoader, OneSample, build_pipeline, source_columns
from xkd.data.packed_params import pack_view_params
from xkd.data.batch_memory import StoredBatch, store_row
from xkd.data.format import HEIGHT, NUM_AUDIO_SAMPLES, NUM_FRAMES, WIDTH
from xkd.data.sample_check import read_info
from xkd.data.sampler import EpochPlan, clip_view_params
from xkd.data.torch_loader import TorchClipLoader
from xkd.data.batch_finish import SAMPLE_KEYS, BatchFinisher, cut_video_views, loader_keys
from xkd.data.video_crops import plane_keys
from xkd.data.view_params import draw_view_params, sample_seed
from xkd.engine.ds_config import per_rank_batch

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to build the test shard")

VIEWS = views_config(**TINY_VIEWS)
FINISH = BatchFinisher(VIEWS)
TINY = "configs/tiny.yaml"


def dali(split, batch_size, plan, **kwargs):
    return DaliClipLoader(split, VIEWS, batch_size, plan, seed=7, device="cpu", num_threads=2, **kwargs)


def torch_loader(split, batch_size, plan, **kwargs):
    return TorchClipLoader(split, VIEWS, batch_size, num_workers=0, plan=plan, seed=7, **kwargs)


def indices(batch) -> list[int]:
    return [int(i) for i in batch["sample_index" if "sample_index" in batch else "index"]]


def same(a, b) -> bool:
    """Equal view parameters (as the vector DALI gets, plus the window)."""
    return ((a.video_start, a.audio_start) == (b.video_start, b.audio_start)
            and np.array_equal(pack_view_params(a), pack_view_params(b)))


def test_repeat_zero_is_the_sample_of_k_equal_one(split):
    """k only adds samples: repeat 0 keeps the (seed, epoch, sample) stream of k = 1; the others
    draw their own augmentations but keep repeat 0's window."""
    info = read_info(split[2])
    shape = int(info[NUM_FRAMES]), int(info[NUM_AUDIO_SAMPLES]), int(info[HEIGHT]), int(info[WIDTH])
    alone = draw_view_params(sample_seed(7, 3, 2), VIEWS, *shape)
    params = clip_view_params(7, 3, 2, None, 4, VIEWS, info)
    assert len(params) == 4 and same(params[0], alone)
    assert {(p.video_start, p.audio_start) for p in params} == {(alone.video_start, alone.audio_start)}
    assert len({tuple(p.global_box) for p in params}) == 4
    assert len({float(p.audio_gain) for p in params}) == 4
    assert all(same(a, b) for a, b in zip(clip_view_params(7, 3, 2, None, 4, VIEWS, info), params))  # deterministic


@pytest.mark.parametrize("make_loader", [dali, torch_loader], ids=["dali", "torch"])
def test_a_batch_holds_whole_clips_and_an_epoch_each_clip_k_times(split, make_loader):
    plan = EpochPlan(len(split), seed=7, samples_per_decode=2)
    loader = make_loader(split, 4, plan)
    batches = list(loader)
    assert len(batches) == loader.batches_per_epoch == 2 * len(split) // 4
    delivered = [i for batch in batches for i in indices(batch)]
    order = plan.indices(0).tolist()
    assert delivered == [i for i in order for _ in range(2)][:len(delivered)]  # each clip's 2 samples side by side
    for batch in batches:
        # The two samples of each clip share its audio window (one decode) ...
        assert torch.equal(batch["audio_window"][0::2], batch["audio_window"][1::2])
        batch = {**batch, **FINISH(batch)}
        for name in ("video_global", "video_local", "audio_global", "audio_local", "audio_global_gain",
                     "audio_local_box"):
            assert batch[name].shape[0] == 4
            first, second = batch[name][0::2], batch[name][1::2]  # ... and have views of their own
            # Own augmentations; a silent clip's global log-mel is the same whatever the gain.
            assert all(not torch.equal(a, b) for a, b in zip(first, second)
                       if a.numel() == 1 or a.float().std() > 0), name
    assert loader.state()["epoch"] == 1 and loader.state()["position"] == 0


def test_both_loaders_agree_with_k_samples_per_clip(split):
    """The same samples in the same order, the same audio windows and parameters; the log-mels made
    from them agree to 1e-3 as for k = 1 (test_dali_loader)."""
    plan = EpochPlan(len(split), seed=7, samples_per_decode=3)
    from_dali, from_torch = list(dali(split, 6, plan)), list(torch_loader(split, 6, plan))
    assert len(from_dali) == len(from_torch) == 3
    for x, y in zip(from_dali, from_torch):
        assert indices(x) == indices(y)
        assert torch.allclose(x["audio_window"], y["audio_window"], atol=1e-6)
        x, y = FINISH(x), FINISH(y)
        assert torch.allclose(x["audio_global"], y["audio_global"], atol=1e-3)
        assert torch.allclose(x["audio_local"], y["audio_local"], atol=1e-3)


@pytest.mark.parametrize("decoder", ["pyav", "dali"])
def test_each_dali_sample_is_the_one_sample_graph_of_its_parameters(split, decoder):
    """Sample r of a clip, cut from the one decode, equals DALI's k = 1 graph run on that clip with
    repeat r's parameters alone: the k samples are the k = 1 pipeline, decoded once."""
    plan = EpochPlan(len(split), seed=7, samples_per_decode=3)
    batch = next(iter(dali(split, 3, plan, cpu_decoder=decoder)))
    one_sample_loader = dali(split, 1, EpochPlan(len(split), seed=7), cpu_decoder=decoder)
    index = int(plan.indices(0)[0])
    ref = split[index]
    info = read_info(ref)
    for r, params in enumerate(clip_view_params(7, 0, index, None, 3, VIEWS, info)):
        row = {**source_columns(ref, [params], VIEWS, int(info[NUM_FRAMES]), decoder), "sample_index": np.array(index)}
        alone = build_pipeline(OneSample(row, decoder), VIEWS, 1, "cpu", 1, seed=7, prefetch=1)
        alone.build()
        stored = None
        if decoder == "pyav":  # PyAV's window and audio go around the graph, into the batch's memory
            buffer = one_sample_loader.buffers.take(1, VIEWS.video_global_frames, (0, 0), (0, 0),
                                                    audio_window_samples(VIEWS))
            row = store_row(row, buffer.layout, buffer.arrays(), 0)
            stored = StoredBatch(buffer, [row["plane_sizes"]], [row["window"]])
        single = one_sample_loader._to_batch(alone.run(), stored)  # the k = 1 loader's batch of that graph
        for key in SAMPLE_KEYS:
            assert torch.equal(batch[key][r], single[key][0]), key
        for key in (*plane_keys(batch), "video_plane_size"):  # one window per clip: clip 0's
            assert torch.equal(batch[key][0], single[key][0]), key
        for got, alone_views in zip(cut_video_views(batch, VIEWS), cut_video_views(single, VIEWS)):
            assert torch.equal(got[r], alone_views[0])


@pytest.mark.parametrize("make_loader", [dali, torch_loader], ids=["dali", "torch"])
def test_resume_at_a_batch_boundary_gives_the_same_batches(split, make_loader):
    plan = EpochPlan(len(split), seed=7, samples_per_decode=2)
    straight = list(make_loader(split, 2, plan))
    resumed_loader = make_loader(split, 2, plan, start_epoch=0, start_position=6)
    resumed = list(resumed_loader)
    assert len(resumed) == len(straight) - 3
    for x, y in zip(straight[3:], resumed):
        assert indices(x) == indices(y)
        for name in loader_keys(x):
            assert torch.equal(x[name], y[name]), name
    assert resumed_loader.state()["epoch"] == 1 and resumed_loader.state()["position"] == 0


def test_ranks_stay_disjoint(split):
    delivered = []
    for rank in range(2):
        plan = EpochPlan(len(split), world_size=2, rank=rank, seed=3, samples_per_decode=2)
        loader = DaliClipLoader(split, VIEWS, 2, plan, seed=3, device="cpu")
        got = [i for batch in loader for i in indices(batch)]
        assert len(got) == plan.samples_per_rank == 2 * plan.clips_per_rank
        delivered.append(set(got))
    assert not delivered[0] & delivered[1]
    assert delivered[0] | delivered[1] == set(range(len(split)))


def test_batch_derivation_keeps_whole_clips_in_a_micro_batch():
    config = load_config(TINY, ["data.samples_per_decode=4", "train.global_batch_size=24",
                                "train.max_micro_batch_size=6"])
    assert per_rank_batch(config, 1) == (4, 6)  # divisors of 24 up to 6 that hold whole clips: 4
    with pytest.raises(ConfigError, match=r"per-rank batch 6 .* not a multiple of data.samples_per_decode \(4\)"):
        per_rank_batch(config, 4)
    with pytest.raises(ConfigError, match=r"no micro-batch up to train.max_micro_batch_size \(3\) is a multiple"):
        per_rank_batch(load_config(TINY, ["data.samples_per_decode=4", "train.max_micro_batch_size=3"]), 1)
    with pytest.raises(ConfigError, match=r"train.micro_batch_size: expected a multiple of "
                                          r"data.samples_per_decode \(4\)"):
        load_config(TINY, ["data.samples_per_decode=4", "train.micro_batch_size=2"])
    with pytest.raises(ConfigError, match=r"data.samples_per_decode: expected a positive integer"):
        load_config(TINY, ["data.samples_per_decode=0"])
    assert np.array_equal(EpochPlan(10, 2, 1, 0, 3).indices(4), EpochPlan(10, 2, 1, 0).indices(4))
