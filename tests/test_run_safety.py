"""A careless or hostile user against pretraining, resume and export (issue: hardening).

- a planted pickle in any checkpoint file never runs: resume, export and the encoders eval/
  loads refuse it and name the file;
- a resume whose run changed (batch, lr, mask ratio, model size, data set) is refused with a diff,
  unless the change is accepted with --allow-change (then logged and recorded in MLflow);
- errors checkable before the process group starts are `error:` lines and exit 2 on every
  launcher, before DeepSpeed starts (no output folder is made);
- metrics.jsonl has one row per step after a resume.

Runs use `python launch/pretrain.py` (one rank, the quickest real start) unless the launcher is
the point of the test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from media import free_port
from test_pretrain import BIN, ROOT, check, metrics, run_env
from xkd.engine import checkpoint_safety

pytestmark = pytest.mark.slow  # real training, clusters or servers: scripts/test.sh --fast skips them


class Payload:
    """What an attacker plants: unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def single_rank_env() -> dict[str, str]:
    env = run_env()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(name, None)
    return env


def pretrain(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(ROOT / "launch" / "pretrain.py"), *args]
    return subprocess.run(command, cwd=ROOT, env=single_rank_env() if launcher is None else run_env(),
                          capture_output=True, text=True, timeout=600)


def refused(result: subprocess.CompletedProcess, *expected: str) -> str:
    """The run stopped with exit 2 and an `error:` line containing ``expected``, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "error: " in result.stderr and "Traceback" not in output, output[-4000:]
    for text in expected:
        assert text in output, (text, output[-4000:])
    return output


@pytest.fixture(scope="module")
def trained(sample_shards, tmp_path_factory) -> Path:
    """A one-rank run of the tiny config stopped at step 2 (checkpoint step00000002)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    check(pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "2"))
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.copy(run.parent / "mlruns.db", tmp_path / "mlruns.db")  # the tracking store beside the run
    return copy


