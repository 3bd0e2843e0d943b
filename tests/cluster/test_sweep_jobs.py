"""The fine-tuning sweep (``jobs/sweep.py``) on the CI SLURM: a 2-node Ray cluster job logging to
an MLflow tracking server job, as on a real cluster.

One MLflow server job (``slurm/mlflow_server.sbatch``) and one Ray cluster job
(``slurm/ray_cluster.sbatch``, -N2, one Ray node per SLURM node) whose driver is the demo sweep
cut down to 4 scratch seeds of a 4-step fine-tune. Each Ray node offers 2 CPUs and 4 one-CPU
trials run at once, so no node can hold them all: the trials must be spread over both nodes.

Where a trial ran: the fake nodes share this host and its IP, so Tune's ``node_ip``/``hostname``
cannot tell them apart. Each trial's ``pid`` in its ``result.json`` is that of the Ray worker that
ran it, and Ray's log of that worker (``python-core-worker-<worker id>_<pid>.log`` in the
session's logs) names the Ray node it belonged to, one of the two the job's ``ray status`` lists.
Each Ray node's raylet logged its node id with its pid (``raylet*.out``), and while the job ran
the test read every job process's ``SLURMD_NODENAME`` from /proc: that ties the Ray nodes to
the SLURM nodes n1 and n2.
"""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netutil import free_port
from slurmutil import REPO, job_info, sbatch, wait_mlflow_server, wait_state

pytestmark = pytest.mark.slurm
pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

SEEDS = [0, 1, 2, 3]
TRIALS = {f"scratch-s{s}" for s in SEEDS}
EXPERIMENT = "contra-finetune"
METRIC = "eval/mesh_al_mean3d_cm"
SWEEP_TIMEOUT = 600  # s for the Ray job (40-80 s on 2 cores)
CONTRA = Path(sys.executable).parent / "contra"


@dataclass
class Sweep:
    job_id: str
    info: dict[str, str]
    log: Path
    storage: Path  # storage_path; the sweep directory is storage / "demo"
    uri: str  # the tracking server's
    processes: dict[int, str]  # pid → SLURM node of the job's processes, seen while it ran


# ------------------------------------------------------------------------------- services
def cancel(job_id: str) -> None:
    """scancel and wait until the job and its steps are gone (their processes with them)."""
    subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if job_info(job_id).get("JobState", "") not in {"PENDING", "RUNNING", "COMPLETING",
                                                        "CONFIGURING", "SUSPENDED"}:
            return
        time.sleep(0.5)


def job_processes(job_id: str) -> dict[int, str]:
    """Processes on this host (all fake nodes) started under the job: pid → the SLURM node
    (``SLURMD_NODENAME``) of the step that started it."""
    needle = f"SLURM_JOB_ID={job_id}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in env:
                node = [v for v in env if v.startswith(b"SLURMD_NODENAME=")]
                found[int(proc.name)] = node[0].split(b"=", 1)[1].decode() if node else "?"
    return found


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-sweep")


@pytest.fixture(scope="module")
def tracking_server(job_env: dict[str, str], work: Path) -> Iterator[str]:
    """An MLflow server job answering ``/health``: its URI (``http://<node>:<port>``)."""
    log = work / "mlflow.out"
    env = {**job_env, "MLFLOW_DIR": str(work / "store"), "MLFLOW_PORT": str(free_port())}
    jid = sbatch(REPO / "slurm" / "mlflow_server.sbatch", [], env=env, cwd=work,
                 options=["--mem=2G", "--cpus-per-task=1", "--time=30", f"--output={log}",
                          f"--error={log}"])
    try:
        uri = wait_mlflow_server(jid, work / "store" / f"server-{jid}.uri", log)
        assert f"tracking URI: {uri}" in log.read_text()
        yield uri
    finally:
        cancel(jid)


# ---------------------------------------------------------------------------------- sweep
def driver(storage: Path, uri: str, data: Path) -> list[str]:
    """The driver command of the Ray job: the demo sweep, 4 scratch seeds, 4 steps each."""
    overrides = [f"data.root={data}", "max_steps=4", "eval.every_steps=2", "workers=0",
                 "data.image_size=32", "batch_size=8", "mano_root=standin", "log_every=1",
                 "checkpoint.every_steps=2", "eval.figure_samples=1"]
    return ["python", "jobs/sweep.py", "--config", "configs/sweep/demo.yaml",
            f"storage_path={storage}", f"tracking_uri={uri}", "modes=[scratch]",
            f"seeds=[{','.join(map(str, SEEDS))}]", "resources.cpu=1",
            "max_concurrent_trials=4", "pretrained.checkpoints=[]",
            "overrides=[" + ",".join(overrides) + "]"]


