"""The global batch is a paper hyperparameter: kept on any number of ranks, with the per-rank
micro-batch and gradient accumulation derived from the world size (issue: beyond one machine, 0)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from media import free_port
from test_pretrain import BIN, ROOT, TINY, check, metrics, run_env
from xkd.config import ConfigError, load_config
from xkd.engine.ds_config import per_rank_batch, resolve_ds_config

K400 = ROOT / "configs" / "xkd_ms_k400.yaml"


@pytest.mark.parametrize("world_size, expected", [
    (1, (32, 8)),    # 256 on one GPU: 32 per pass (the cap), 8 accumulation steps
    (8, (32, 1)),    # one 8-GPU node: the paper's setting
    (32, (8, 1)),    # 4 nodes x 8 GPUs
    (256, (1, 1)),
])
def test_paper_batch_on_any_world_size(world_size, expected):
    assert per_rank_batch(load_config(K400), world_size) == expected


def test_derived_micro_batch_is_the_largest_divisor_under_the_cap():
    config = load_config(K400, ["train.global_batch_size=240", "train.max_micro_batch_size=16"])
    assert per_rank_batch(config, 2) == (15, 8)  # 120 per rank: divisors <= 16 are ..., 12, 15
    assert per_rank_batch(load_config(TINY), 1) == (4, 2)
    assert per_rank_batch(load_config(TINY), 2) == (4, 1)
    assert per_rank_batch(load_config(TINY), 8) == (1, 1)


def test_impossible_combinations_name_what_would_work():
    with pytest.raises(ConfigError, match=r"\(256\) cannot be split evenly over 24 ranks; world sizes that fit: "
                                          r"1, 2, 4, 8, 16, 32, 64, 128, 256"):
        per_rank_batch(load_config(K400), 24)
    pinned = load_config(K400, ["train.micro_batch_size=32"])
    assert per_rank_batch(pinned, 4) == (32, 2)
    with pytest.raises(ConfigError, match=r"micro_batch_size \(32\) does not divide the per-rank batch 8 .*"
                                          r"micro-batches that fit: 1, 2, 4, 8, or train.micro_batch_size=0"):
        per_rank_batch(pinned, 32)


def test_ds_config_gets_the_derived_values():
    merged = resolve_ds_config(ROOT / "ds_configs" / "zero2.json", load_config(K400), world_size=32)
    assert (merged["train_batch_size"], merged["train_micro_batch_size_per_gpu"],
            merged["gradient_accumulation_steps"]) == (256, 8, 1)


@pytest.mark.slow
def test_slurm_dry_run_of_the_paper_config_on_four_gpu_nodes(tmp_path):
    result = subprocess.run([sys.executable, "launch/slurm_submit.py", "--nodes", "4", "--gpus-per-node", "8",
                             "--config", str(K400),
                             "--output", str(tmp_path / "run"), "--dry-run"], cwd=ROOT, env=run_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "#SBATCH --nodes=4" in result.stdout and "#SBATCH --ntasks-per-node=8" in result.stdout
    assert "# batch: global 256 = 32 ranks x micro-batch 8 x 1 accumulation step(s) (derived" in result.stdout


@pytest.mark.slow
def test_four_ranks_train_the_tiny_config_and_record_the_derived_batch(sample_shards, tmp_path):
    """torchrun with 4 ranks (2 per core here): global 8 = 4 x 2; the run records what was derived."""
    run = tmp_path / "run"
    result = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "4", "--master_port", str(free_port()),
                             str(ROOT / "launch" / "pretrain.py"), "--data", str(sample_shards), "--output", str(run),
                             "--max-steps", "2"], cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    check(result)
    assert "global batch 8 on 4 ranks: micro-batch 2 x 1 accumulation steps per rank (derived" in result.stderr
    assert [r["samples_seen"] for r in metrics(run)] == [8, 16]
    meta = json.loads((run / "checkpoints" / "step00000002" / "xkd_meta.json").read_text())
    assert meta["world_size"] == 4 and meta["config"]["train"]["micro_batch_size"] == 2
    from mlflow.tracking import MlflowClient

    mlflow_run = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}").get_run((run / "mlflow_run_id").read_text())
    assert mlflow_run.data.params["config.train.micro_batch_size"] == "2"
    assert mlflow_run.data.params["run.micro_batch_derived"] == "True"
    assert mlflow_run.data.params["deepspeed.gradient_accumulation_steps"] == "1"
