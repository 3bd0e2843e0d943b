"""The submitit glue every training stage shares: cluster options, executor, dry run, task base.

Three layers (dinov2's ``run/submit.py`` pattern): this file knows SLURM and submitit but no
training; each stage's launcher (``jobs/pretrain.py``, ``jobs/finetune.py``) is a task class that
only names its stage and entry point, plus a ``main`` that calls :func:`launch`; the training loop
(``contra.<stage>.main(argv) -> int``) knows nothing about who started it and only answers 0
(done), 2 (user error) or 75 (checkpointed after a signal, requeue me).

Nothing here imports training code at import time: the launcher runs on a login node, and the
entry point is imported inside the task, on the compute node.

Preemption / time limit: SLURM sends USR2 to every task ``--signal-delay-s`` before the limit (up
to 30 s earlier: slurmctld checks limits every 30 s; ``scancel --signal=USR2 <jobid>`` and
``job._interrupt()`` do the same by hand).  While training runs, the training loop owns
USR1/USR2/SIGTERM: all ranks agree on a step, save ``last.pt`` together and return 75.  The loop
then restores submitit's handlers, and rank 0 re-raises USR2 to itself,
so that submitit's own handler pickles ``checkpoint()`` (this same object: the state is in the
file) and runs ``scontrol requeue``; the other ranks exit.  A signal that arrives outside the
training loop (start-up, final save) goes straight to submitit's handler, which is just as
correct, because the training state is only ever what ``last.pt`` holds.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import submitit

from contra.preempt import EXIT_PREEMPTED  # torch-free: the launcher stays light

__all__ = ["StageTask", "build_parser", "build_task", "launch", "make_executor", "parse_args",
           "sbatch_script", "submit_job", "wait_job"]


def _preempt_signal() -> signal.Signals:
    """The signal submitit's job handler listens to (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _run_dir_override(overrides: list[str]) -> str | None:
    """The last ``run_dir=`` override (the config's own parser also lets the last one win)."""
    found = None
    for item in overrides:
        if item.startswith("run_dir="):
            found = item.split("=", 1)[1]
    return found


# -------------------------------------------------------------------------------------- task
class StageFailed(RuntimeError):
    """A task's stage ended with a failure code: ``exit N: <the line for the user>``."""


class StageTask(submitit.helpers.Checkpointable):
    """What every task of a job runs: ``<entry>.main(argv)`` under submitit's job environment.

    A stage subclass sets only :attr:`stage` and :attr:`entry`.  Only rank 0's instance is
    pickled on preemption; it holds no training state (that lives in
    ``run_dir/checkpoints/last.pt``), so resubmitting the same object resumes the run, and the
    job id (hence the default run dir) survives the requeue.
    """

    stage: ClassVar[str]  #: run dirs default to ``<runs_root>/<stage>-<jobid>``
    entry: ClassVar[str]  #: module whose ``main(argv) -> int`` trains, e.g. ``contra.pretrain``

    def __init__(self, config: str, overrides: list[str], runs_root: str) -> None:
        self.config = config
        self.overrides = list(overrides)
        self.runs_root = runs_root

    def run_dir(self, job_id: str) -> str:
        """A ``run_dir=`` override, else ``<runs_root>/<stage>-<jobid>`` (same after a requeue)."""
        return _run_dir_override(self.overrides) or os.path.join(
            self.runs_root, f"{self.stage}-{job_id}")

    def argv(self, job_id: str) -> list[str]:
        """The entry point's arguments; ``run_dir`` is always explicit so restarts find it."""
        argv = ["--config", self.config, *self.overrides]
        if _run_dir_override(self.overrides) is None:
            argv.append(f"run_dir={self.run_dir(job_id)}")
        return argv

    def command(self, job_id: str) -> str:
        """The equivalent shell command (for logs and the dry run)."""
        return f"python -m {self.entry} {shlex.join(self.argv(job_id))}"

    def entry_main(self) -> Callable[[list[str]], int]:
        """Import the training code only here, inside the task, never in the launcher."""
        return importlib.import_module(self.entry).main

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)
        if "OMP_NUM_THREADS" not in os.environ and os.environ.get("SLURM_CPUS_PER_TASK"):
            os.environ["OMP_NUM_THREADS"] = os.environ["SLURM_CPUS_PER_TASK"]
        print(f"contra job {env.job_id}: rank {dist_env.rank}/{dist_env.world_size} "
              f"(local {dist_env.local_rank}) master {dist_env.master_addr}:{dist_env.master_port}"
              f"\ncontra job {env.job_id}: {self.command(env.job_id)}", flush=True)
        rc = self.entry_main()(self.argv(env.job_id))
        if rc == 0:
            return self.run_dir(env.job_id)
        if rc == EXIT_PREEMPTED:
            self._requeue(dist_env.rank)
        from contra.entry import last_error  # the one line the stage printed, if it did

        why = last_error() or (f"{self.entry} exited with code {rc} on rank {dist_env.rank}; "
                               f"see this task's log (run dir {self.run_dir(env.job_id)})")
        raise StageFailed(f"exit {rc}: {why}")

    def _requeue(self, rank: int) -> None:
        """After the collective save (exit 75): let submitit checkpoint and requeue the job."""
        if rank != 0:
            # no result pickle for this task: the requeued job writes the real one
            sys.exit(EXIT_PREEMPTED)
        sig = _preempt_signal()
        handler = signal.getsignal(sig)
        if not callable(handler):  # not under submitit's job runner (e.g. called directly)
            sys.exit(EXIT_PREEMPTED)
        print(f"contra: checkpointed on a signal; handing over to submitit ({sig.name}) to requeue",
              flush=True)
        signal.raise_signal(sig)  # submitit: checkpoint() -> pickle -> requeue -> sys.exit
        time.sleep(5)  # the handler runs at the next bytecode; never fall through to a "result"
        raise RuntimeError("submitit's signal handler returned without requeueing the job")


