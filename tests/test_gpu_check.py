"""scripts/gpu_check.sh on a machine without a GPU, and the driver logic of benchmarks/gpu_check.py.

The GPU checks themselves need a GPU; here: the no-GPU exit (code 2, a clear message, a JSON
report saying so), the budget / failure bookkeeping with stand-in checks, and that the configs
and DeepSpeed settings the checks use load and resolve.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import gpu_check


def _run_script(tmp_path: Path, force: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if force:
        env["XKD_GPU_CHECK_FORCE_NO_GPU"] = "1"
    else:
        env.pop("XKD_GPU_CHECK_FORCE_NO_GPU", None)
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--json", str(tmp_path / "report.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("force", [True, False], ids=["forced", "this-machine"])
def test_no_gpu_exits_2_with_a_clear_message_and_a_report(tmp_path, force):
    if not force and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the real no-GPU path is covered by the forced case")
    result = _run_script(tmp_path, force)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: no CUDA GPU is visible"), result.stderr
    assert "Traceback" not in result.stderr
    if not force:
        assert "needs one GPU" in result.stderr and "srun --gpus=1" in result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "no_gpu" and report["checks"] == {} and "no CUDA GPU" in report["error"]


def test_checks_are_recorded_passed_failed_errored_and_skipped_past_the_budget(capsys):
    def failing():
        gpu_check.require(False, "loss scale never moved")

    def broken():
        raise RuntimeError("No available kernel. Aborting execution.")

    results = gpu_check.run_checks([
        ("ok", lambda: {"mfu": 0.41, "peak_memory_gib": 12.5}, 10),
        ("bad", failing, 10),
        ("boom", broken, 10),
    ])
    assert results["ok"]["status"] == "passed" and results["ok"]["mfu"] == 0.41
    assert results["bad"] == {**results["bad"], "status": "failed", "error": "loss scale never moved"}
    assert results["boom"]["status"] == "error" and "No available kernel" in results["boom"]["error"]
    assert "Traceback" in results["boom"]["traceback"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[gpu_check] ok") and "PASSED" in printed[0] and "mfu=0.41" in printed[0]
    assert "FAILED" in printed[1] and "loss scale never moved" in printed[1]
    skipped = gpu_check.run_checks([("late", lambda: {}, 10)], budget_s=0)
    assert skipped["late"]["status"] == "skipped"


def test_main_reports_failures_with_exit_1_and_refuses_unknown_checks(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "no_gpu_reason", lambda: None)
    monkeypatch.setattr(gpu_check, "checks", lambda shards: [("env", lambda: {"device": "fake"}, 5),
                                                            ("dali", lambda: gpu_check.require(False, "off cuda:0"), 5)])
    report = tmp_path / "r.json"
    assert gpu_check.main(["--json", str(report)]) == 1
    data = json.loads(report.read_text())
    assert data["status"] == "failed" and data["failed"] == ["dali"] and data["checks"]["env"]["device"] == "fake"
    assert gpu_check.main(["--json", str(report), "--only", "env"]) == 0
    assert json.loads(report.read_text())["status"] == "passed"
    assert gpu_check.main(["--json", str(report), "--only", "nope"]) == 2
    assert "unknown checks ['nope']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_checks_configs_load_and_resolve(precision):
    from xkd.engine.ds_config import resolve_ds_config

    config = gpu_check.vit_config(gpu_check.VITL_CONFIG, precision, 8)
    assert config.model.video_encoder == "large" and config.train.precision == precision
    ds = resolve_ds_config(gpu_check.ZERO2, config, 1, device_type="cuda")
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 1
    assert ds[precision]["enabled"] is True
    assert resolve_ds_config(gpu_check.ZERO3, gpu_check.vit_config(gpu_check.VITB_CONFIG, precision, 2), 1,
                             device_type="cuda")["zero_optimization"]["stage"] == 3
    checkpointed = gpu_check.vit_config(gpu_check.VITL_CONFIG, precision, 8, activation_checkpointing=True)
    assert checkpointed.model.activation_checkpointing is True


def test_peak_flops_by_device_name():
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.peak_flops("Tesla V100-SXM2-32GB") == 125e12
    assert gpu_check.peak_flops("Some Future GPU") is None


SMOKE = """
import json, sys
from benchmarks import gpu_check as g
tiny = g.ROOT / "configs" / "tiny.yaml"
out = {{
    "train": g.check_train("fp32", steps=3, micro_batch=2, config_path=tiny),
    "zero3": g.check_zero3_resume(steps=1, micro_batch=2, config_path=tiny, precision="fp32"),
    "eval": g.check_eval(steps=2, micro_batch=2, config_path=tiny, size=32, frames=8),
    "zero2_ddp": g.check_zero2_vs_ddp(steps=3, micro_batch=2, config_path=tiny, precision="fp32"),
    "dali": g.check_dali({shards!r}, batches=2, batch_size=2, device="cpu"),
}}
print("RESULT " + json.dumps(out, default=str))
"""


@pytest.mark.slow
def test_the_gpu_checks_run_on_cpu_with_the_tiny_config(sample_shards):
    """The training, ZeRO-3 resume, evaluation and ZeRO-2/DDP checks are the GPU code with the
    device taken from the process: on CPU with configs/tiny.yaml they run end to end (one gloo
    rank), and the DALI check compares the CPU backend with itself on the sample shards, so a GPU
    session spends its minutes on the GPU, not on the script's own mistakes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "benchmarks")}  # gpu_check's siblings
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-c", SMOKE.format(shards=str(sample_shards))], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    train = out["train"]
    assert len(train["losses"]) == 3 and train["losses"][-1] < train["losses"][0]
    assert train["model_tflops_per_step"] > 0 and train["peak_memory_gib"] is None  # no CUDA memory on CPU
    assert out["zero3"]["weights_equal"] and out["zero3"]["loss_resumed"] == out["zero3"]["loss_uninterrupted"]
    assert out["zero3"]["max_weight_diff_after_step"] == 0.0  # CPU kernels are deterministic
    assert len(out["eval"]["finetune_losses"]) == 2 and out["eval"]["feature_min_cosine_vs_fp32"] > 0.99
    assert out["zero2_ddp"]["zero2_step_s"] > 0 and out["zero2_ddp"]["ddp_step_s"] > 0
    dali = out["dali"]  # the CPU backend against itself at paper geometry: the comparison and the timing run
    assert dali["batches_compared"] == 2 and dali["frame_mean_abs"] == 0.0 and dali["samples_per_s"] > 0