@pytest.fixture(scope="module")
def sweep(job_env: dict[str, str], work: Path, tracking_server: str,
          synth_root: Path) -> Iterator[Sweep]:
    """The 2-node Ray job running the sweep to its end (COMPLETED, else the test fails)."""
    log, storage = work / "sweep.out", work / "sweeps"
    # 2 Ray CPUs per node from a 1-CPU allocation per node (beside the server job's CPU on a 2-core
    # fake node; the fake nodes share this host's cores anyway); a free GCS port: other Ray
    # instances may run on this host
    env = {**job_env, "RAY_OBJECT_STORE_MB": "100", "RAY_START_ARGS": "--num-cpus 2",
           "RAY_PORT": str(free_port())}
    jid = sbatch(REPO / "slurm" / "ray_cluster.sbatch",
                 driver(storage, tracking_server, synth_root / "freihand"), env=env, cwd=REPO,
                 options=["-N2", "--ntasks-per-node=1", "--cpus-per-task=1", "--mem=6G",
                          "--time=15", "--job-name=contra-sweep-ci", f"--output={log}",
                          f"--error={log}"])
    t0, seen = time.monotonic(), {}
    try:
        # while it runs, note the SLURM node of every process of the job (the raylets among them)
        while time.monotonic() < t0 + SWEEP_TIMEOUT and job_info(jid).get("JobState") in {
                "PENDING", "CONFIGURING", "RUNNING"}:
            seen.update(job_processes(jid))
            time.sleep(1)
        info = wait_state(jid, {"COMPLETED"}, 60, log)
        print(f"sweep job {jid}: {time.monotonic() - t0:.0f} s")
        yield Sweep(jid, info, log, storage, tracking_server, seen)
    finally:
        cancel(jid)


def ray_nodes(text: str) -> set[str]:
    """The Ray node ids the job's ``ray status`` listed as active before the driver started."""
    status = text.split("Node status", 1)[-1].split("=== ", 1)[0]
    return set(re.findall(r"^ +1 node_([0-9a-f]+)$", status, re.M))


def worker_node(pid: int, nodes: set[str]) -> set[tuple[str, Path]]:
    """(Ray node id, session logs dir) of this job's worker with ``pid``, from Ray's core-worker
    logs (any session under the Ray temp dir; a pid reused by another Ray instance there has a
    foreign node id)."""
    roots = {Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray", Path("/tmp/ray")}
    found = set()
    for root in roots:
        for f in root.glob(f"session_*/logs/python-core-worker-*_{pid}.log"):
            m = re.search(r"Initializing worker at address: .* node_id=([0-9a-f]+)",
                          f.read_text(errors="replace"))
            if m and m.group(1) in nodes:
                found.add((m.group(1), f.parent.resolve()))  # session_latest: a link
    return found


def raylet_pids(logs: Path) -> dict[str, int]:
    """Ray node id → pid of its raylet, from the raylets' logs of the session."""
    out = {}
    for f in logs.glob("raylet*.out"):
        m = re.search(r"^\[[^\]]* I (\d+) \d+\] \(raylet\) .*Setting node ID node_id=([0-9a-f]+)",
                      f.read_text(errors="replace"), re.M)
        if m:
            out[m.group(2)] = int(m.group(1))
    return out


def results(sweep: Sweep) -> dict[str, list[dict]]:
    """Tune's results of each trial (``<sweep>/tune/<trial>/result.json``, one JSON a line)."""
    out = {}
    for f in sorted((sweep.storage / "demo" / "tune").glob("*/result.json")):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line]
    return out


