"""The real SLURM test cluster as pytest fixtures (loaded by conftest.py, so one cluster serves the
whole session): ``scripts/slurm_local_cluster.sh start --nodes 2`` runs slurmctld + slurmdbd + MariaDB +
munge and two slurmd nodes, each in its own network + UTS namespace. Where namespaces are refused
the cluster starts with one node and ``two_nodes`` skips with the reason."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm_local_cluster.sh"
MULTI_NODE = {"nodes": 1, "why": ""}  # what the session's cluster has


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The local cluster, started (or reused) by the real script; SLURM_CONF for every client."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get, daemons with SlurmUser=root)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm")
    script = CLUSTER_SCRIPT
    # Two namespaced nodes serve every test: one-node jobs land on one of them.
    result = subprocess.run(["bash", str(script), "start", "--nodes", "2"], capture_output=True, text=True,
                            timeout=1200)
    MULTI_NODE["nodes"] = 2
    if result.returncode != 0 and re.search(r"network namespace|bridge|needs iproute2", result.stderr):
        MULTI_NODE.update(nodes=1, why=f"network namespaces refused here: {result.stderr.strip()[-300:]}")
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



@pytest.fixture(scope="session")
def two_nodes(slurm_cluster) -> str:
    if MULTI_NODE["nodes"] < 2:
        pytest.skip(f"no multi-node cluster: {MULTI_NODE['why']}")
    return slurm_cluster
