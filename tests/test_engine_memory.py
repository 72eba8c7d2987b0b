"""benchmarks/engine_memory.py counts what ZeRO really holds: a 2-rank run on the tiny student,
checked against the bytes computed by hand from its parameter count."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from media import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_zero_memory_classes_match_hand_computed_bytes(tmp_path):
    out = tmp_path / "memory.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "benchmarks/engine_memory.py", "--config", "configs/tiny.yaml",
                             "--stages", "0,2", "--precisions", "bf16", "--master-port",
                             str(free_port()), "--json", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| bf16 | 2 |" in result.stdout
    rows = {(r["stage"], r["rank"]): r for r in json.loads(out.read_text())}
    params = rows[0, 0]["student_params"]
    # The benchmark counts what the engine holds; the model built here, without DeepSpeed, must agree.
    import torch

    from xkd.config import load_config
    from xkd.models import XKD

    torch.manual_seed(0)
    student = XKD(load_config(ROOT / "configs" / "tiny.yaml")).student
    assert params == sum(p.numel() for p in student.parameters() if p.requires_grad) > 0

    zero0 = rows[0, 0]["before_step"]
    assert zero0["weights_bytes"] == 2 * params  # bf16 module weights
    assert zero0["master_weights_bytes"] == 4 * params  # fp32 copies the optimizer steps
    assert zero0["adam_moments_bytes"] == 8 * params  # exp_avg + exp_avg_sq, fp32
    # bf16 .grad of every weight, plus a few hundred bytes of DeepSpeed scalars (norms, flags)
    assert zero0["gradients_bytes"] == pytest.approx(2 * params, rel=1e-3)
    assert "at_reduction" not in rows[0, 0]

    bucket = 2 * 50_000_000 * 2  # overlap_comm's two bf16 buckets of ds_configs/zero2.json
    for rank in (0, 1):
        zero2 = rows[2, rank]
        before, at_reduction = zero2["before_step"], zero2["at_reduction"]
        # Each rank owns half of the (alignment-padded) flat groups.
        assert before["master_weights_bytes"] == pytest.approx(4 * params / 2, rel=1e-3)
        assert before["adam_moments_bytes"] == pytest.approx(8 * params / 2, rel=1e-3)
        # This rank's half of the reduced bf16 gradients; DeepSpeed pads its partition buffers
        # (here by 2.6 % on rank 0, 3.9 % on rank 1).
        assert 2 * params / 2 <= before["gradients_bytes"] <= 1.05 * 2 * params / 2
        # During the reduction both full-size buckets are alive (the tiny model's gradients all sit
        # in the first one), never more than the buckets plus one full set of bf16 gradients.
        assert bucket <= at_reduction["gradients_bytes"] < bucket + 2 * params
        assert before["weights_bytes"] == pytest.approx(2 * params, rel=1e-3)  # ZeRO-2 keeps full weights
