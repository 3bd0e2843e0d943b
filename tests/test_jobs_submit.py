"""jobs/submit.py, the submitit glue every stage shares, without a cluster.

The parser, run-dir and argv rules, the dry-run script, that the launchers stay free of training
code, and the task's exit-code hand-over (0 → result, 75 → submitit requeues, else a failure),
run for real through submitit's local executor with a stand-in entry point.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"


def _jobs_module(name: str) -> ModuleType:
    """jobs/ holds scripts, not a package: import them the way `python jobs/x.py` finds them."""
    if str(JOBS) not in sys.path:
        sys.path.insert(0, str(JOBS))
    return importlib.import_module(name)


submit = _jobs_module("submit")
pretrain = _jobs_module("pretrain")
finetune = _jobs_module("finetune")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "stage.yaml"
    path.write_text("seed: 0\n")  # the launcher only checks that the file exists
    return path


# ------------------------------------------------------------------------------------ parser
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_parser_defaults_name_the_stage(stage: str, config: Path) -> None:
    args = submit.parse_args(stage, ["--config", str(config)])
    assert args.name == f"contra-{stage}"
    assert (args.nodes, args.tasks_per_node, args.cpus_per_task) == (1, 1, 8)
    assert (args.timeout_min, args.signal_delay_s, args.max_requeues) == (240, 180, 20)
    assert (args.log_dir, args.runs_root) == ("runs/submitit", "runs")
    assert args.overrides == [] and not (args.local or args.dry_run or args.wait)
    assert f"contra.{stage}" in submit.build_parser(stage).format_help()


def test_parser_is_one_parser_for_every_stage() -> None:
    def options(stage: str) -> list[str]:
        return sorted(a.dest for a in submit.build_parser(stage)._actions)

    assert options("pretrain") == options("finetune")


def test_tasks_per_node_defaults_to_one_per_gpu(config: Path) -> None:
    args = submit.parse_args("finetune", ["--config", str(config), "--gpus-per-node", "4"])
    assert args.tasks_per_node == 4
    args = submit.parse_args("finetune", ["--config", str(config), "--gpus-per-node", "4",
                                          "--tasks-per-node", "1", "lr=0.1", "run_dir=x"])
    assert args.tasks_per_node == 1 and args.overrides == ["lr=0.1", "run_dir=x"]


@pytest.mark.parametrize(("extra", "message"), [
    (["lr"], "overrides must look like key=value, got 'lr'"),
    (["--local", "--nodes", "2"], "--local runs on this machine"),
])
def test_bad_arguments_stop_with_usage(extra: list[str], message: str, config: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        submit.parse_args("finetune", ["--config", str(config), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_config_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        finetune.main(["--config", str(tmp_path / "nope.yaml"), "--dry-run"])
    assert f"config {tmp_path / 'nope.yaml'} not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- run dir, argv
def test_run_dir_defaults_to_runs_root_stage_and_job_id() -> None:
    task = finetune.FinetuneJob("/c.yaml", ["lr=0.1"], "/runs")
    assert task.run_dir("123") == "/runs/finetune-123"
    assert task.argv("123") == ["--config", "/c.yaml", "lr=0.1", "run_dir=/runs/finetune-123"]
    assert pretrain.PretrainJob("/c.yaml", [], "/runs").run_dir("7") == "/runs/pretrain-7"


def test_run_dir_override_wins_and_is_passed_once() -> None:
    task = finetune.FinetuneJob("/c.yaml", ["run_dir=/a", "lr=1", "run_dir=/b"], "/runs")
    assert task.run_dir("123") == "/b"  # the last one, as the config parser reads them
    assert task.argv("123") == ["--config", "/c.yaml", "run_dir=/a", "lr=1", "run_dir=/b"]
    assert task.command("9") == "python -m contra.finetune --config /c.yaml run_dir=/a lr=1 " \
                                "run_dir=/b"


def test_build_task_makes_paths_absolute(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(config.parent)
    args = submit.parse_args("finetune", ["--config", config.name, "--runs-root", "out"])
    task = submit.build_task(finetune.FinetuneJob, args)
    assert task.config == str(config) and task.runs_root == str(config.parent / "out")


# ---------------------------------------------------------------------------------- dry run
def test_dry_run_prints_the_sbatch_script_of_the_stage(config: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = finetune.main(["--config", str(config), "--nodes", "2", "--gpus-per-node", "4",
                        "--partition", "gpu", "--runs-root", "/r", "--log-dir", "/l",
                        "--dry-run", "init.mode=scratch"])
    script = capsys.readouterr().out
    assert rc == 0
    for line in ("#SBATCH --job-name=contra-finetune", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@180",
                 "#SBATCH --output=/l/%j/%j_0_log.out",
                 f"# every task runs: python -m contra.finetune --config {config} "
                 "init.mode=scratch 'run_dir=/r/finetune-${SLURM_JOB_ID}'",
                 "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}"):
        assert line in script.splitlines(), line
    assert "-m submitit.core._submit /l/%j" in script


def test_dry_run_keeps_a_multiline_override_in_the_comment(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pretrain.main(["--config", str(config), "--dry-run", "note=a\nrm -rf x"])
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("rm -rf") for line in lines)
    assert any(line.startswith("# every task runs: python -m contra.pretrain") for line in lines)


def test_launchers_stay_free_of_training_code() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pretrain, finetune; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('contra.')))")
    out = subprocess.run([sys.executable, "-c", code, str(JOBS)], capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['contra.preempt']"
    for script in ("pretrain.py", "finetune.py"):
        help_ = subprocess.run([sys.executable, str(JOBS / script), "--help"],
                               capture_output=True, text=True, timeout=60, check=True).stdout
        assert f"usage: jobs/{script}" in help_ and "--gpus-per-node" in help_


# -------------------------------------------------------------------- exit-code hand-over
ENTRY = """
import os
from pathlib import Path

