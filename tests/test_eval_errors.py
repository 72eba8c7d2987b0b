"""The eval CLIs on bad input (issue 11, item 10): one ``error: ...`` line, exit status 2, no traceback.

Every tool runs its ``main`` with the argument list a user types, in this process (an interpreter
start and the torch import per case would cost more than the cases themselves), on real data:
the bundled sound effects as
audio-only shards (22 classes, 176 clips, made by the real make_shards) and the step-0 encoders
of configs/tiny.yaml in the export format. Each case asserts exit status 2, an ``error:`` line
on stderr that names the option or file at fault, and no traceback. Errors of argparse (a value
outside an option's range) read ``<tool>.py: error: argument --x: ...``, as for any option.
One case (marked slow) runs a tool as a subprocess, exactly as typed, to check the contract end
to end.

The fine-tuning preset's batch on a set too small for it is adapted (the largest batch that
fits, logged and recorded in the results), while an explicit --batch-size that does not fit is
refused with the sizes that fit.
"""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval_media import SOUND_FOLDS

ROOT = Path(__file__).resolve().parents[1]


def run_tool(tool: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python eval/<tool>.py ARGS`` from the repository root, as a subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(ROOT / "eval" / f"{tool}.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def call_tool(tool: str, *args) -> subprocess.CompletedProcess:
    """``eval/<tool>.py``'s ``main(ARGS)`` in this process, from the repository root: its exit status
    (argparse's ``SystemExit`` included) and what it printed and logged, as :func:`run_tool` returns them."""
    spec = importlib.util.spec_from_file_location(f"eval_tool_{tool}", ROOT / "eval" / f"{tool}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    # The tools log through the root logger; pytest's own handlers make their basicConfig a no-op.
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    cwd = os.getcwd()
    tracking = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = module.main([str(arg) for arg in args])
            except SystemExit as exit_:  # argparse
                status = exit_.code
    finally:
        os.chdir(cwd)
        root.removeHandler(handler)
        root.setLevel(level)
        if tracking is not None:
            os.environ["MLFLOW_TRACKING_URI"] = tracking
    return subprocess.CompletedProcess([tool, *args], status, out.getvalue(), err.getvalue())


def assert_input_error(result: subprocess.CompletedProcess, *names: str, argparse: bool = False) -> str:
    """Exit 2, one error line naming every one of ``names``, no traceback; returns the error line."""
    output = f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 2, output
    assert "Traceback" not in result.stderr, output
    prefix = ": error: argument " if argparse else "error: "
    lines = [line for line in result.stderr.splitlines() if (prefix in line if argparse else line.startswith(prefix))]
    assert len(lines) == 1, output
    for name in names:
        assert name in lines[0], output
    return lines[0]


def sound_args(sound_shards: Path) -> list:
    return ["--data", sound_shards, "--splits", f"esc50:{SOUND_FOLDS}", "--dataset-name", "sounds"]


@pytest.fixture
def small_set(tmp_path) -> Path:
    """A 51-clip split of the sound set (32 train, 19 test), as the issue's: ``lists:<dir>``, split 'small'."""
    with open(SOUND_FOLDS, newline="") as handle:
        names = [row["filename"] for row in csv.DictReader(handle)][::3][:51]  # every third: all classes
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "small_train.txt").write_text("\n".join(names[:32]) + "\n")
    (lists / "small_test.txt").write_text("\n".join(names[32:]) + "\n")
    return lists


# ----------------------------------------------------------------------------- finetune.py: the batch


def test_finetune_preset_batch_adapts_to_a_small_set(sound_shards, random_tiny_export, small_set, tmp_path):
    """The esc50 preset's batch of 64 on 32 training items: fine-tune with 32, say so, record both."""
    out = tmp_path / "finetune.json"
    result = call_tool("finetune", "--checkpoint", random_tiny_export, "--modality", "audio", "--preset", "esc50",
                      "--data", sound_shards, "--splits", f"lists:{small_set}", "--dataset-name", "small51",
                      "--epochs", "1", "--workers", "0", "--no-progress", "--no-track", "--output", out)
    assert result.returncode == 0, result.stderr[-6000:]
    warning = [line for line in result.stderr.splitlines() if "WARNING" in line and "batch size" in line]
    assert len(warning) == 1 and "batch size 64" in warning[0] and "32 training items" in warning[0], result.stderr
    assert "batch size 32 instead" in warning[0]
    record = json.loads(out.read_text())
    (split,) = record["splits"]
    assert split["params"]["batch_size"] == 32 and split["params"]["batch_size_requested"] == 64
    assert split["params"]["train_items"] == 32 and split["params"]["test_items"] == 19
    assert record["params"]["batch_size"] == 32 and record["params"]["batch_size_requested"] == 64
    assert len(split["epoch_losses"]) == 1 and np.isfinite(split["epoch_losses"][0])
    assert set(split["metrics"]) == {"top1", "top5"}


@pytest.mark.parametrize("options, names", [
    (["--batch-size", "64"], ["batch size 64", "32 training items", "split small", "batch sizes that fit: 1 to 32"]),
    (["--mixup", "0.5", "--batch-size", "15"], ["batch size 15", "multiple of 2", "mixup"]),
    (["--engine", "deepspeed"], ["--ds-config"]),
    (["--modality", "video", "--batch-size", "16"], ["no video", "audio-only", "--no-video-policy"]),
], ids=["explicit-batch-too-large", "odd-batch-with-mixup", "deepspeed-without-config", "video-of-audio-only"])
def test_finetune_refuses_what_cannot_run(sound_shards, random_tiny_export, small_set, options, names):
    args = ["--checkpoint", random_tiny_export, "--modality", "audio", "--preset", "esc50", "--data", sound_shards,
            "--splits", f"lists:{small_set}", "--epochs", "1", "--no-progress", "--no-track"]
    if "--modality" in options:
        args[2:4] = []
    assert_input_error(call_tool("finetune", *args, *options), *names)


# ----------------------------------------------------------------------------- late_fusion.py


@pytest.mark.parametrize("options, names", [
    (["--frames", "16"], ["--frames 16", "--fps 8", "2 s", "--seconds 4"]),
    ([], ["no video", "late fusion needs audio and video"]),
], ids=["video-and-audio-windows-differ", "audio-only-set"])
def test_late_fusion_refuses_misaligned_inputs(sound_shards, random_tiny_export, tmp_path, options, names):
    # Few clips: on the old code the audio features are extracted before the misalignment shows.
    result = call_tool("late_fusion", "--checkpoint", random_tiny_export, *sound_args(sound_shards), "--train-clips",
                      "1", "--test-clips", "1", "--cache-dir", tmp_path / "cache", "--no-progress", "--no-track",
                      *options)
    assert_input_error(result, *names)


def test_late_fusion_checks_pass_real_audio_visual_clips(sample_shards, random_tiny_export, tmp_path):
    """The checks do not refuse good input: the sample clips (one, scene/bikes.mp4, without a sound
    track: its silent audio is valid input) are fused. A guard against false alarms of the checks."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "s_train.txt").write_text("music/dancer.avi\nface/WolfgangLanger_Pexels.mp4\ngraphics/world.mp4\n"
                                       "speech/jwpIntro.mp4\nscene/bikes.mp4\n")
    (lists / "s_test.txt").write_text("music/pianist.avi\nface/single_face.mp4\ngraphics/default.mp4\n")
    out = tmp_path / "fusion.json"
    result = call_tool("late_fusion", "--checkpoint", random_tiny_export, "--data", sample_shards, "--splits",
                      f"lists:{lists}", "--train-clips", "2", "--test-clips", "1", "--workers", "0", "--cache-dir",
                      tmp_path / "cache", "--no-progress", "--no-track", "--output", out)
    assert result.returncode == 0, result.stderr[-6000:]
    assert json.loads(out.read_text())["splits"][0]["params"]["train_items"] == 5


def test_misaligned_feature_sets_name_both_files(tmp_path):
    """Feature sets of other items or another order (e.g. caches made apart) do not pair up."""
    from xkd.evaluation.errors import EvalInputError
    from xkd.evaluation.features import FeatureSet
    from xkd.evaluation.fusion import check_aligned

    identity = {"mode": "test", "n_clips": 3, "seed": None, "dataset_fingerprint": "f", "clip": {"seconds": 4.0}}
    audio = FeatureSet(np.zeros((2, 3, 8), np.float32), ["a", "b"], identity, tmp_path / "audio.safetensors", 0)
    video = FeatureSet(np.zeros((2, 3, 8), np.float32), ["b", "a"], identity, tmp_path / "video.safetensors", 0)
    with pytest.raises(EvalInputError, match="audio.safetensors and video features .*video.safetensors .*order"):
        check_aligned(audio, video)


# ----------------------------------------------------------------------------- linear_svm.py, fc_tune.py, ...


@pytest.mark.parametrize("tool, options, names, argparse", [
    ("linear_svm", ["--c-grid", "0", "0.1"], ["--c-grid 0 0.1", "positive"], False),
    ("linear_svm", ["--modality", "video"], ["no video", "audio-only"], False),
    ("linear_svm", ["--seconds", "3.3"], ["--seconds", "3.3 s", "does not tile"], False),
    ("linear_svm", ["--device", "cuda:9"], ["--device cuda:9"], False),
    ("fc_tune", ["--dropout", "1.5"], ["--dropout 1.5", "[0, 1)"], False),
    ("extract_features", ["--test-clips", "0"], ["--test-clips", "at least 1"], True),
], ids=["svm-c-grid", "svm-video-of-audio-only", "svm-window-does-not-tile", "svm-missing-gpu", "fc-dropout",
        "features-zero-clips"])
def test_protocols_refuse_bad_options(sound_shards, random_tiny_export, tmp_path, tool, options, names, argparse):
    args = ["--checkpoint", random_tiny_export, "--modality", "audio", "--train-clips", "1", "--cache-dir",
            tmp_path / "cache", "--no-progress"]
    if tool == "extract_features":
        args += ["--data", sound_shards]
    else:
        args += [*sound_args(sound_shards), "--no-track"]
    if "--modality" in options:
        args[2:4] = []
    assert_input_error(call_tool(tool, *args, *options), *names, argparse=argparse)


def test_linear_svm_on_a_split_of_one_class(sound_shards, random_tiny_export, tmp_path):
    """A split list whose training items are all of one class: no classifier can be fit."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "one_train.txt").write_text("goat/goat_10.ogg\ngoat/goat_11.ogg\ngoat/goat_12.ogg\n")
    (lists / "one_test.txt").write_text("saw/con_saw_01.ogg\ngoat/goat_13.ogg\n")
    result = call_tool("linear_svm", "--checkpoint", random_tiny_export, "--modality", "audio", "--data", sound_shards,
                      "--splits", f"lists:{lists}", "--train-clips", "1", "--cache-dir", tmp_path / "cache",
                      "--no-progress", "--no-track")
    assert_input_error(result, "split one", "3 training items are all of one class")


def test_export_directory_without_the_encoder(sound_shards, random_tiny_export, tmp_path):
    """--checkpoint lacking the encoder the protocol needs: named before any data is read."""
    partial = tmp_path / "export"
    shutil.copytree(random_tiny_export, partial, ignore=shutil.ignore_patterns("audio_teacher*", "features"))
    result = call_tool("fc_tune", "--checkpoint", partial, "--modality", "audio", *sound_args(sound_shards),
                      "--no-progress", "--no-track")
    assert_input_error(result, f"--checkpoint {partial}", "missing audio_teacher_encoder.safetensors",
                       "launch/export_encoders.py")


def test_random_init_like_a_directory_without_config(tmp_path):
    (tmp_path / "not_an_export").mkdir()
    result = call_tool("random_init", "--like", tmp_path / "not_an_export", "--output", tmp_path / "out")
    assert_input_error(result, str(tmp_path / "not_an_export"), "no config.yaml", "launch/export_encoders.py")


@pytest.mark.slow
def test_report_on_a_missing_path(tmp_path):
    """A typo (or an unmatched shell glob) is an error, not an empty table."""
    missing = tmp_path / "runs" / "nope" / "eval"
    assert_input_error(run_tool("report", missing), str(missing), "no such file or directory")


# ----------------------------------------------------------------------------- errors inside DataLoader workers


def test_corrupt_clip_read_in_a_worker_is_one_error_line(sound_shards, random_tiny_export, tmp_path):
    """A clip that cannot be decoded, read in a DataLoader worker: the error names the clip and its
    shard, without the worker's traceback that PyTorch puts into the re-raised exception."""
    from xkd.data import format as fmt
    from xkd.data.shard_index import index_split

    shards = tmp_path / "shards"
    shutil.copytree(sound_shards, shards)
    first = index_split(str(shards))[0]
    offset, size = first.member(fmt.AUDIO_EXT)
    with open(first.shard, "r+b") as handle:  # same size, so the index and the tar stay valid
        handle.seek(offset)
        handle.write(b"\0" * size)
    result = call_tool("linear_svm", "--checkpoint", random_tiny_export, "--modality", "audio",
                      *sound_args(shards), "--train-clips", "1", "--workers", "2", "--cache-dir", tmp_path / "cache",
                      "--no-progress", "--no-track")
    line = assert_input_error(result, f"key {first.key}", Path(first.shard).name, "cannot read")
    assert "DataLoader worker" not in line


def test_user_message_drops_the_worker_traceback():
    from torch._utils import ExceptionWrapper

    from xkd.evaluation.cli import user_message
    from xkd.evaluation.datasets import DatasetError

    try:
        try:
            raise OSError("truncated")
        except OSError as cause:
            raise DatasetError("a/b.ogg: cannot read: OSError: truncated") from cause
    except DatasetError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DatasetError) as caught:
        wrapper.reraise()
    assert "Traceback" in str(caught.value)
    assert user_message(caught.value) == "a/b.ogg: cannot read: OSError: truncated"
    assert user_message(DatasetError("plain")) == "plain"
