"""benchmarks/loader_speed.py (issue 15): its JSON, and the stage measurements still fit the loaders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

import dali_stages
import torch_stages
from xkd.config import config_from_dict
from xkd.data.dali_pipeline import DaliClipLoader
from xkd.data.sampler import EpochPlan
from xkd.data.shard_index import index_split
from xkd.data.torch_loader import ClipDataset


@pytest.mark.slow
def test_json_has_cost_and_rate_per_loader(sample_shards, tmp_path):
    out = tmp_path / "loader.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "loader_speed.py"), "--shards", str(sample_shards),
                    "--workers", "1", "--epochs", "1", "--batch-size", "4", "--samples-per-decode", "2",
                    "--step-ms", "5",
                    "--json", str(out)],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    results = json.loads(out.read_text())
    for loader in ("dali_cpu", "torch"):
        assert results[loader]["cpu_ms_per_sample"] > 0 and results[loader]["samples_per_second"] > 0
        assert results[loader]["step_ms"] == 5 and 0 <= results[loader]["data_wait_fraction"] < 1
        wait = results[loader]["wait_ms_per_batch"]  # the fraction is the wait's share of wait + step
        assert results[loader]["data_wait_fraction"] == pytest.approx(wait / (wait + 5), rel=1e-9)
    # The DALI loader's rows are read in worker processes (not this process's children): their CPU
    # is counted, and is most of it (they decode).
    dali = results["dali_cpu"]
    assert 0.5 * dali["cpu_ms_per_sample"] < dali["worker_cpu_ms_per_sample"] < dali["cpu_ms_per_sample"]
    assert "worker_cpu_ms_per_sample" not in results["torch"]
    assert results["keyframe_interval"] >= 1 and results["samples_per_decode"] == 2
    assert results["device_finish"]["cpu_ms_per_sample"] > 0


@pytest.mark.slow
def test_torch_stages_reproduce_the_loader_and_cover_every_stage(sample_shards):
    views = config_from_dict({}).views
    samples = index_split(sample_shards)
    dataset = ClipDataset(samples, views, seed=0, epoch=0, indices=EpochPlan(len(samples), seed=0).indices(0))
    costs = torch_stages.stage_costs(dataset, batch_size=4, epochs=1)  # raises if the views differ from load()
    assert set(costs) == set(torch_stages.STAGES)
    assert set(torch_stages.floor_ms(dataset)) == {"video", "audio", "total"}


def test_dali_loader_clock_splits_the_collation(sample_shards):
    """The DALI loader's own work is timed on its thread: the batch's planes (_media) are part of _to_batch."""
    views = config_from_dict({}).views
    samples = index_split(sample_shards)
    plan = EpochPlan(len(samples), seed=0)
    total, collation, planes = dali_stages.loader_cpu_ms(
        lambda: DaliClipLoader(samples, views, 4, plan, seed=0, device="cpu", num_threads=1, decode_processes=False),
        epochs=1)
    assert 0 < planes < collation < total


def test_dali_floor_decodes_whole_videos_while_the_loader_cuts(sample_shards):
    """The floor divides a whole clip's decode by the clip's frames, so its source must not cut the
    video to the window (xkd.data.video_cut) as the production source does."""
    from xkd.data.dali_pipeline import ShardSource
    from xkd.data.format import VIDEO_EXT

    views = config_from_dict({}).views
    samples = index_split(sample_shards)
    plan = EpochPlan(len(samples), seed=0)

    def first_batch():
        source = ShardSource(samples, views, plan, batch_size=len(samples), seed=0, decoder="dali")
        columns = dict(zip(source.columns, source(type("Info", (), {"iteration": 0})())))
        return [(samples[index].read(VIDEO_EXT), bytes(video)) for (index, _), video in
                zip(source.chosen[0], columns["video"])]

    assert any(whole != given for whole, given in first_batch())  # some window starts past a keyframe
    with dali_stages.whole_videos():
        assert all(whole == given for whole, given in first_batch())
    assert any(whole != given for whole, given in first_batch())  # and the cut is back afterwards


def test_gpu_flag_without_a_gpu_says_so(tmp_path):
    """``--gpu`` (DALI's NVDEC path) on a machine without a CUDA GPU: exit 2 with the reason, before
    any shard is read."""
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible: the flag would run")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loader_speed.py"), "--gpu",
                           "--shards", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--gpu needs a CUDA GPU" in done.stderr
