"""make_shards.py --slurm against the REAL SLURM cluster (two namespaced nodes, tests/slurm_cluster.py):
a job array transcodes, one job packs, and the output is byte-identical to a one-machine run with
the same arguments, also when an array task is killed mid-run."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xkd.data import format as fmt
from xkd.data.build_shards import ordered_inputs
from xkd.data.inputs import scan_folder
from xkd.data.prepared_clips import RESULT_NAME, PreparedClips
from xkd.data.slurm_shards import task_ranges

pytestmark = pytest.mark.slow  # real training, clusters or servers: scripts/test.sh --fast skips them

REPO = Path(__file__).resolve().parents[1]
MAKE_SHARDS = [sys.executable, str(REPO / "data_prep" / "make_shards.py")]
ARGS = ["--shard-size", "3", "--workers", "2", "--short-side", "96", "--no-progress"]  # 2 CPUs: a whole node per task
SLURM = ["--slurm", "--nodes", "2", "--time", "10"]
OUTPUT_FILES = (fmt.JOURNAL_NAME, fmt.MANIFEST_NAME, fmt.SKIPPED_NAME)


def make_shards(*args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MAKE_SHARDS, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"make_shards {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """The bundled sample clips, four generated 20 s clips (so a task is still busy when it is killed)
    and two broken files."""
    root = tmp_path_factory.mktemp("clips")
    shutil.copytree(REPO / "data" / "sample" / "av", root, dirs_exist_ok=True)
    (root / "generated").mkdir()
    for k in range(4):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
                        "-f", "lavfi", "-i", f"sine=frequency={300 + 100 * k}:sample_rate=16000", "-t", "20",
                        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(root / "generated" / f"g{k}.mp4")],
                       check=True)
    (root / "broken").mkdir()
    (root / "broken" / "empty.mp4").write_bytes(b"")
    (root / "broken" / "text.mp4").write_text("not a video\n" * 10)
    return root


@pytest.fixture(scope="module")
def one_machine(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "shards"
    make_shards("--input", clips, "--output", out, *ARGS)
    return out


def assert_identical(out: Path, reference: Path) -> None:
    names = sorted(p.name for p in reference.iterdir() if p.is_file())
    assert names == sorted(p.name for p in out.iterdir() if p.is_file())
    assert set(OUTPUT_FILES) <= set(names) and any(name.endswith(".tar") for name in names)
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs from one machine"
    area = PreparedClips(out).root
    assert sorted(p.name for p in area.iterdir()) == ["slurm"], "the work area was not cleaned (logs stay)"


def squeue_empty() -> bool:
    return not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()


def wait_for(condition, what: str, limit_s: float = 300) -> None:
    deadline = time.time() + limit_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def prepared_in(out: Path, start: int, end: int) -> int:
    store = PreparedClips(out)
    return sum((store.clip_dir(p) / RESULT_NAME).is_file() for p in range(start, end))


def submitted(stdout: str) -> tuple[str, str]:
    match = re.search(r"transcoding array (\d+) with .* and packing job (\d+)", stdout)
    assert match, stdout
    return match.group(1), match.group(2)


def kill_task(array: str, task: int) -> int:
    """SIGKILL the python processes of array task ``task`` (the task and its workers; their ffmpeg die
    with them), as an OOM kill or crash would. ``scancel`` would not do: submitit lets a task finish
    on SIGTERM, within SLURM's kill wait."""
    wanted = {b"SLURM_ARRAY_JOB_ID=" + array.encode(), b"SLURM_ARRAY_TASK_ID=" + str(task).encode()}
    killed = 0
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or not (proc / "comm").read_text().startswith("python"):
                continue
            if wanted <= set((proc / "environ").read_bytes().split(b"\0")):
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            continue
    assert killed, f"no process of task {array}_{task} found"
    return killed


def the_busiest_range(clips: Path) -> tuple[int, tuple[int, int]]:
    """The task whose range holds most of the long generated clips (so it is still running when killed)."""
    ordered = ordered_inputs(scan_folder(clips), 0)
    ranges = task_ranges(len(ordered), 2)
    longs = [sum(ordered[p].source.startswith("generated/") for p in range(*r)) for r in ranges]
    task = max(range(2), key=lambda t: longs[t])
    return task, ranges[task]