# ----------------------------------------------------------------------------- planted code
@pytest.mark.parametrize("name", ["xkd_state.pt", "rng_rank0.pt", "mp_rank_00_model_states.pt",
                                  "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_planted_pickle_never_runs_on_resume_or_export(trained, sample_shards, tmp_path, name):
    run = copy_run(trained, tmp_path)
    marker = tmp_path / "PWNED"
    planted = run / "checkpoints" / "step00000002" / name
    torch.save({"state": Payload(marker)}, planted)

    output = refused(pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "3"),
                     str(planted), "posix.system")
    assert "refused to load" in output
    assert not marker.exists()

    export = subprocess.run([sys.executable, "launch/export_encoders.py", str(run), "--output", str(tmp_path / "e")],
                            cwd=ROOT, env=single_rank_env(), capture_output=True, text=True, timeout=600)
    assert export.returncode == 2 and str(planted) in export.stderr, export.stderr[-3000:]
    assert "Traceback" not in export.stderr
    assert not marker.exists()
    assert not (tmp_path / "e").exists()


def test_scan_refuses_what_weights_only_cannot_load(tmp_path):
    """The static scan names the global; a legacy (non-zip) pickle is refused as unreadable;
    inside weights_only_loads even an explicit weights_only=False load (as DeepSpeed's) refuses."""
    marker = tmp_path / "PWNED"
    zipped, legacy = tmp_path / "zipped.pt", tmp_path / "legacy.pt"
    torch.save([Payload(marker)], zipped)
    torch.save([Payload(marker)], legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(checkpoint_safety.UnsafeCheckpointError, match=r"zipped\.pt: refused to load.*posix\.system"):
        checkpoint_safety.load(zipped)
    with pytest.raises(checkpoint_safety.UnsafeCheckpointError, match=r"legacy\.pt: refused: not a readable"):
        checkpoint_safety.check_file(legacy)
    with pytest.raises(checkpoint_safety.UnsafeCheckpointError), checkpoint_safety.weights_only_loads():
        torch.load(zipped, weights_only=False)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after the block
    assert not marker.exists()
    # Plain data (what our RNG files hold now) passes.
    torch.save({"python": (3, tuple(range(5)), None), "numpy": ("MT19937", torch.arange(3), 1, 0, 0.0)}, zipped)
    assert checkpoint_safety.load(zipped)["numpy"][0] == "MT19937"


def test_planted_pickle_in_an_export_does_not_run_in_eval(trained, tmp_path):
    """eval/ loads exported encoders with safetensors: a pickle put in their place is an error."""
    from xkd.engine.export import load_encoder

    export = tmp_path / "export"
    check(subprocess.run([sys.executable, "launch/export_encoders.py", str(trained), "--output", str(export)],
                         cwd=ROOT, env=single_rank_env(), capture_output=True, text=True, timeout=600))
    marker = tmp_path / "PWNED"
    torch.save({"w": Payload(marker)}, export / "audio_teacher_encoder.safetensors")
    with pytest.raises(Exception):
        load_encoder(export, "audio_teacher_encoder")
    assert not marker.exists()


# ----------------------------------------------------------------------------- changed runs
@pytest.mark.parametrize("change, key", [
    (["train.global_batch_size=4", "train.micro_batch_size=4"], "train.global_batch_size: 8 then, 4 now"),
    (["optim.base_lr=2e-3"], "optim.base_lr: 0.001 then, 0.002 now"),
    (["model.video_mask_ratio=0.5"], "model.video_mask_ratio: 0.85 then, 0.5 now"),
    (["model.audio_encoder=small"], "model.audio_encoder: 'tiny' then, 'small' now"),
])
def test_resume_refuses_a_changed_run_with_a_diff(trained, sample_shards, tmp_path, change, key):
    run = copy_run(trained, tmp_path)
    before = (run / "metrics.jsonl").read_bytes()
    result = pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "4", *change)
    output = refused(result, "refusing to resume", key, "--allow-change")
    assert "size mismatch" not in output
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing touched


def test_resume_refuses_another_data_set(trained, sample_shards, tmp_path):
    run = copy_run(trained, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("train-000000.tar", "train-000000.idx"):  # half of the split: 4 of 8 clips
        shutil.copy(sample_shards / name, other / name)
    refused(pretrain("--data", str(other), "--output", str(run), "--max-steps", "3"),
            "dataset: {'num_samples': 8", "'num_samples': 4", "--allow-change dataset")
    # The same clips in another folder are the same data set.
    moved = tmp_path / "moved"
    shutil.copytree(sample_shards, moved)
    check(pretrain("--data", str(moved), "--output", str(run), "--max-steps", "3"))


def test_deliberate_change_is_accepted_logged_and_tracked(trained, sample_shards, tmp_path):
    run = copy_run(trained, tmp_path)
    result = pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "3", "optim.base_lr=2e-3",
                      "--allow-change", "optim.base_lr")
    check(result)
    assert "deliberate changes (--allow-change): optim.base_lr: 0.001 -> 0.002" in result.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run.parent / 'mlruns.db'}")
    mlflow_run = client.get_run((run / "mlflow_run_id").read_text())
    assert mlflow_run.data.tags["resume_changes.step00000002"] == "optim.base_lr: 0.001 -> 0.002"
    # A shape change cannot be accepted: the weights would not fit.
    refused(pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "4", "optim.base_lr=2e-3",
                     "model.audio_encoder=small", "--allow-change", "optim", "--allow-change", "model.audio_encoder"),
            "other shapes", "audio_encoder")


def test_run_control_keys_may_change(trained, sample_shards, tmp_path):
    run = copy_run(trained, tmp_path)
    check(pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "3",
                   "train.log_every_steps=5", "train.checkpoint_every_steps=7", "data.num_workers=2"))


