"""launch/slurm_submit.py against a REAL one-node SLURM cluster (slurmctld + slurmd + slurmdbd +
MariaDB + munge on localhost, started by scripts/slurm_local_cluster.sh): no mock of sbatch or
submitit. Jobs are the tiny pretraining on the sample shards with 2 CPU tasks (gloo).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SUBMIT = [sys.executable, str(ROOT / "launch" / "slurm_submit.py")]
STEPS = 16  # the straight run and the interrupted one train the same steps
CPU_JOB = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--time", "20", "--max-steps", str(STEPS),
           "train.checkpoint_every_steps=100"]


def submit_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The local cluster, started (or reused) by the real script; SLURM_CONF for every client."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get, daemons with SlurmUser=root)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm")
    script = ROOT / "scripts" / "slurm_local_cluster.sh"
    result = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{script} start failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    conf = re.search(r"^SLURM_CONF=(.+)$", result.stdout, re.M).group(1)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if "reusing the running cluster" not in result.stdout:  # leave a cluster we did not start running
        subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=120)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def job_ids() -> list[str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "-S", "2000-01-01"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def submitted_job(output: str) -> str:
    return re.search(r"submitted job (\d+)", output).group(1)


def the_mlflow_run(run_dir: Path):
    """The only MLflow run of the store beside ``run_dir`` (xkd/tracking.py's default sqlite store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir.parent / 'mlruns.db'}")
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    assert len(runs) == 1, [run.info.run_id for run in runs]
    assert runs[0].info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
    return client, runs[0]


def wait_for(condition, what: str, limit_s: float = 300, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + limit_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the job ended while waiting for {what}:\n{process.stdout.read()[-4000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_dry_run_prints_a_multi_node_gpu_script_and_submits_nothing(tmp_path):
    """No cluster needed: --nodes 4 --gpus-per-node 8 gives nodes=4, ntasks-per-node=8, gpus-per-node=8."""
    run = tmp_path / "runs" / "k400"
    result = subprocess.run(SUBMIT + ["--nodes", "4", "--gpus-per-node", "8", "--partition", "learnfair",
                                      "--constraint", "volta32gb", "--time", "3-00:00:00", "--mem", "480G",
                                      "--account", "xkd", "--qos", "high", "--output", str(run), "--dry-run",
                                      "train.precision=fp16", "train.global_batch_size=128"],
                            cwd=ROOT, env=dict(submit_env(), SLURM_CONF="/nonexistent/slurm.conf"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=10", "#SBATCH --partition=learnfair", "#SBATCH --constraint=volta32gb",
                 "#SBATCH --time=4320", "#SBATCH --mem=480G", "#SBATCH --account=xkd", "#SBATCH --qos=high",
                 "#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 f"#SBATCH --output={run}/slurm/%j_0_log.out"):
        assert line in script.splitlines(), line
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "-m submitit.core._submit" in srun and f"{run}/slurm/%j_%t_log.out" in srun
    assert "world size 32" in script and "NCCL" in script
    task = next(line for line in script.splitlines() if "launch/pretrain.py" in line and "--resume auto" in line)
    assert f"--output {run}" in task and "train.precision=fp16" in task
    assert not run.exists()  # nothing written, nothing submitted


def test_rendezvous_ports_are_agreed_and_stay_out_of_the_ephemeral_range(monkeypatch):
    """Every task derives the same port from the job id (a requeue gets another one), and never one
    that an outgoing connection of the node may hold (a CI run once failed with EADDRINUSE on 40882)."""
    from xkd.distributed import discover, rendezvous_port

    ephemeral_low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [rendezvous_port(str(job), restart) for job in range(1, 3000) for restart in range(3)]
    assert max(ports) < ephemeral_low and min(ports) >= 1024
    assert rendezvous_port("4", 0) == rendezvous_port("4", 0) != rendezvous_port("4", 1)

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "4")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # no scontrol call for the first node
    env = discover()  # srun without submitit
    assert (env.rank, env.world_size, env.launcher) == (1, 2, "slurm")
    assert env.master_port == rendezvous_port("4", 1) and os.environ["MASTER_PORT"] == str(env.master_port)


def test_bad_partition_or_missing_config_fails_before_submitting(slurm_cluster, tmp_path):
    before = job_ids()
    run = tmp_path / "run"
    bad_partition = subprocess.run(SUBMIT + CPU_JOB + ["--partition", "no_such_partition", "--output", str(run)],
                                   cwd=ROOT, env=submit_env(), capture_output=True, text=True, timeout=120)
    assert bad_partition.returncode == 2
    assert "--partition 'no_such_partition' does not exist on this cluster (sinfo lists: debug)" in bad_partition.stderr
    missing = subprocess.run(SUBMIT + CPU_JOB + ["--config", str(tmp_path / "nope.yaml"), "--output", str(run)],
                             cwd=ROOT, env=submit_env(), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert f"--config {tmp_path / 'nope.yaml'}: no such file" in missing.stderr
    no_gpus = subprocess.run(SUBMIT + ["--gpus-per-node", "2", "--output", str(run)], cwd=ROOT, env=submit_env(),
                             capture_output=True, text=True, timeout=120)
    assert no_gpus.returncode == 2 and "partition 'debug' has no GPUs" in no_gpus.stderr
    assert job_ids() == before
    assert not run.exists()


@pytest.fixture(scope="module")
def straight_run(slurm_cluster, sample_shards, tmp_path_factory):
    """A 2-task job of the tiny pretraining, submitted with --follow and never interrupted."""
    run = tmp_path_factory.mktemp("straight") / "runs" / "tiny"
    result = subprocess.run(SUBMIT + CPU_JOB + ["--data", str(sample_shards), "--output", str(run), "--follow"],
                            cwd=ROOT, env=submit_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run, result.stdout


def test_two_task_job_trains_both_ranks_into_one_mlflow_run(straight_run):
    import submitit

    run, output = straight_run
    job_id = submitted_job(output)
    assert f"rank 0 log: {run}/slurm/{job_id}_0_log.out" in output
    assert "MLflow: run " in output and "ended: COMPLETED" in output
    assert [record["step"] for record in metrics(run)] == list(range(1, STEPS + 1))

    # Each task returned its outcome through submitit: both ranks reached the last step.
    results = submitit.SlurmJob(run / "slurm", job_id, tasks=[0, 1]).results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["step"] == STEPS and r["world_size"] == 2 and r["launcher"] == "submitit-slurm" for r in results)
    tag = run / "checkpoints" / f"step{STEPS:08d}"
    for name in ("COMPLETE", "rng_rank0.pt", "rng_rank1.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        assert (tag / name).is_file(), name

    client, mlflow_run = the_mlflow_run(run)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["world_size"] == "2"
    assert mlflow_run.data.tags["slurm_job_id"] == job_id
    assert mlflow_run.data.params["run.world_size"] == "2"
    assert mlflow_run.data.params["run.launcher"] == "submitit-slurm"
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "loss")] == list(range(1, STEPS + 1))


def test_requeued_twice_resumes_and_matches_the_straight_run(straight_run, sample_shards, tmp_path):
    """`scontrol requeue` (SIGTERM: checkpoint and exit, SLURM requeues), then SLURM's time-limit
    warning (USR2, as `#SBATCH --signal` sends it: checkpoint, rank 0 requeues the job itself).
    The job comes back twice, resumes from each checkpoint, finishes all steps with the same
    losses as the uninterrupted run, in the same MLflow run."""
    reference = {record["step"]: record["loss"] for record in metrics(straight_run[0])}
    run = tmp_path / "runs" / "tiny"
    process = subprocess.Popen(SUBMIT + CPU_JOB + ["--data", str(sample_shards), "--output", str(run), "--follow"],
                               cwd=ROOT, env=submit_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        wait_for(lambda: (run / "slurm").is_dir() and any((run / "slurm").glob("*_submitted.pkl")), "submission",
                 process=process)
        job_id = next((run / "slurm").glob("*_submitted.pkl")).name.split("_")[0]

        def logged() -> int:
            return len(metrics(run)) if (run / "metrics.jsonl").is_file() else 0

        def interrupt_and_restart(command: list[str], after: int) -> int:
            wait_for(lambda: logged() >= after, f"{after} logged steps", process=process)
            subprocess.run(command, check=True, capture_output=True)
            # A requeued job waits ~2 minutes (BeginTime): let it start again now.
            wait_for(lambda: "BeginTime" in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"],
                                                           capture_output=True, text=True).stdout,
                     "the requeued job to be pending", limit_s=120, process=process)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True,
                           capture_output=True)
            return int((run / "checkpoints" / "latest").read_text().removeprefix("step"))

        first = interrupt_and_restart(["scontrol", "requeue", job_id], after=3)
        second = interrupt_and_restart(["scancel", "--signal=USR2", job_id], after=first + 3)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            subprocess.run(["scancel", job_id], capture_output=True)
    assert process.returncode == 0, output[-6000:]
    assert 3 <= first < second < STEPS, (first, second)
    assert f"stopped by SIGTERM at step {first}/{STEPS}" in output
    assert f"stopped by SIGUSR2 at step {second}/{STEPS}" in output and f"requeueing job {job_id}" in output
    assert "restart 2: launch/pretrain.py" in output
    assert f"resumed from {run}/checkpoints/step{first:08d}" in output
    assert f"resumed from {run}/checkpoints/step{second:08d}" in output
    assert "ended: COMPLETED" in output

    # Same number of steps as the straight run, and the same losses (exact resume, fp32 on CPU).
    resumed = metrics(run)
    assert sorted({record["step"] for record in resumed}) == list(range(1, STEPS + 1))
    for record in resumed:
        assert record["loss"] == reference[record["step"]], (record["step"], record["loss"])
    assert (run / "checkpoints" / "latest").read_text() == f"step{STEPS:08d}"

    client, mlflow_run = the_mlflow_run(run)  # one run, continued across both requeues
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["world_size"] == "2"
    steps = sorted({m.step for m in client.get_metric_history(mlflow_run.info.run_id, "loss")})
    assert steps == list(range(1, STEPS + 1))
