"""scripts/mlflow_server.sh keeps to its own: a stale pid file never gets another process killed,
the store is private to the user, and the backend store URI (maybe with a database password)
is on no command line. One real server start (~20 s)."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "scripts" / "mlflow_server.sh"
WAIT = 300  # seconds: a bound on waiting, not a speed requirement


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server(command: str, state: Path, port: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SERVER), command], capture_output=True, text=True, timeout=WAIT,
                          env=dict(os.environ, XKD_MLFLOW_DIR=str(state), XKD_MLFLOW_PORT=str(port)))


def group_commands(pgid: int) -> dict[int, str]:
    """Live processes of process group ``pgid``: pid -> command line."""
    found = {}
    for proc_stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = proc_stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (proc_stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found[int(proc_stat.parent.name)] = cmdline
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_stop_with_a_stale_pid_file_kills_nothing(tmp_path):
    """The pid file names an unrelated process group leader (pid reuse after the server died)."""
    state = tmp_path / "state"
    state.mkdir()
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (state / "server.pid").write_text(f"{bystander.pid}\n")
        result = server("stop", state, free_port())
        time.sleep(0.5)
        assert bystander.poll() is None, "stop killed a process that is not the MLflow server"
        assert result.returncode == 0 and result.stdout.strip() == "stopped", result
        assert "stale pid file" in result.stderr and str(bystander.pid) in result.stderr
        assert not (state / "server.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.slow
def test_private_store_and_backend_uri_off_the_command_line(tmp_path):
    state, port = tmp_path / "store", free_port()  # the script creates the state directory
    started = server("start", state, port)
    assert started.returncode == 0, started.stdout + started.stderr
    url = started.stdout.strip()
    try:
        pid = int((state / "server.pid").read_text())
        again = server("start", state, port)  # the running server is recognised as ours and reused
        assert again.stdout.strip() == url and int((state / "server.pid").read_text()) == pid
        commands = group_commands(pid)
        assert pid in commands and "mlflow" in commands[pid]
        backend = f"sqlite:///{state}/mlflow.db"
        assert not [c for c in commands.values() if "mlflow.db" in c], commands  # visible to all in `ps`
        assert (state / "mlflow.db").is_file()  # ... yet the server uses it: it came through the environment
        assert server("status", state, port).stdout.startswith(f"running {url} (pid {pid}, store {backend})")

        from mlflow.tracking import MlflowClient

        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("private"))
        client.log_text(run.info.run_id, "hello", "note.txt")  # written by the server process
        (note,) = (state / "artifacts").rglob("note.txt")
        assert {p.name: mode(p) for p in (state, state / "artifacts", note.parent)} == {
            p.name: 0o700 for p in (state, state / "artifacts", note.parent)}
        assert {p.name: mode(p) for p in (state / "mlflow.db", state / "server.log", state / "server.pid", note)} \
            == {name: 0o600 for name in ("mlflow.db", "server.log", "server.pid", "note.txt")}
    finally:
        stopped = server("stop", state, port)
    assert stopped.stdout.strip() == "stopped" and "stale" not in stopped.stderr
    deadline = time.monotonic() + 10
    while group_commands(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_commands(pid)
    assert server("status", state, port).stdout.strip() == "stopped"