# ----------------------------------------------------------------------------- before start
def test_prestart_errors_are_error_lines_on_the_deepspeed_launcher(sample_shards, sound_shards, tmp_path, trained):
    deepspeed = [str(BIN / "deepspeed")]
    out = tmp_path / "out"
    cases = [
        (["--data", str(tmp_path / "missing")], "no .tar shards found"),
        (["--data", str(tmp_path)], "no .tar shards found"),
        (["--data", str(sound_shards)], "have no video member"),
        (["--data", str(sample_shards), "--resume", str(tmp_path / "step00000009")], "not a complete checkpoint"),
    ]
    for args, expected in cases:
        refused(pretrain(*args, "--output", str(out), launcher=deepspeed), expected)
        assert not out.exists()  # refused before anything was made
    # The rank count changed: saved by one rank, resumed by two.
    run = copy_run(trained, tmp_path)
    refused(pretrain("--data", str(sample_shards), "--output", str(run), launcher=deepspeed),
            "saved with world size 1, resuming with 2")
    result = pretrain("--data", str(sample_shards), "--max-steps", "-1", launcher=deepspeed)
    assert result.returncode == 2 and "--max-steps: -1: expected 0" in result.stderr


def test_prestart_errors_on_torchrun_and_slurm_submit(sound_shards, tmp_path):
    """torchrun reports the rank's exit status (its own summary follows); slurm_submit makes the
    same checks before it submits anything."""
    out = tmp_path / "out"
    result = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                             str(ROOT / "launch" / "pretrain.py"), "--data", str(sound_shards), "--output", str(out)],
                            cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    output = result.stdout[-2000:] + result.stderr[-4000:]
    assert result.returncode != 0 and "error: " in result.stderr and "have no video member" in result.stderr, output
    assert "exitcode  : 2" in result.stderr and not out.exists(), output
    submit = [sys.executable, "launch/slurm_submit.py", "--gpus-per-node", "0", "--tasks-per-node", "2",
              "--data", str(sound_shards), "--output", str(out)]
    result = subprocess.run(submit, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    refused(result, "have no video member", "nothing was submitted")  # refused before any cluster is asked
    assert not out.exists()
    dry_run = subprocess.run(submit + ["--dry-run"], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                             timeout=600)  # still shows the script, with the refusal as a warning
    assert dry_run.returncode == 0 and "# warning: a real submission would be refused" in dry_run.stdout
    assert "have no video member" in dry_run.stdout and "#SBATCH --nodes=1" in dry_run.stdout


def test_resume_none_does_not_overwrite_checkpoints(trained, sample_shards, tmp_path):
    run = copy_run(trained, tmp_path)
    refused(pretrain("--data", str(sample_shards), "--output", str(run), "--resume", "none"),
            "would overwrite", "--resume auto")


# ----------------------------------------------------------------------------- metrics rows
def test_metrics_have_one_row_per_step_after_resume(trained, sample_shards, tmp_path):
    """A run that logged past its last checkpoint (killed before the next save) and resumes logs
    those steps again: metrics.jsonl keeps one row per step."""
    run = copy_run(trained, tmp_path)
    rows = metrics(run)
    stale = [dict(rows[-1], step=3, loss=123.0), dict(rows[-1], step=4, loss=456.0)]
    with (run / "metrics.jsonl").open("a") as handle:  # steps 3 and 4 of a killed run
        handle.write("".join(json.dumps(row) + "\n" for row in stale) + '{"step": 5, "lo')  # and a torn line
    check(pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "4"))
    resumed = metrics(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed[:2] == rows and all(r["loss"] not in (123.0, 456.0) for r in resumed)
    assert [r["samples_seen"] for r in resumed] == [8, 16, 24, 32]


def test_keys_added_since_the_save_compare_at_their_defaults(trained, sample_shards, tmp_path):
    """A checkpoint written before a config key existed resumes when the key is at its default."""
    run = copy_run(trained, tmp_path)
    meta_path = run / "checkpoints" / "step00000002" / "xkd_meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["loss"]["mmd_distance_scale"]
    meta_path.write_text(json.dumps(meta))
    check(pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "3"))
    refused(pretrain("--data", str(sample_shards), "--output", str(run), "--max-steps", "4",
                     "loss.mmd_distance_scale=dim"), "loss.mmd_distance_scale: 'none' then, 'dim' now")
