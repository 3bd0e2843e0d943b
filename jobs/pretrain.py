"""Submit MoCo pretraining to SLURM (or run it locally) with submitit.

    python jobs/pretrain.py --config configs/pretrain/multiview.yaml --nodes 4 --gpus-per-node 4 \\
        --partition gpu --timeout-min 1440 batch_size=1024

One task per GPU (``--tasks-per-node`` defaults to ``--gpus-per-node``, or 1 without GPUs).  Every
task runs :class:`PretrainJob`, which exports the torch.distributed variables through
``submitit.helpers.TorchDistributedEnvironment`` and calls the same entry point as
``slurm/pretrain.sbatch`` (``contra.pretrain.main``).  The run directory defaults to
``runs/pretrain-<jobid>``; the job id stays the same when SLURM requeues the job, so a requeued job
resumes from ``checkpoints/last.pt`` there (and from the same MLflow run).  The cluster options,
the dry run and the preemption hand-over to submitit are shared by every stage: ``jobs/submit.py``.
"""

from __future__ import annotations

import sys

if __package__:  # python -m jobs.pretrain, or imported as jobs.pretrain
    from .submit import StageTask, launch
else:  # python jobs/pretrain.py: jobs/ is sys.path[0]
    from submit import StageTask, launch


class PretrainJob(StageTask):
    """Every task of a pretraining job: ``contra.pretrain.main`` in ``runs/pretrain-<jobid>``."""

    stage = "pretrain"
    entry = "contra.pretrain"


def main(argv: list[str] | None = None) -> int:
    return launch(PretrainJob, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
