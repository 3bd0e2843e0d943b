"""The CI SLURM itself, and the Ray / MLflow service jobs of slurm/ answering on it."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest
from slurmutil import REPO, SLURM_UP, sbatch, wait_mlflow_server, wait_state

pytestmark = pytest.mark.slurm


def test_slurm_up_is_idempotent(slurm: None) -> None:
    out = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "n1" in out.stdout and "n2" in out.stdout
    hosts = subprocess.run(["srun", "-N2", "-n2", "bash", "-c", "echo $SLURMD_NODENAME"],
                           capture_output=True, text=True, timeout=60)
    assert sorted(hosts.stdout.split()) == ["n1", "n2"]


def test_mlflow_server_job_answers(job_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "mlflow.out"
    env = {**job_env, "MLFLOW_DIR": str(tmp_path / "store")}
    jid = sbatch(REPO / "slurm" / "mlflow_server.sbatch", [], env=env, cwd=tmp_path,
                 options=["--mem=2G", "--cpus-per-task=1", f"--output={log}", f"--error={log}"])
    try:
        uri = wait_mlflow_server(jid, tmp_path / "store" / f"server-{jid}.uri", log)
        assert uri.startswith("http://n1:")  # the node's name: reachable from the other nodes
        assert "tracking URI: http://n1:" in log.read_text()
        # the API answers requests addressed to the node name (allowed Host header)
        req = urllib.request.Request(f"{uri}/api/2.0/mlflow/experiments/search",
                                     data=b'{"max_results": 5}',
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert b'"Default"' in r.read()
    finally:
        subprocess.run(["scancel", jid], timeout=30)
    wait_state(jid, {"CANCELLED", "COMPLETED"}, timeout=60)


DRIVER = """
import ray
ray.init(address="auto")
alive = [n for n in ray.nodes() if n["Alive"]]
print(f"RAY nodes={len(alive)} cpus={ray.cluster_resources().get('CPU')}")
@ray.remote
def one():
    return 1
print("RAY tasks", sum(ray.get([one.remote() for _ in range(4)])))
"""


def test_ray_cluster_job_runs_driver(job_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "ray.out"
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**job_env, "RAY_OBJECT_STORE_MB": "100"}
    jid = sbatch(REPO / "slurm" / "ray_cluster.sbatch", ["python", "driver.py"], env=env,
                 cwd=tmp_path, options=["-N2", "--cpus-per-task=1", "--mem=2G", "--time=5",
                                        f"--output={log}", f"--error={log}"])
    info = wait_state(jid, {"COMPLETED"}, timeout=240, log=log)
    text = log.read_text()
    assert info["ExitCode"] == "0:0"
    assert "RAY nodes=2 cpus=2.0" in text, text  # head on n1 + worker on n2, 1 CPU each
    assert "RAY tasks 4" in text
