"""Submit supervised MANO fine-tuning to SLURM (or run it locally) with submitit.

    python jobs/finetune.py --config configs/finetune/full.yaml --nodes 1 --gpus-per-node 4 \\
        --partition gpu --timeout-min 720 data.root=/datasets/FreiHAND_pub_v2 init.mode=moco

The twin of ``jobs/pretrain.py``, with the same cluster options (``jobs/submit.py``): one task per
GPU, each running :class:`FinetuneJob`, which calls the same entry point as
``slurm/finetune.sbatch`` (``contra.finetune.main``).  The run directory defaults to
``runs/finetune-<jobid>``; the job id stays the same when SLURM requeues the job, so a requeued
job resumes from ``checkpoints/last.pt`` there.
"""

from __future__ import annotations

import sys

if __package__:  # python -m jobs.finetune, or imported as jobs.finetune
    from .submit import StageTask, launch
else:  # python jobs/finetune.py: jobs/ is sys.path[0]
    from submit import StageTask, launch


class FinetuneJob(StageTask):
    """Every task of a fine-tuning job: ``contra.finetune.main`` in ``runs/finetune-<jobid>``."""

    stage = "finetune"
    entry = "contra.finetune"


def main(argv: list[str] | None = None) -> int:
    return launch(FinetuneJob, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