# ------------------------------------------------------------------------------------ parser
def build_parser(stage: str, *, prog: str | None = None,
                 description: str | None = None) -> argparse.ArgumentParser:
    """The cluster options, the same for every stage; only names and help texts mention it."""
    p = argparse.ArgumentParser(
        prog=prog or f"jobs/{stage}.py", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Trailing key=value arguments are config overrides for contra.{stage}.")
    p.add_argument("--config", required=True, help=f"{stage} config (YAML)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="default: --gpus-per-node (one task per GPU), or 1 without GPUs")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--mem-gb", type=int, default=None, help="memory per node (default: cluster's)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--constraint", default=None)
    p.add_argument("--timeout-min", type=int, default=240)
    p.add_argument("--signal-delay-s", type=int, default=180,
                   help="USR2 this long before the time limit (time to reach a step and save)")
    p.add_argument("--max-requeues", type=int, default=20,
                   help="how many time-limit requeues submitit allows (max_num_timeout)")
    p.add_argument("--name", default=f"contra-{stage}", help="job name")
    p.add_argument("--log-dir", default="runs/submitit",
                   help="submitit folder; each job logs to LOG_DIR/<jobid>/")
    p.add_argument("--runs-root", default="runs",
                   help=f"run dirs default to RUNS_ROOT/{stage}-<jobid>")
    p.add_argument("--python", default=None, help="interpreter on the nodes (default: this one)")
    p.add_argument("--local", action="store_true", help="run here with submitit's local executor")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def parse_args(stage: str, argv: list[str] | None = None, *, prog: str | None = None,
               description: str | None = None) -> argparse.Namespace:
    """Parse and check the launcher's arguments; errors end with argparse's usage line (exit 2)."""
    p = build_parser(stage, prog=prog, description=description)
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"overrides must look like key=value, got {bad[0]!r}")
    if args.tasks_per_node is None:
        args.tasks_per_node = args.gpus_per_node or 1
    if args.local and args.nodes != 1:
        p.error("--local runs on this machine: use --nodes 1 (and --tasks-per-node N)")
    if not Path(args.config).is_file():
        p.error(f"config {args.config} not found")
    return args


# ---------------------------------------------------------------------------------- executor
def _slurm_parameters(args: argparse.Namespace, task: StageTask | None) -> dict[str, Any]:
    setup = [
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{args.cpus_per_task}}}",
        "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}",
    ]
    if task is not None:  # submitit's script only names its own runner: say what the tasks run
        command = " ".join(task.command("${SLURM_JOB_ID}").splitlines())  # stays one comment
        setup.insert(0, f"# every task runs: {command}")
    params: dict[str, Any] = dict(slurm_signal_delay_s=args.signal_delay_s, slurm_setup=setup)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(args, key):
            params[f"slurm_{key}"] = getattr(args, key)
    return params