def main(argv):
    run_dir = Path(argv[-1].split("=", 1)[1])
    run_dir.mkdir(parents=True, exist_ok=True)
    calls = len(list(run_dir.glob("call-*")))
    (run_dir / f"call-{calls}").write_text(" ".join(argv))
    codes = [int(c) for c in os.environ["FAKE_CODES"].split(",")]
    if os.environ.get("FAKE_ERROR"):  # a stage that stops on a user error, as contra's do
        from contra.config import ConfigError
        from contra.entry import guarded

        def fail():
            raise ConfigError(os.environ["FAKE_ERROR"])
        return guarded(fail)
    return codes[min(calls, len(codes) - 1)]
"""


class FakeJob(submit.StageTask):
    """A stage whose entry point returns the exit codes $FAKE_CODES, one per call."""

    stage = "fake"
    entry = "fake_stage_entry"


def _run_local(tmp_path: Path, config: Path, codes: str,
               monkeypatch: pytest.MonkeyPatch) -> tuple[int, Path]:
    (tmp_path / "fake_stage_entry.py").write_text(textwrap.dedent(ENTRY))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    monkeypatch.setenv("FAKE_CODES", codes)
    args = submit.parse_args("fake", [
        "--config", str(config), "--local", "--cpus-per-task", "1", "--timeout-min", "5",
        "--log-dir", str(tmp_path / "logs"), "--runs-root", str(tmp_path / "runs")])
    job = submit.submit_job(submit.build_task(FakeJob, args), args)
    return submit.wait_job(job), tmp_path / "runs" / f"fake-{job.job_id}"


def test_exit_75_hands_over_to_submitit_which_requeues(
        tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, run_dir = _run_local(tmp_path, config, "75,0", monkeypatch)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"job {run_dir.name.removeprefix('fake-')} finished: {run_dir}" in out
    assert f"  run dir:  {run_dir}  (checkpoints/, config.yaml, mlflow.db)" in out
    assert "  follow:   tail -f " in out and "status:" not in out  # local: no squeue line
    calls = sorted(p.read_text() for p in run_dir.glob("call-*"))
    assert calls == [f"--config {config} run_dir={run_dir}"] * 2  # the same run, resumed
    log = next((tmp_path / "logs").glob("*/*_0_log.out")).read_text()
    assert "contra: checkpointed on a signal; handing over to submitit (SIGUSR2)" in log


def test_other_exit_codes_fail_the_job_with_the_entry_named(
        tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, run_dir = _run_local(tmp_path, config, "2", monkeypatch)
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1, err  # one line, the user-error code
    assert err[0].startswith("contra: error: job ") and err[0].endswith(
        f" failed: fake_stage_entry exited with code 2 on rank 0; see this task's log (run dir "
        f"{run_dir})")
    assert len(list(run_dir.glob("call-*"))) == 1  # no requeue
    rc, _ = _run_local(tmp_path, config, "3", monkeypatch)
    assert rc == 1 and "exited with code 3" in capsys.readouterr().err


def test_a_stage_user_error_reaches_the_launcher_as_its_one_line(
        tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The stage's own ``contra: error:`` line (contra.entry.guarded) is what --wait prints."""
    monkeypatch.setenv("FAKE_ERROR", "/data/HanCo/meta.json: field 'has_fit': expected a list")
    rc, _ = _run_local(tmp_path, config, "2", monkeypatch)
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].endswith(" failed: /data/HanCo/meta.json: field 'has_fit': expected a list")
    log = next((tmp_path / "logs").glob("*/*_0_log.err")).read_text()
    assert log.count("contra: error: /data/HanCo/meta.json: field 'has_fit'") == 1
