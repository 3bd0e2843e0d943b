"""Submit MoCo pretraining to SLURM (or run it locally) with submitit.

    python jobs/pretrain.py --config configs/pretrain/multiview.yaml --nodes 4 --gpus-per-node 4 \\
        --partition gpu --timeout-min 1440 batch_size=1024

One task per GPU (``--tasks-per-node`` defaults to ``--gpus-per-node``, or 1 without GPUs).  Every
task runs :class:`PretrainJob`, which exports the torch.distributed variables through
``submitit.helpers.TorchDistributedEnvironment`` and calls the same entry point as
``slurm/pretrain.sbatch`` (``contra.pretrain.main``).  The run directory defaults to
``runs/pretrain-<jobid>``; the job id stays the same when SLURM requeues the job, so a requeued job
resumes from ``checkpoints/last.pt`` there (and from the same MLflow run).

Preemption / time limit: SLURM sends USR2 to every task ``--signal-delay-s`` before the limit
(``scancel --signal=USR2 <jobid>`` and ``job._interrupt()`` do the same).  While training runs,
the training loop owns USR1/USR2/SIGTERM: all ranks agree on a step, save ``last.pt`` together
and return 75.  The loop then restores submitit's handlers, and rank 0 re-raises USR2 to itself,
so that submitit's own handler pickles ``checkpoint()`` (this same object: the state is in the
file) and runs ``scontrol requeue``; the other ranks exit.  A signal that arrives outside the
training loop (start-up, final save) goes straight to submitit's handler, which is just as
correct, because the training state is only ever what ``last.pt`` holds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from contra.preempt import EXIT_PREEMPTED  # torch-free: the launcher stays light


def _preempt_signal() -> signal.Signals:
    """The signal submitit's job handler listens to (USR2 unless SUBMITIT_PREEMPT_SIGNAL says)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class PretrainJob(submitit.helpers.Checkpointable):
    """What every task of the job runs: ``contra.pretrain`` under submitit's job environment.

    Only rank 0's instance is pickled on preemption; it holds no training state (that lives in
    ``run_dir/checkpoints/last.pt``), so resubmitting the same object resumes the run.
    """

    def __init__(self, config: str, overrides: list[str], runs_root: str) -> None:
        self.config = config
        self.overrides = list(overrides)
        self.runs_root = runs_root

    def run_dir(self, job_id: str) -> str:
        for item in self.overrides:
            if item.startswith("run_dir="):
                return item.split("=", 1)[1]
        return os.path.join(self.runs_root, f"pretrain-{job_id}")

    def argv(self, job_id: str) -> list[str]:
        argv = ["--config", self.config, *self.overrides]
        if not any(item.startswith("run_dir=") for item in self.overrides):
            argv.append(f"run_dir={self.run_dir(job_id)}")
        return argv

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)
        if "OMP_NUM_THREADS" not in os.environ and os.environ.get("SLURM_CPUS_PER_TASK"):
            os.environ["OMP_NUM_THREADS"] = os.environ["SLURM_CPUS_PER_TASK"]
        argv = self.argv(env.job_id)
        print(f"contra job {env.job_id}: rank {dist_env.rank}/{dist_env.world_size} "
              f"(local {dist_env.local_rank}) master {dist_env.master_addr}:{dist_env.master_port}"
              f"\ncontra job {env.job_id}: python -m contra.pretrain {shlex.join(argv)}",
              flush=True)

        from contra.pretrain import main

        rc = main(argv)
        if rc == 0:
            return self.run_dir(env.job_id)
        if rc == EXIT_PREEMPTED:
            self._requeue(dist_env.rank)
        raise RuntimeError(f"contra.pretrain exited with code {rc} on rank {dist_env.rank}; "
                           f"see this task's log (run dir {self.run_dir(env.job_id)})")

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


# ---------------------------------------------------------------------------------- launcher
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="jobs/pretrain.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing key=value arguments are config overrides for contra.pretrain.")
    p.add_argument("--config", required=True, help="pretraining config (YAML)")
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
    p.add_argument("--name", default="contra-pretrain", help="job name")
    p.add_argument("--log-dir", default="runs/submitit",
                   help="submitit folder; each job logs to LOG_DIR/<jobid>/")
    p.add_argument("--runs-root", default="runs",
                   help="run dirs default to RUNS_ROOT/pretrain-<jobid>")
    p.add_argument("--python", default=None, help="interpreter on the nodes (default: this one)")
    p.add_argument("--local", action="store_true", help="run here with submitit's local executor")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    p.add_argument("overrides", nargs="*", metavar="key=value")
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


def _slurm_parameters(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = dict(
        slurm_signal_delay_s=args.signal_delay_s,
        slurm_setup=[
            f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{args.cpus_per_task}}}",
            "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
            "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}",
        ],
    )
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(args, key):
            params[f"slurm_{key}"] = getattr(args, key)
    return params


def make_executor(args: argparse.Namespace, cluster: str | None = None) -> submitit.AutoExecutor:
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
        params.update(_slurm_parameters(args))
    ex.update_parameters(**params)
    return ex


def sbatch_script(ex: submitit.AutoExecutor) -> str:
    """The script submitit would hand to sbatch (its log folder still reads %j)."""
    inner = ex._executor  # submitit has no public API for this
    return inner._make_submission_file_text(inner._submitit_command_str, uid="dry-run")


def build_job(args: argparse.Namespace) -> PretrainJob:
    return PretrainJob(str(Path(args.config).resolve()), args.overrides,
                       str(Path(args.runs_root).resolve()))


def submit(args: argparse.Namespace) -> submitit.Job:
    import cloudpickle

    # ship this file's code inside the pickle: the nodes need not import jobs/ from anywhere
    if __name__ != "__main__":
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = make_executor(args)
    return ex.submit(build_job(args))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print(sbatch_script(make_executor(args, cluster="slurm")), end="")
        return 0
    job = submit(args)
    run_dir = build_job(args).run_dir(job.job_id)
    log = job.paths.stdout
    print(f"submitted job {job.job_id} ({'local' if args.local else job.__class__.__name__}): "
          f"{args.nodes} node(s) × {args.tasks_per_node} task(s)")
    print(f"  run dir:  {run_dir}  (checkpoints/, config.yaml, mlflow.db)")
    print(f"  logs:     {job.paths.folder}/  (one <jobid>_<rank>_log.out/.err per task)")
    print(f"  follow:   tail -f {log}")
    if not args.local:
        print(f"  status:   squeue -j {job.job_id}   cancel: scancel {job.job_id}")
    if args.wait:
        try:
            results = job.results()  # one per task; raises the first task failure
        except Exception as exc:  # submitit re-raises the task's failure with its traceback
            print(f"contra: error: job {job.job_id} failed:\n{exc}", file=sys.stderr)
            return 1
        print(f"job {job.job_id} finished: {results[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
