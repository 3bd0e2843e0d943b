"""Every path of a run directory in one place, so stages, reports and sweeps agree on the layout.

::

    <run_dir>/
      config.yaml            the resolved config the run was started with
      run.json               summary: exit code, step, MLflow run and the UI command
      checkpoints/last.pt    the latest checkpoint (plus step_XXXXXXXX.pt, best.pt)
      export/                exported weights (pretraining)
      mlflow.db, mlartifacts/  the default embedded MLflow store
      retrieval.json         pose-retrieval history (pretraining)
      eval/pred.json, eval/scores.json   the latest FreiHAND evaluation (fine-tuning)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The layout of one run directory (nothing is created until a stage writes)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "run.json"

    @property
    def mlflow_run(self) -> Path:
        """The MLflow run id, written as soon as the run exists (a crash before the first
        checkpoint still restarts in the same run)."""
        return self.root / "mlflow_run_id"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def retrieval(self) -> Path:
        return self.root / "retrieval.json"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def pred(self) -> Path:
        return self.eval / "pred.json"

    @property
    def scores(self) -> Path:
        return self.eval / "scores.json"

    def figure(self, name: str) -> Path:
        """A figure written beside the run's outputs (and logged as an artifact)."""
        return self.root / name

    def recorded_store(self) -> tuple[str, str] | None:
        """(tracking URI, where it was read) of the MLflow store this run logged to: run.json's
        ``tracking_uri``, else the run dir's own ``mlflow.db`` (a run that ended before writing
        run.json); None when neither says. Used by reports and figures that log onto old runs."""
        try:
            summary = json.loads(self.summary.read_text())
        except (OSError, ValueError):
            summary = None
        uri = summary.get("tracking_uri") if isinstance(summary, dict) else None
        if isinstance(uri, str) and uri:
            return uri, f"`tracking_uri` of {self.summary}"
        if self.mlflow_db.is_file():
            return (f"sqlite:///{self.mlflow_db.resolve()}",
                    f"run dir {self.root}, whose run.json names no tracking URI")
        return None