def make_executor(args: argparse.Namespace, cluster: str | None = None,
                  task: StageTask | None = None) -> submitit.AutoExecutor:
    """An executor for ``args``: SLURM when ``sbatch`` is on PATH (or asked for), else local."""
    python = args.python or sys.executable
    if cluster is None:
        cluster = "local" if args.local or shutil.which("sbatch") is None else "slurm"
    ex = submitit.AutoExecutor(folder=os.path.join(args.log_dir, "%j"), cluster=cluster,
                               slurm_max_num_timeout=args.max_requeues, slurm_python=python,
                               local_python=python)
    params: dict[str, Any] = dict(
        name=args.name, nodes=args.nodes, tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    if cluster == "slurm":
        params.update(_slurm_parameters(args, task))
    ex.update_parameters(**params)
    return ex


def sbatch_script(ex: submitit.AutoExecutor) -> str:
    """The script submitit would hand to sbatch (its log folder still reads %j)."""
    inner = ex._executor  # submitit has no public API for this
    return inner._make_submission_file_text(inner._submitit_command_str, uid="dry-run")


# ---------------------------------------------------------------------------------- submit
def build_task(task_cls: type[StageTask], args: argparse.Namespace) -> StageTask:
    """Absolute paths: the job may start in another directory than the launcher."""
    return task_cls(str(Path(args.config).resolve()), args.overrides,
                    str(Path(args.runs_root).resolve()))


def _pickle_code_by_value(task: StageTask) -> None:
    """Ship jobs/ inside the job's pickle: the nodes need not import jobs/ from anywhere.

    cloudpickle already does so for ``__main__``; the other modules (this one, a launcher that
    was imported rather than run) are files, not an installed package.
    """
    import cloudpickle

    for name in {StageTask.__module__, type(task).__module__} - {"__main__"}:
        cloudpickle.register_pickle_by_value(sys.modules[name])


def submit_job(task: StageTask, args: argparse.Namespace) -> submitit.Job:
    """Submit ``task`` as described by ``args`` and print where everything goes."""
    _pickle_code_by_value(task)
    job = make_executor(args, task=task).submit(task)
    print(f"submitted job {job.job_id} ({'local' if args.local else job.__class__.__name__}): "
          f"{args.nodes} node(s) × {args.tasks_per_node} task(s)")
    print(f"  run dir:  {task.run_dir(job.job_id)}  (checkpoints/, config.yaml, mlflow.db)")
    print(f"  logs:     {job.paths.folder}/  (one <jobid>_<rank>_log.out/.err per task)")
    print(f"  follow:   tail -f {job.paths.stdout}")
    if not args.local:
        print(f"  status:   squeue -j {job.job_id}   cancel: scancel {job.job_id}")
    return job


def wait_job(job: submitit.Job) -> int:
    """Block until the job ends; print rank 0's result (the run dir), or one error line and the
    task's code when it was contra's user-error code 2 (1 for anything else)."""
    try:
        results = job.results()  # one per task; raises the first task failure
    except Exception as exc:  # submitit re-raises the task's failure with its traceback
        found = re.findall(r"StageFailed: exit (\d+): (.*)", str(exc))
        if not found:
            print(f"contra: error: job {job.job_id} failed:\n{exc}", file=sys.stderr)
            return 1
        code, why = found[-1]
        print(f"contra: error: job {job.job_id} failed: {why}", file=sys.stderr)
        return 2 if code == "2" else 1
    print(f"job {job.job_id} finished: {results[0]}")
    return 0


def launch(task_cls: type[StageTask], argv: list[str] | None = None, *,
           description: str | None = None) -> int:
    """A stage launcher's whole ``main``: parse, then dry-run, or submit (and maybe wait).

    ``description`` may be the launcher's module docstring: ``--help`` shows its first paragraph.
    """
    summary = description.split("\n\n")[0] if description else None
    args = parse_args(task_cls.stage, argv, description=summary)
    task = build_task(task_cls, args)
    if args.dry_run:
        print(sbatch_script(make_executor(args, cluster="slurm", task=task)), end="")
        return 0
    job = submit_job(task, args)
    return wait_job(job) if args.wait else 0
