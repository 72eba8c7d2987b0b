"""DeepSpeed pretraining end to end on 2 CPU ranks (gloo), on the real sample shards.

Every test starts real processes through the deepspeed launcher or torchrun, as users do.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from media import child_pids, free_port
from xkd.config import ConfigError, load_config
from xkd.engine.ds_config import resolve_ds_config

pytestmark = pytest.mark.slow  # real training, clusters or servers: scripts/test.sh --fast skips them

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ROOT / "configs" / "tiny.yaml"


def run_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", LOCAL_SIZE="2", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
            str(ROOT / "launch" / "pretrain.py"), *args]


def metrics(run_dir: Path) -> list[dict]:
    """The training rows of metrics.jsonl (the probe's step-0 baseline row has no loss)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]


def losses_by_step(run_dir: Path) -> dict[int, list[float]]:
    found: dict[int, list[float]] = {}
    for record in metrics(run_dir):
        found.setdefault(record["step"], []).append(record["loss"])
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_bare_deepspeed_command(quickstart_shards, tmp_path):
    """`deepspeed launch/pretrain.py --ds_config ds_configs/zero2.json`: 2 ranks, checkpoint, MLflow run."""
    run = tmp_path / "runs" / "tiny"
    buffers_before = set(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*"))
    result = subprocess.run([str(BIN / "deepspeed"), "launch/pretrain.py", "--ds_config", "ds_configs/zero2.json",
                             "--output", str(run), "--max-steps", "3"], cwd=ROOT, env=run_env(),
                            capture_output=True, text=True, timeout=600)
    check(result)
    # DeepSpeed's launcher sets LOCAL_SIZE, so its CPU shared-memory all-reduce ran; its 66 MB-per-rank
    # buffers are RAM and must not outlive the run (DeepSpeed itself never unlinks them).
    assert "their names are unlinked from /dev/shm" in result.stdout + result.stderr
    assert set(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")) <= buffers_before
    tag = (run / "checkpoints" / "latest").read_text()
    assert tag == "step00000003"
    for name in ("COMPLETE", "xkd_state.pt", "rng_rank0.pt", "rng_rank1.pt", "mp_rank_00_model_states.pt",
                 "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        assert (run / "checkpoints" / tag / name).is_file(), name
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_id == (run / "mlflow_run_id").read_text()
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["world_size"] == "2"
    assert mlflow_run.data.params["config.model.variant"] == "ms"
    assert mlflow_run.data.params["deepspeed.zero_optimization.stage"] == "2"
    history = client.get_metric_history(mlflow_run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    for name in ("recon_video", "mmd_teacher", "kl_audio_to_video", "teacher_entropy_video", "lr", "ema_momentum",
                 "grad_norm", "clips_per_second", "data_wait_seconds", "peak_memory_bytes", "loss_scale"):
        assert name in mlflow_run.data.metrics, name

    # Export for eval/: fp32 safetensors of the four encoders, equal to the checkpoint's weights.
    export = tmp_path / "export"
    check(subprocess.run([sys.executable, "launch/export_encoders.py", str(run), "--output", str(export)], cwd=ROOT,
                         env=run_env(), capture_output=True, text=True, timeout=600))
    import torch

    from xkd.engine.export import ENCODER_NAMES, load_encoder

    state = torch.load(run / "checkpoints" / tag / "xkd_state.pt", weights_only=True)
    for name in ENCODER_NAMES:
        encoder = load_encoder(export, name)
        assert all(p.dtype == torch.float32 for p in encoder.parameters())
        if name == "video_teacher_encoder":
            assert torch.equal(encoder.blocks[0].attn.qkv.weight, state["teacher"]["video_encoder.blocks.0.attn.qkv.weight"])
    features = load_encoder(export, "audio_teacher_encoder")(torch.randn(2, 1, 80, 224)).pooled()
    assert features.shape == (2, 64) and torch.isfinite(features).all()


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_train(sample_shards, tmp_path, stage):
    result = subprocess.run(torchrun("--ds_config", str(ROOT / f"ds_configs/zero{stage}.json"), "--data",
                                     str(sample_shards), "--output", str(tmp_path / "run"), "--max-steps", "12"),
                            cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    check(result)
    loss = [r["loss"] for r in metrics(tmp_path / "run")]
    assert len(loss) == 12
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4, loss


@pytest.mark.parametrize("variant", ["ms", "mas", "mats"])
def test_variants_end_to_end(sample_shards, tmp_path, variant):
    result = subprocess.run(torchrun("--data", str(sample_shards), "--output", str(tmp_path / "run"),
                                     "--max-steps", "2", f"model.variant={variant}"),
                            cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    check(result)
    assert len(metrics(tmp_path / "run")) == 2
    assert (tmp_path / "run" / "checkpoints" / "step00000002" / "COMPLETE").is_file()


def test_exact_resume_after_sigkill(sample_shards, tmp_path):
    """Straight run vs a run SIGKILLed at an arbitrary moment (possibly mid-save) and resumed
    from its last complete checkpoint: every logged loss is bitwise identical (fp32, CPU)."""
    common = ["--data", str(sample_shards), "--max-steps", "16", "train.checkpoint_every_steps=4"]
    straight = tmp_path / "straight"
    check(subprocess.run(torchrun("--output", str(straight), *common), cwd=ROOT, env=run_env(),
                         capture_output=True, text=True, timeout=600))

    killed = tmp_path / "killed"
    process = subprocess.Popen(torchrun("--output", str(killed), *common), cwd=ROOT, env=run_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "latest").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    # The whole job at once, as a node crash: torchrun starts each rank in its own session, so the
    # launcher's process group alone would leave the ranks training (and racing the resume).
    ranks = child_pids(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 60
    while any(alive(pid) for pid in ranks) and time.time() < deadline:
        time.sleep(0.05)
    killed_at = max(losses_by_step(killed))
    assert killed_at < 16, "the run finished before it could be killed"

    result = subprocess.run(torchrun("--output", str(killed), *common), cwd=ROOT, env=run_env(),
                            capture_output=True, text=True, timeout=600)
    check(result)
    assert "resumed from" in result.stdout + result.stderr
    reference, resumed = losses_by_step(straight), losses_by_step(killed)
    assert sorted(resumed) == list(range(1, 17))
    # One row per step: the rows the killed run logged after its checkpoint were dropped on resume.
    assert resumed == {step: values for step, values in reference.items()}


def test_plain_python_single_process_with_gradient_accumulation(sample_shards, tmp_path):
    """`python launch/pretrain.py` with no launcher: one rank, so the tiny config's global batch
    of 8 at micro-batch 4 accumulates 2 micro-batches per step. A run stopped after 2 steps and
    resumed to 4 logs the same losses as a straight 4-step run."""
    def pretrain(output: Path, steps: int) -> subprocess.CompletedProcess:
        env = run_env()
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
            env.pop(name, None)
        return subprocess.run([sys.executable, "launch/pretrain.py", "--data", str(sample_shards), "--output",
                               str(output), "--max-steps", str(steps)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    check(pretrain(straight, 4))
    check(pretrain(resumed, 2))
    result = pretrain(resumed, 4)
    check(result)
    assert "resumed from" in result.stdout + result.stderr
    records = metrics(straight)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["samples_seen"] for r in records] == [8, 16, 24, 32]  # 2 micro-batches of 4 per step
    assert losses_by_step(resumed) == {step: [loss] for step, (loss,) in losses_by_step(straight).items()}
    assert (straight / "checkpoints" / "step00000004" / "COMPLETE").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run_id = (straight / "mlflow_run_id").read_text()
    run = client.get_run(run_id)
    assert run.data.tags["world_size"] == "1"
    assert run.data.params["deepspeed.gradient_accumulation_steps"] == "2"


def test_sigterm_checkpoints_and_exits(sample_shards, tmp_path):
    """SLURM's warning signal: checkpoint at the next step boundary, exit 0, resume later."""
    run = tmp_path / "run"
    process = subprocess.Popen(torchrun("--data", str(sample_shards), "--output", str(run), "--max-steps", "100000"),
                               cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 3:
            break
        time.sleep(0.05)
    # Every rank gets the signal, as from srun / SLURM (the torchrun agent itself is not signalled).
    for pid in child_pids(process.pid):
        os.kill(pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-4000:]
    tag = (run / "checkpoints" / "latest").read_text()
    assert int(tag.removeprefix("step")) == max(r["step"] for r in metrics(run))
    assert "stop requested by signal" in output


def test_nonfinite_losses_stop_with_last_good_checkpoint(sample_shards, tmp_path):
    """An absurd learning rate makes every loss after the first update non-finite: each such step
    is skipped on all ranks, and after train.max_consecutive_nonfinite in a row the run stops
    with a clear message and a checkpoint of the last good state."""
    run = tmp_path / "run"
    result = subprocess.run(torchrun("--data", str(sample_shards), "--output", str(run), "--max-steps", "50",
                                     "optim.base_lr=1e30", "train.max_consecutive_nonfinite=3"),
                            cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "3 non-finite losses in a row" in result.stdout + result.stderr
    good = [r for r in metrics(run)]
    assert good and all(math.isfinite(r["loss"]) for r in good)  # only finite steps were taken and logged
    tag = (run / "checkpoints" / "latest").read_text()
    assert int(tag.removeprefix("step")) == good[-1]["step"]
    from xkd.engine import checkpoint_safety

    assert checkpoint_safety.load(run / "checkpoints" / tag / "xkd_state.pt")["nonfinite_total"] == 3


def test_ds_config_is_merged_from_the_yaml_and_mismatches_fail(tmp_path):
    config = load_config(TINY)
    merged = resolve_ds_config(ROOT / "ds_configs" / "zero2.json", config, world_size=2, device_type="cpu")
    assert merged["train_batch_size"] == 8 and merged["train_micro_batch_size_per_gpu"] == 4
    assert merged["gradient_accumulation_steps"] == 1 and merged["gradient_clipping"] == 0.3
    assert merged["fp16"]["enabled"] is False and merged["bf16"]["enabled"] is False
    # "auto" ZeRO settings follow the device: bucket copies against CUDA fragmentation only on GPUs.
    assert merged["zero_optimization"]["contiguous_gradients"] is False  # on CPUs
    on_gpu = resolve_ds_config(ROOT / "ds_configs" / "zero3.json", config, world_size=2, device_type="cuda")
    assert on_gpu["zero_optimization"]["contiguous_gradients"] is True
    accumulate = resolve_ds_config(ROOT / "ds_configs" / "zero2.json",
                                   load_config(TINY, ["train.micro_batch_size=2"]), world_size=2)
    assert accumulate["gradient_accumulation_steps"] == 2
    fp16 = resolve_ds_config(ROOT / "ds_configs" / "zero2.json", load_config(TINY, ["train.precision=fp16"]), 2)
    assert fp16["fp16"]["enabled"] is True and fp16["fp16"]["loss_scale"] == 0  # dynamic loss scale (V100)

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 16, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"train_batch_size = 16 disagrees with .*\(8\)"):
        resolve_ds_config(bad, config, world_size=2)
    bad.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="remove the 'optimizer' section"):
        resolve_ds_config(bad, config, world_size=2)
    bad.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="bf16.enabled"):
        resolve_ds_config(bad, config, world_size=2)
    with pytest.raises(ConfigError, match="cannot be split evenly over 3 ranks"):
        resolve_ds_config(ROOT / "ds_configs" / "zero2.json", config, world_size=3)


def test_distributed_checks_zero3_ema_and_centres(tmp_path):
    """EMA under ZeRO-3 equals the EMA computed from the gathered full student weights; KD centres,
    teachers and students are identical on both ranks after a step."""
    out = tmp_path / "checks.json"
    check(subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port",
                          str(free_port()), str(ROOT / "tests" / "distributed_checks.py"), str(out)],
                         cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600))
    results = json.loads(out.read_text())
    zero3, zero2 = results["zero3"], results["zero2"]
    assert zero3["local_student_elements"] < zero3["gathered_student_elements"]  # really partitioned
    for result in (zero3, zero2):
        assert result["world_size"] == 2
        assert result["ema_max_error"] < 1e-6
        assert result["centre_spread"] == 0.0 and result["centre_nonzero"] > 0
        assert result["teacher_spread"] == 0.0 and result["student_spread"] == 0.0
