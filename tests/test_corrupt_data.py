"""Training survives bad data: each kind of damage, on both loaders and through real 2-rank runs.

The damaged splits are copies of the real sample shards with bytes damaged in Python:

    webm        the middle 60 % of a webm overwritten (it still opens, but ends after 6 of its 46
                frames: DALI fails with out-of-bounds frame indices)
    npy         the info vector's header overwritten (np.load fails)
    frames      a webm cut to its first 4 frames, the info vector still saying 80
    tar_idx     a shard cut in the middle of its 3rd sample, its DALI index kept (2 samples lost)
    tar_noidx   a shard cut in the middle of its 4th sample, without an index (1 sample lost)

Each damage leaves fewer frames than any window needs (8 frames here, 16 in configs/tiny.yaml),
so both loaders find every damaged sample the first time they draw it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from media import TINY_VIEWS, ffmpeg, views_config, write_shard, free_port
from xkd.data.batch_finish import cut_video_views
from xkd.data.dali_pipeline import DaliClipLoader
from xkd.data.sample_check import CorruptSamples, corruption_reason
from xkd.data.sampler import EpochPlan, slot_candidates
from xkd.data.shard_index import index_split
from xkd.data.torch_loader import TorchClipLoader

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to cut a test video")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VIEWS = views_config(**TINY_VIEWS)
KINDS = ("webm", "npy", "frames", "flac", "tar_idx", "tar_noidx")
# Sample-shard clips of a damaged shard (slot 0: 46 frames, 1: 80, 2: 240, 3: 80) and of a good one.
DAMAGED_SOURCES = ("speech_jwpIntro", "graphics_default", "graphics_world", "scene_bikes")
GOOD_SOURCES = ("music_dancer", "face_single_face", "music_pianist", "face_WolfgangLanger")


@pytest.fixture(scope="module")
def sources(sample_shards) -> dict[str, dict[str, bytes]]:
    """Every member of every sample of the real sample shards, by key."""
    return {ref.key: {ext: ref.read(ext) for ext, _, _ in ref.members} for ref in index_split(str(sample_shards))}


def pick(sources: dict, names: tuple[str, ...], prefix: str) -> dict[str, dict[str, bytes]]:
    return {f"{prefix}_{key}": dict(sources[key]) for name in names for key in sources if key.startswith(name)}


def overwrite_middle(data: bytes) -> bytes:
    begin, end = int(len(data) * 0.2), int(len(data) * 0.8)
    return data[:begin] + (b"\xde\xad\xbe\xef" * len(data))[: end - begin] + data[end:]


def first_frames(data: bytes, count: int, work: Path) -> bytes:
    (work / "full.webm").write_bytes(data)
    ffmpeg("-i", str(work / "full.webm"), "-frames:v", str(count), "-c", "copy", str(work / "cut.webm"))
    return (work / "cut.webm").read_bytes()


def cut_in(shard: Path, key: str) -> None:
    """Truncate a shard in the middle of ``key``'s webm."""
    ref = next(ref for ref in index_split(str(shard)) if ref.key == key)
    offset, size = ref.member("webm")
    shard.write_bytes(shard.read_bytes()[: offset + size // 2])


def write_damaged_shard(path: Path, damages: tuple[str, ...], sources: dict) -> list[str]:
    """A shard of four real samples with ``damages`` applied; returns the keys of damaged samples."""
    good = not damages or damages == ("good",)
    samples = pick(sources, GOOD_SOURCES if good else DAMAGED_SOURCES, path.stem)
    keys, damaged = list(samples), []
    if "webm" in damages:
        samples[keys[0]]["webm"] = overwrite_middle(samples[keys[0]]["webm"])
        damaged.append(keys[0])
    if "npy" in damages:
        npy = samples[keys[1]]["npy"]
        samples[keys[1]]["npy"] = npy[:8] + b"\xff" * 60 + npy[68:]
        damaged.append(keys[1])
    if "frames" in damages:
        samples[keys[2]]["webm"] = first_frames(samples[keys[2]]["webm"], 4, path.parent)
        damaged.append(keys[2])
    if "flac" in damages:  # not a FLAC at all: both loaders read the audio window in Python (libsndfile)
        samples[keys[3]]["flac"] = (b"\xde\xad\xbe\xef" * len(samples[keys[3]]["flac"]))[:len(samples[keys[3]]["flac"])]
        damaged.append(keys[3])
    write_shard(path, samples)
    if "tar_idx" in damages:
        cut_in(path, keys[2])
        damaged += keys[2:]
    if "tar_noidx" in damages:
        cut_in(path, keys[3])
        path.with_suffix(".idx").unlink()
        damaged.append(keys[3])
    return damaged


def make_split(directory: Path, shards: list[tuple[str, ...]], sources: dict) -> tuple[Path, set[str]]:
    """One shard per entry of ``shards`` (its damages); returns the split and its damaged keys."""
    directory.mkdir(parents=True, exist_ok=True)
    damaged: set[str] = set()
    for number, damages in enumerate(shards):
        damaged.update(write_damaged_shard(directory / f"train-{number:06d}.tar", damages, sources))
    return directory, damaged


def dali(samples, batch_size=2, **kwargs):
    return DaliClipLoader(samples, VIEWS, batch_size, EpochPlan(len(samples)), seed=7, device="cpu", num_threads=2,
                          **kwargs)


def torch_loader(samples, batch_size=2, **kwargs):
    return TorchClipLoader(samples, VIEWS, batch_size, num_workers=0, plan=EpochPlan(len(samples)), seed=7, **kwargs)


def epochs(loader, count: int, sync_every_batch: bool = True) -> list[tuple[dict, dict]]:
    """(batch, state after it) for ``count`` epochs; syncs corrupt samples after every batch like the
    trainer's log steps."""
    out = []
    for _ in range(count):
        for batch in loader:
            if sync_every_batch:
                loader.sync_corrupt_samples()
            out.append((batch, loader.state()))
    return out


def warned_keys(text: str) -> list[str]:
    return [line.split("skipping corrupt sample '")[1].split("'")[0] for line in text.splitlines()
            if "skipping corrupt sample '" in line]


# ----------------------------------------------------------------------------- what is corrupt


def test_corruption_reason_accepts_real_shards_and_names_each_damage(sources, sample_shards, tmp_path):
    assert [corruption_reason(ref) for ref in index_split(str(sample_shards))] == [None] * len(sources)
    split, damaged = make_split(tmp_path / "split", [("webm", "npy", "frames", "flac"), ("tar_idx",), ("tar_noidx",)],
                                sources)
    reasons = {ref.key: corruption_reason(ref) for ref in index_split(str(split))}
    assert {key for key, reason in reasons.items() if reason} == damaged
    # Where the decoder stops in the overwritten middle depends on the keyframe interval of the shards.
    decoded = re.fullmatch(r"video decodes to (\d+) frames, its info vector says 46",
                           reasons["train-000000_speech_jwpIntro_mp4-11c82fa7d7"])
    assert decoded and 0 < int(decoded.group(1)) < 46, reasons["train-000000_speech_jwpIntro_mp4-11c82fa7d7"]
    assert "frames, its info vector says 240" in reasons["train-000000_graphics_world_mp4-85376daf1b"]
    assert "truncated" in reasons["train-000001_scene_bikes_mp4-e7f981bfd6"]
    assert "Format not recognised" in reasons["train-000000_scene_bikes_mp4-e7f981bfd6"]
    assert "has no 'npy' member" in reasons["train-000002_scene_bikes_mp4-e7f981bfd6"]


def test_truncated_shards_lose_only_their_tail(sources, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="xkd.data.shard_index"):
        split, _ = make_split(tmp_path / "split", [("tar_idx",), ("tar_noidx",)], sources)
        samples = index_split(str(split))
    names = [key for name in DAMAGED_SOURCES for key in sources if key.startswith(name)]
    readable = [ref.key for ref in samples if corruption_reason(ref) is None]
    assert readable == [f"train-000000_{key}" for key in names[:2]] + [f"train-000001_{key}" for key in names[:3]]
    assert len(samples) == 8  # with an index all four stay listed; without, the cut sample keeps its webm
    assert "train-000000.tar: truncated" in caplog.text and "2 of its 4 samples are unreadable" in caplog.text
    assert "train-000001.tar: unreadable after 4 samples" in caplog.text


# ----------------------------------------------------------------------------- both loaders, each kind


@pytest.mark.parametrize("kind", KINDS)
def test_each_damage_is_replaced_counted_and_logged_once(kind, sources, tmp_path, caplog):
    """Two epochs of a good shard plus a damaged one: full batches, no damaged sample delivered,
    each counted and logged once, and both loaders pick the same stand-ins with the same views. The
    DALI loader runs with each CPU video decoder: PyAV's failures are found in the source, DALI's
    decoder fails the graph's batch."""
    split, damaged = make_split(tmp_path / "split", [("good",), (kind,)], sources)
    samples = index_split(str(split))
    loaders = {"dali": dali(samples), "dali_decoder": dali(samples, cpu_decoder="dali"),
               "torch": torch_loader(samples)}
    runs = {}
    for name, loader in loaders.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xkd.data.sample_check"):
            runs[name] = [batch for batch, _ in epochs(loader, 2)]
        assert sorted(warned_keys(caplog.text)) == sorted(damaged), name
        assert loader.corrupt_samples == len(damaged), name
        assert loader.state()["corrupt_samples"] == sorted(i for i, ref in enumerate(samples) if ref.key in damaged)
        assert len(runs[name]) == 2 * (len(samples) // 2)
        for batch in runs[name]:
            video_global, _ = cut_video_views(batch, VIEWS)
            assert video_global.shape == (2, 3, 8, 32, 32) and batch["audio_window"].shape == (2, 32000)
            assert torch.isfinite(video_global).all() and torch.isfinite(batch["audio_window"]).all()
    assert not {key for batch in runs["torch"] for key in batch["key"]} & damaged
    for from_dali, from_dali_decoder, from_torch in zip(runs["dali"], runs["dali_decoder"], runs["torch"]):
        for key in ("video_luma", "video_chroma", "video_global_box"):  # the same decoder and crops
            assert torch.equal(from_dali[key], from_torch[key]), key
        for got in (from_dali, from_dali_decoder):
            assert torch.equal(got["audio_window"], from_torch["audio_window"])
            assert torch.equal(got["audio_local_box"], from_torch["audio_local_box"])


@pytest.mark.parametrize("make_loader", [dali, torch_loader], ids=["dali", "torch"])
def test_resume_with_corrupt_samples_gives_the_same_batches(make_loader, sources, tmp_path):
    """A loader built from any state (including its corrupt samples) yields exactly the batches an
    uninterrupted one does, also mid-epoch right after a corrupt sample was found."""
    split, _ = make_split(tmp_path / "split", [("webm", "npy", "frames", "flac"), ("tar_idx",), ("tar_noidx",)], sources)
    samples = index_split(str(split))
    straight = epochs(make_loader(samples), 2)
    assert straight[-1][1]["corrupt_samples"] and not straight[-1][1]["corrupt_pending"]
    for cut in (1, 4, 7):
        state = straight[cut - 1][1]
        resumed = make_loader(samples, start_epoch=state["epoch"], start_position=state["position"],
                              corrupt_state=state)
        again = epochs(resumed, 2 - state["epoch"])
        assert len(again) == len(straight) - cut
        for (got, got_state), (expected, expected_state) in zip(again, straight[cut:]):
            assert got_state == expected_state
            for view in ("video_luma", "video_chroma", "video_global_box", "video_local_box", "audio_window",
                         "audio_local_box"):
                assert torch.equal(got[view], expected[view]), (cut, view)


def test_pending_finds_survive_a_checkpoint_between_syncs(sources, tmp_path):
    """Finds not yet shared are saved as pending: counted after a resume, not logged again, and
    not yet skipped unread (that changes batches only at a sync, on every rank together)."""
    split, damaged = make_split(tmp_path / "split", [("good",), ("npy",)], sources)
    samples = index_split(str(split))
    loader = torch_loader(samples)
    list(loader)
    state = loader.state()
    assert state["corrupt_samples"] == [] and len(state["corrupt_pending"]) == len(damaged) == 1
    restored = CorruptSamples(samples, state)
    assert restored.count == 1 and not restored.known
    assert restored.sync() == 1 and restored.known == set(state["corrupt_pending"]) and restored.changed
    assert CorruptSamples(samples, {"epoch": 0, "position": 0}).count == 0  # states from before the tracking


# ----------------------------------------------------------------------------- real 2-rank training


def expected_counts(samples, damaged: set[str], steps: int, world_size: int = 2, batch: int = 4,
                    seed: int = 0) -> list[int]:
    """corrupt_samples after each step: the damaged samples the slots tried before a readable one."""
    bad = {i for i, ref in enumerate(samples) if ref.key in damaged}
    plans = [EpochPlan(len(samples), world_size, rank, seed) for rank in range(world_size)]
    per_epoch = plans[0].batches_per_epoch(batch)
    tried: set[int] = set()
    counts = []
    for step in range(steps):
        epoch, begin = divmod(step, per_epoch)
        for plan in plans:
            order = plan.indices(epoch)
            for position in range(begin * batch, (begin + 1) * batch):
                for index, _ in slot_candidates(order, position, batch):
                    if index not in bad:
                        break
                    tried.add(index)
        counts.append(len(tried))
    return counts


def pretrain(loader: str, split: Path, output: Path, steps: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(ROOT / "launch" / "pretrain.py"), "--data", str(split), "--output", str(output),
               "--max-steps", str(steps), f"data.loader={loader}", "train.checkpoint_every_steps=2",
               "train.visualize_every_steps=0"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def metrics(run: Path) -> list[dict]:
    """The training rows of metrics.jsonl (the probe's step-0 baseline row has no loss)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]


@pytest.mark.parametrize("loader", ["dali", "torch"])
@pytest.mark.slow
def test_two_rank_training_on_a_damaged_split(loader, sources, tmp_path):
    """configs/tiny.yaml on 2 ranks over a split with every kind of damage (16 samples, 6 damaged,
    2 steps per epoch): the run finishes, every step's corrupt_samples (metrics.jsonl and MLflow)
    is the number of damaged samples drawn so far, each is logged once over both ranks, and a run
    resumed from step 2 logs the same losses and counts."""
    split, damaged = make_split(tmp_path / "split", [("webm", "npy", "frames"), ("tar_idx",), ("tar_noidx",),
                                                     ("good",)], sources)
    samples = index_split(str(split))
    assert len(samples) == 16 and len(damaged) == 6
    run = tmp_path / "run"
    result = pretrain(loader, split, run, steps=4)
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    counts = [r["corrupt_samples"] for r in records]
    assert counts == expected_counts(samples, damaged, 4) and counts[-1] == len(damaged), counts
    assert sorted(warned_keys(result.stdout + result.stderr)) == sorted(damaged)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    history = client.get_metric_history((run / "mlflow_run_id").read_text(), "corrupt_samples")
    assert [(m.step, m.value) for m in history] == [(r["step"], float(r["corrupt_samples"])) for r in records]

    # Resume from the step-2 checkpoint: the same batches, so the same losses; nothing logged again.
    shutil.rmtree(run / "checkpoints" / "step00000004")
    resumed = pretrain(loader, split, run, steps=4)
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert warned_keys(resumed.stdout + resumed.stderr) == []
    again = metrics(run)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for got, expected in zip(again[2:], records[2:]):
        assert (got["loss"], got["corrupt_samples"]) == (expected["loss"], expected["corrupt_samples"])


def test_dali_only_failures_are_found_by_decoding_each_sample_alone(sources, tmp_path, monkeypatch, caplog):
    """When every sample of a failed batch decodes in Python (DALI and PyAV can disagree on a
    damaged stream), the loader runs each through DALI alone and excludes the ones that fail. The
    Python checks are switched off: the full decode, and the source's cut, which finds the frames
    this damage removes (their packets are missing) before DALI's decoder sees the video."""
    monkeypatch.setattr("xkd.data.dali_pipeline.corruption_reason", lambda ref: None)
    monkeypatch.setattr("xkd.data.dali_pipeline.cut_window", lambda data, frames, fps: (data, frames))
    split, damaged = make_split(tmp_path / "split", [("good",), ("frames",)], sources)
    loader = dali(index_split(str(split)), cpu_decoder="dali")
    with caplog.at_level(logging.WARNING, logger="xkd.data.sample_check"):
        batches = [batch for batch, _ in epochs(loader, 1)]
    assert len(batches) == 4 and loader.corrupt_samples == 1
    assert warned_keys(caplog.text) == sorted(damaged) and "DALI cannot decode it: " in caplog.text
    assert "out-of-bounds frame index" in caplog.text