def test_dry_run_prints_the_plan_and_writes_nothing(clips, tmp_path):
    out = tmp_path / "never"
    proc = make_shards("--input", clips, "--output", out, *ARGS, *SLURM, "--dry-run")
    assert "#SBATCH --array=0-1%2" in proc.stdout and "#SBATCH --cpus-per-task=2" in proc.stdout
    assert "#SBATCH --dependency='afterany:<array job id>'" in proc.stdout
    assert re.search(r"task 0: inputs 0\.\.6 \(7\)", proc.stdout) and re.search(r"task 1: inputs 7\.\.13 \(7\)",
                                                                                 proc.stdout)
    assert not out.exists()
    refused = make_shards("--input", clips, "--output", out, "--dry-run", check=False)
    assert refused.returncode == 2 and "--dry-run and --follow go with --slurm" in refused.stderr


def test_two_node_array_gives_the_bytes_of_one_machine(two_nodes, clips, one_machine, tmp_path):
    out = tmp_path / "slurm"
    proc = make_shards("--input", clips, "--output", out, *ARGS, *SLURM, "--follow")
    assert "with 2 of 2 task(s) [0, 1]" in proc.stdout
    assert re.search(r"done: \d+ samples in \d+ shards, 4 skipped of 14 inputs", proc.stdout), proc.stdout
    assert_identical(out, one_machine)
    logs = "".join(p.read_text() for p in (PreparedClips(out).root / "slurm").glob("*_log.err"))
    assert {"on xkdnode1", "on xkdnode2"} <= set(re.findall(r"on xkdnode\d", logs)), logs  # one task per node
    again = make_shards("--input", clips, "--output", out, *ARGS, *SLURM)
    assert "already complete" in again.stdout


def test_a_killed_task_is_finished_by_the_packer(two_nodes, clips, one_machine, tmp_path):
    out = tmp_path / "killed"
    task, (start, end) = the_busiest_range(clips)
    array, pack = submitted(make_shards("--input", clips, "--output", out, *ARGS, *SLURM).stdout)
    wait_for(lambda: prepared_in(out, start, end) >= 1, f"a first clip of task {task}")
    local = make_shards("--input", clips, "--output", out, *ARGS, check=False)  # a second packer: refused
    assert local.returncode == 2 and "being built by SLURM jobs still queued or running" in local.stderr
    kill_task(array, task)
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", f"{array}_{task}"], capture_output=True,
                                        text=True).stdout.strip(), "the killed task to end", 120)
    assert prepared_in(out, start, end) < end - start, "the task finished before it was killed"
    # Attaches to the running build (or finds it complete): submits nothing.
    follow = make_shards("--input", clips, "--output", out, *ARGS, *SLURM, "--follow")
    assert "submitted" not in follow.stdout, follow.stdout
    assert f"packing job {pack}: COMPLETED" in follow.stdout or "already complete" in follow.stdout, follow.stdout
    assert_identical(out, one_machine)


def test_a_killed_task_is_resubmitted_alone_by_the_same_command(two_nodes, clips, one_machine, tmp_path):
    out = tmp_path / "rerun"
    task, (start, end) = the_busiest_range(clips)
    array, pack = submitted(make_shards("--input", clips, "--output", out, *ARGS, *SLURM).stdout)
    subprocess.run(["scancel", pack], check=True)  # no packer: the rerun must do the rest
    wait_for(lambda: prepared_in(out, start, end) >= 1, f"a first clip of task {task}")
    kill_task(array, task)
    wait_for(squeue_empty, "the array to end", 300)
    left = end - start - prepared_in(out, start, end)
    assert left > 0, "the task finished before it was killed"
    plan = json.loads((PreparedClips(out).root / "plan.json").read_text())
    assert plan["array_job"] == array and plan["pack_job"] == pack
    rerun = make_shards("--input", clips, "--output", out, *ARGS, *SLURM, "--follow")
    assert f"with 1 of 2 task(s) [{task}]" in rerun.stdout, rerun.stdout
    assert_identical(out, one_machine)
    new_array = submitted(rerun.stdout)[0]
    log = next((PreparedClips(out).root / "slurm").glob(f"{new_array}_*log.err")).read_text()
    assert f"{left} to transcode" in log, log  # only what the killed task had not finished