def sweep_runs(uri: str) -> tuple[list, list]:
    """(parent runs, every other run) of the fine-tune experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, f"no experiment {EXPERIMENT} at {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("stage") != "sweep"]


# ---------------------------------------------------------------------------------- tests
def test_sweep_job_completes_over_both_nodes(sweep: Sweep) -> None:
    text = sweep.log.read_text()
    assert sweep.info["JobState"] == "COMPLETED" and sweep.info["ExitCode"] == "0:0", text[-4000:]
    assert f"[sweep] demo: 4 trials (0 checkpoint(s) × ['scratch'] × seeds {SEEDS})" in text
    assert text.count("[sweep] done ") == 4 and "[sweep] 4 trials, 0 failed" in text, text[-4000:]
    assert "[sweep] retry" not in text and "[sweep] error" not in text

    # the shared-filesystem check ran (2 nodes alive when the driver started) and passed
    nodes = ray_nodes(text)
    assert len(nodes) == 2, f"Ray nodes before the driver: {nodes}\n{text[-4000:]}"
    assert "not on a shared filesystem" not in text
    sweep_dir = sweep.storage / "demo"
    assert json.loads((sweep_dir / "sweep.json").read_text())["tracking_uri"] == sweep.uri
    assert not list(sweep_dir.glob(".shared-*"))  # its probe file was removed

    # every trial finished its 4 steps, and they ran on both Ray nodes (= both SLURM nodes)
    found = results(sweep)
    assert set(found) == TRIALS, sorted(found)
    placed: dict[str, set[str]] = {}  # trial → Ray node ids
    sessions = set()
    for name, lines in found.items():
        assert lines and lines[-1]["step"] == 4, (name, lines[-1:] and lines[-1])
        for pid in {line["pid"] for line in lines}:
            node = worker_node(pid, nodes)
            assert len(node) == 1, f"trial {name}: worker pid {pid} in the logs of {nodes}: {node}"
            placed.setdefault(name, set()).add(next(iter(node))[0])
            sessions.add(next(iter(node))[1])
    assert set().union(*placed.values()) == nodes, f"trials per Ray node: {placed}"
    # … and the two Ray nodes are the two SLURM nodes: each one's raylet ran in that node's step
    assert len(sessions) == 1, sessions
    raylets = raylet_pids(sessions.pop())
    slurm_node = {node: sweep.processes.get(raylets.get(node, -1)) for node in nodes}
    assert sorted(slurm_node.values()) == ["n1", "n2"], (slurm_node, raylets)
    on = {name: sorted(slurm_node[n] for n in ids) for name, ids in sorted(placed.items())}
    print(f"trials on SLURM nodes: {on}")
    for name in TRIALS:
        run_dir = sweep_dir / "trials" / name
        assert (run_dir / "run.json").is_file() and (run_dir / "checkpoints" / "last.pt").is_file()

    # nothing of the job is left on the host: its Ray daemons and workers ended with it
    deadline = time.monotonic() + 60
    while job_processes(sweep.job_id) and time.monotonic() < deadline:
        time.sleep(1)
    assert not job_processes(sweep.job_id), f"processes left by job {sweep.job_id}"


def test_sweep_logged_one_parent_and_four_finished_children(sweep: Sweep) -> None:
    parents, others = sweep_runs(sweep.uri)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["seeds"]) == SEEDS
    kids = [r for r in others if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == 4 and len(others) == 4, [r.info.run_name for r in others]
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert sorted(k.data.tags["seed"] for k in kids) == [str(s) for s in SEEDS]
    assert {k.data.tags["table1_row"] for k in kids} == {"scratch"}
    for kid in kids:
        assert METRIC in kid.data.metrics, kid.data.metrics


def test_contra_report_reads_the_sweep_from_the_server(sweep: Sweep, work: Path) -> None:
    probe = subprocess.run([str(CONTRA), "report", "--help"], capture_output=True, text=True,
                           timeout=120) if CONTRA.exists() else None
    if probe is None or probe.returncode != 0:
        pytest.skip("`contra report` is missing (`contra report --help` fails): the Table 1 "
                    "report of the sweep is not checked")
    (parent,), others = sweep_runs(sweep.uri)
    kids = [r for r in others if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    out = work / "report"
    proc = subprocess.run([str(CONTRA), "report", "--experiment", EXPERIMENT, "--tracking-uri",
                           sweep.uri, "--sweep", parent.info.run_id, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader((out / "table1.csv").open()))
    assert [r["row"] for r in rows] == ["scratch"], rows
    row = rows[0]
    assert (row["n_seeds"], row["n_expected"], row["seeds"]) == ("4", "4", "0;1;2;3"), row
    values = [k.data.metrics[METRIC] for k in kids]  # MLflow's latest value of each child
    assert float(row["mesh_al_cm_mean"]) == pytest.approx(statistics.mean(values), rel=1e-9)
    assert float(row["mesh_al_cm_std"]) == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert set(row["run_ids"].split(";")) == {k.info.run_id for k in kids}
    assert "| Scratch | none |" in proc.stdout and "| 4/4 |" in proc.stdout, proc.stdout
