"""launch/slurm_submit.py against a REAL SLURM cluster on this machine (slurmctld + slurmdbd +
MariaDB + munge, and two slurmd nodes, each in its own network + UTS namespace, started by
scripts/slurm_local_cluster.sh start --nodes 2): no mock of sbatch or submitit. Jobs are the tiny
pretraining on the sample shards with 2 CPU ranks (gloo): 2 tasks on one node, or 1 task on each
of the two nodes (rendezvous on the first node's address, across namespaces). Where network
namespaces are refused, the cluster is started with one node and the multi-node tests skip.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import CLUSTER_SCRIPT

pytestmark = pytest.mark.slow  # real training, clusters or servers: scripts/test.sh --fast skips them


ROOT = Path(__file__).resolve().parents[1]
SUBMIT = [sys.executable, str(ROOT / "launch" / "slurm_submit.py")]
STEPS = 16  # the straight run and the interrupted one train the same steps
CPU_JOB = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--time", "20", "--max-steps", str(STEPS),
           "train.checkpoint_every_steps=100"]
NODES = ("xkdnode1", "xkdnode2")  # the namespaced nodes of `start --nodes 2`
DIST_TIMEOUT_S = 20  # train.dist_timeout_s of the multi-node jobs: a silent peer fails a collective within it
# (below the cluster's SlurmdTimeout, 60 s: the job notices a dead node before slurmctld does)
# One task on each of the two nodes: world size 2, as CPU_JOB's two tasks on one node.
TWO_NODE_JOB = ["--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "1", "--time", "20"]
TIMEOUT = f"train.dist_timeout_s={DIST_TIMEOUT_S}"  # overrides go last (after every option)


def submit_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def job_ids() -> list[str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "-S", "2000-01-01"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def metrics(run_dir: Path) -> list[dict]:
    """The training rows of metrics.jsonl (the probe's step-0 baseline row has no loss)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row]


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


# ----------------------------------------------------------------------------- across nodes


def cluster(*args: str) -> str:
    result = subprocess.run(["bash", str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def node_states() -> dict[str, str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def losses(run_dir: Path) -> dict[int, float]:
    return {record["step"]: record["loss"] for record in metrics(run_dir)}


def test_cluster_nodes_are_namespaced_hosts(two_nodes):
    """Each node is its own host: own hostname and address; names resolve from every namespace."""
    status = cluster("status")
    for k, name in enumerate(NODES, start=1):
        assert f"node {name}: namespace {name}, hostname {name}, address 10.203.0.{10 + k}, slurmd running" in status
    out = subprocess.run(["srun", "-N", "2", "-n", "2", "bash", "-c",
                          'echo "$SLURM_PROCID $(hostname) $(hostname -I) $(getent hosts xkdnode1 | cut -d" " -f1)"'],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = sorted(line.split() for line in out.splitlines())
    assert rows == [["0", "xkdnode1", "10.203.0.11", "10.203.0.11"], ["1", "xkdnode2", "10.203.0.12", "10.203.0.11"]]


@pytest.fixture(scope="module")
def two_node_run(two_nodes, sample_shards, tmp_path_factory):
    """ZeRO-2 over gloo with one rank on each node, for the first half of the steps."""
    run = tmp_path_factory.mktemp("two_node") / "runs" / "tiny"
    result = subprocess.run(SUBMIT + TWO_NODE_JOB + ["--max-steps", str(STEPS // 2), "--data", str(sample_shards),
                                                     "--output", str(run), "--follow", "train.checkpoint_every_steps=100",
                                                     TIMEOUT],
                            cwd=ROOT, env=submit_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run, result.stdout


def test_two_node_job_trains_like_two_ranks_on_one_node(two_node_run, straight_run):
    import submitit

    run, output = two_node_run
    job_id = submitted_job(output)
    assert "2 node(s) x 1 task(s), world size 2" in output and "ended: COMPLETED" in output
    # The rendezvous host is the first node of SLURM's node list, reached from the other namespace.
    assert re.search(r"process group up in [\d.]+ s: gloo, world size 2 on 2 node\(s\) \(xkdnode1,xkdnode2\), "
                     rf"rendezvous xkdnode1:\d+, timeout {DIST_TIMEOUT_S}s", output), output[-3000:]
    results = submitit.SlurmJob(run / "slurm", job_id, tasks=[0, 1]).results()
    assert sorted((r["rank"], r["hostname"]) for r in results) == [(0, "xkdnode1"), (1, "xkdnode2")]
    # Same data order and the same losses as the 2-rank single-node run.
    reference = losses(straight_run[0])
    assert losses(run) == {step: reference[step] for step in range(1, STEPS // 2 + 1)}

    _, mlflow_run = the_mlflow_run(run)
    tags = mlflow_run.data.tags
    assert (tags["world_size"], tags["num_nodes"], tags["hosts"]) == ("2", "2", "xkdnode1,xkdnode2")
    assert mlflow_run.data.params["run.world_size"] == "2"


def test_two_node_checkpoint_resumes_on_one_node_with_two_ranks(two_node_run, straight_run, sample_shards):
    run, _ = two_node_run
    result = subprocess.run(SUBMIT + ["--data", str(sample_shards), "--output", str(run), "--follow"] + CPU_JOB
                            + [TIMEOUT],
                            cwd=ROOT, env=submit_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"resumed from {run}/checkpoints/step{STEPS // 2:08d}" in result.stdout
    assert "world size 2 on 1 node(s)" in result.stdout
    assert losses(run) == losses(straight_run[0])
    _, mlflow_run = the_mlflow_run(run)  # the same MLflow run, now on one node
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["num_nodes"] == "1"


def test_node_failures_requeue_and_resume_with_identical_losses(two_nodes, straight_run, sample_shards, tmp_path):
    """Node 2 fails twice during one two-node job: first every process of the job on it is killed
    (its slurmd survives: rank 0's collective fails at once), then the whole node goes down (link
    dark, slurmd and everything killed: srun ends the step, or rank 0 notices by gloo's timeout,
    train.dist_timeout_s). Each time the node is named in the log and the job requeues itself;
    SLURM restarts it when both nodes are up, it resumes from the last complete checkpoint, and the
    job finishes with the uninterrupted run's losses."""
    reference = losses(straight_run[0])
    run = tmp_path / "runs" / "tiny"
    process = subprocess.Popen(SUBMIT + TWO_NODE_JOB + ["--max-steps", str(STEPS), "--data", str(sample_shards),
                                                        "--output", str(run), "--follow", "train.checkpoint_every_steps=3",
                                                        TIMEOUT],
                               cwd=ROOT, env=submit_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    timings = {}
    try:
        wait_for(lambda: (run / "slurm").is_dir() and any((run / "slurm").glob("*_submitted.pkl")), "submission",
                 process=process)
        job_id = next((run / "slurm").glob("*_submitted.pkl")).name.split("_")[0]
        rank0_err = run / "slurm" / f"{job_id}_0_log.err"

        def last_step() -> int:
            return metrics(run)[-1]["step"] if (run / "metrics.jsonl").is_file() and metrics(run) else 0

        def fail_and_recover(fail: list[str], after: int, restart: int, recover: list[str] | None = None) -> int:
            wait_for(lambda: last_step() >= after, f"step {after}", process=process)
            checkpoint = int((run / "checkpoints" / "latest").read_text().removeprefix("step"))
            failed_at = time.time()
            cluster(*fail)
            wait_for(lambda: rank0_err.read_text().count("lost a peer of job") >= restart,
                     "rank 0 to requeue the job", limit_s=DIST_TIMEOUT_S + 120, process=process)
            timings[f"detected_{restart}"] = time.time() - failed_at
            if recover:
                cluster(*recover)
            # A requeued job waits ~2 minutes (BeginTime): let it start as soon as its nodes are up.
            wait_for(lambda: "BeginTime" in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"],
                                                           capture_output=True, text=True).stdout,
                     "the requeued job to be pending", limit_s=180, process=process)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True,
                           capture_output=True)
            wait_for(lambda: f"restart {restart}: launch/pretrain.py" in (run / "slurm" / f"{job_id}_0_log.out")
                     .read_text() and last_step() > checkpoint and (run / "metrics.jsonl").stat().st_mtime > failed_at
                     + timings[f"detected_{restart}"], "training again", limit_s=300, process=process)
            timings[f"training_again_{restart}"] = time.time() - failed_at
            return checkpoint

        # node-up is a no-op while node 2's slurmd runs (it should survive node-kill-jobs; once, in 3
        # runs, it did not answer after the kill, and the job waited for the node).
        first = fail_and_recover(["node-kill-jobs", "2"], after=5, restart=1, recover=["node-up", "2"])
        second = fail_and_recover(["node-down", "2"], after=first + 4, restart=2, recover=["node-up", "2"])
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            subprocess.run(["scancel", job_id], capture_output=True)
        cluster("node-up", "2")  # whatever happened, node 2 serves the next tests
    errors = rank0_err.read_text()
    assert process.returncode == 0, output[-6000:] + errors[-4000:]
    print(f"\n[multi-node figures] {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    # The dead peer is named: node-kill-jobs closes its sockets (gloo names its address), node-down
    # makes it silent (gloo's timeout; the node comes from the ranks' host list).
    reports = [line for line in errors.splitlines() if "lost a peer of job" in line]
    # 1st failure: rank 0's collective fails (gloo names the peer's address). 2nd: srun ends the step
    # when the node dies; the batch script finds the node gone (and rank 0 may have reported it too).
    assert len(reports) >= 2 and all("xkdnode2" in line for line in reports), reports
    assert re.search(rf"rank 0 on xkdnode1: lost a peer of job {job_id}: peer node xkdnode2 \(10\.203\.0\.12",
                     reports[0]), reports
    assert timings["detected_2"] < DIST_TIMEOUT_S + 60
    assert f"resumed from {run}/checkpoints/step{first:08d}" in output
    assert f"resumed from {run}/checkpoints/step{second:08d}" in output
    assert "ended: COMPLETED" in output and "restart 2: launch/pretrain.py" in output
    assert losses(run) == reference
    assert sorted({record["step"] for record in metrics(run)}) == list(range(1, STEPS + 1))
    _, mlflow_run = the_mlflow_run(run)
    assert mlflow_run.info.status == "FINISHED"
    assert (mlflow_run.data.tags["num_nodes"], mlflow_run.data.tags["hosts"]) == ("2", "xkdnode1,xkdnode2")
    assert set(node_states().values()) <= {"idle", "mixed"}, node_states()


def test_a_lost_peer_is_recognised_and_named(monkeypatch):
    """No cluster needed: gloo's errors for a dead peer are told apart from this rank's own bugs, and
    the peer's address is turned into its node's name and ranks (XKD_RANK_HOSTS, set at start-up)."""
    from xkd.distributed import describe_peer_failure
    from xkd.slurm import is_peer_failure

    closed = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:538] Read error "
                          "[127.0.0.1]:20194: Connection reset by peer")
    silent = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
                          "20000ms for recv operation to complete")
    assert is_peer_failure(closed) and is_peer_failure(silent)
    assert not is_peer_failure(ValueError("bad shape")) and not is_peer_failure(RuntimeError("CUDA out of memory"))
    import socket

    loopback = socket.gethostbyaddr("127.0.0.1")[0]  # "localhost" on most machines
    monkeypatch.setenv("XKD_RANK_HOSTS", f"{loopback},{loopback}")
    assert describe_peer_failure(closed) == f"peer node {loopback} (127.0.0.1, ranks 0,1)"
    monkeypatch.setenv("XKD_RANK_HOSTS", f"{socket.gethostname()},far-node")
    assert describe_peer_failure(silent) == "peer on far-node (address not in the error)"


def test_deepspeed_hostfile_launcher_across_nodes_without_ssh(two_nodes, straight_run, sample_shards, tmp_path):
    """Users without SLURM: the deepspeed launcher with a hostfile on each node (--no_ssh: this
    machine has no sshd/pdsh between the namespaces), rendezvous on the first node's host name."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{node} slots=1\n" for node in NODES))
    run = tmp_path / "runs" / "tiny"
    launcher = str(Path(sys.executable).parent / "deepspeed")
    processes = [subprocess.Popen(["bash", str(CLUSTER_SCRIPT), "node-exec", str(k + 1), launcher, "--hostfile",
                                   str(hostfile), "--no_ssh", "--node_rank", str(k), "--master_addr", NODES[0],
                                   "--master_port", "29511", "launch/pretrain.py", "--data", str(sample_shards),
                                   "--output", str(run), "--max-steps", str(STEPS), "train.checkpoint_every_steps=100",
                                   TIMEOUT],
                                  cwd=ROOT, env=submit_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for k in range(len(NODES))]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    assert "world size 2 on 2 node(s) (xkdnode1,xkdnode2), rendezvous xkdnode1:29511" in outputs[0]
    assert losses(run) == losses(straight_run[0])


def test_gres_strings_give_gpus_per_node():
    from xkd.slurm import gres_gpus

    assert [gres_gpus(g) for g in ("gpu:8", "gpu:v100:8(S:0-1)", "(null)", "gpu:a100:4,gpu:v100:2", "tmpdisk:100")] \
        == [8, 8, 0, 6, 0]


def test_nodes_alone_asks_the_cluster_for_its_gpus(slurm_cluster, sample_shards, tmp_path):
    """`slurm_submit.py --nodes 2` as typed: this CPU cluster has no GPUs, so a gloo job of one task per
    node; the tiny config's global batch of 8 is derived as 2 ranks x 4."""
    result = subprocess.run(SUBMIT + ["--nodes", "2", "--data", str(sample_shards), "--output", str(tmp_path / "run"),
                                      "--dry-run"], cwd=ROOT, env=submit_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--gpus-per-node auto: 0 per node (sinfo)" in result.stdout
    assert "#SBATCH --nodes=2" in result.stdout and "#SBATCH --ntasks-per-node=1" in result.stdout
    assert "--gpus-per-node=" not in result.stdout
    assert "# batch: global 8 = 2 ranks x micro-batch 4 x 1 accumulation step(s) (derived" in result.stdout
