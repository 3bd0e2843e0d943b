"""MLflow tracking for rank 0 that can never stop or slow down training.

Why this exists rather than plain ``mlflow.log_metric`` calls in the loop: a tracking server is a
remote dependency that goes down (maintenance, a full disk, a lost node), and MLflow's HTTP client
retries a failed request with exponential backoff for minutes. A days-long pretraining job must not
stall or die for that. So the training thread only appends records to an in-memory buffer (O(1),
no I/O); one daemon thread does every MLflow call, warns once when the store is unreachable, keeps
buffering (bounded), retries every ``retry_interval_s`` and, once the store is back, sends the
backlog with the original steps and timestamps.

A :class:`Tracker` is that buffer and thread, :class:`contra.outbox.Outbox` (generic), feeding
:class:`contra.mlflow_sink.MlflowSink` (the MLflow calls). This module holds the configuration,
the tracker's public API, params flattening and the UI helpers; the figure helpers
(``save_curve``, ``save_png``) live in :mod:`contra.plotting` and are re-exported here.

Defaults: an embedded SQLite store in the run directory (``sqlite:///<run_dir>/mlflow.db``, no
server) with artifacts in ``<run_dir>/mlartifacts``; ``tracking_uri`` selects a server instead. The
run id is exposed so the checkpoint can store it, and a resumed job passes it back to continue the
same run. Everything uses an explicit ``MlflowClient``; no fluent (global) MLflow state.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contra.mlflow_sink import (
    METRICS_PER_BATCH,
    Artifact,
    MetricRecord,
    MlflowSink,
    Op,
    Params,
    Tags,
    Terminate,
    fail_fast_http,
    is_http,
)
from contra.outbox import Outbox
from contra.plotting import save_curve, save_png

__all__ = ["PARAM_VALUE_LIMIT", "STATUSES", "UI_LOCAL", "Tracker", "TrackingConfig",
           "default_uri", "flatten_params", "runs_view_url", "save_curve", "save_png"]

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")
PARAM_VALUE_LIMIT = 500  # the old MLflow limit; 3.x servers accept 6000, older ones do not


@dataclass(frozen=True)
class TrackingConfig:
    """The ``tracking:`` section of a training config."""

    enabled: bool = True
    tracking_uri: str | None = None  # None: sqlite:///<run_dir>/mlflow.db
    experiment: str | None = None  # None: contra-<stage> (contra-pretrain, contra-finetune)
    run_name: str | None = None
    parent_run_id: str | None = None  # nest the run under this one (a sweep's parent run)
    retry_interval_s: float = 30.0
    request_timeout_s: float = 5.0
    max_buffer: int = 100_000


# --------------------------------------------------------------------------- helpers
def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}``; dataclasses count as mappings; values are
    stringified and cut to :data:`PARAM_VALUE_LIMIT` characters."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = _param_value(value)
    return flat


def _param_value(value: Any) -> str:
    text = str(value)
    if len(text) > PARAM_VALUE_LIMIT:
        text = text[:PARAM_VALUE_LIMIT - 3] + "..."
    return text


def default_uri(run_dir: Path | str) -> str:
    """``sqlite:////abs/run_dir/mlflow.db``: the embedded store of one run directory."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


# --------------------------------------------------------------------------- tracker
class Tracker:
    """Asynchronous MLflow logging of one run; see the module docstring.

    All ``log_*``/``set_tags`` calls only enqueue and return at once. ``run_id`` is None until the
    run exists in the store (immediately known when resuming; see :meth:`wait_for_run`).
    With ``cfg.enabled`` False every method is a no-op and MLflow is not even imported.
    """

    def __init__(self, cfg: TrackingConfig, run_dir: Path | str, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        self._uri = cfg.tracking_uri or default_uri(self.run_dir)
        self._resume = run_id
        self._sink: MlflowSink | None = None
        self._outbox: Outbox[MetricRecord, Op] | None = None
        if not cfg.enabled:
            return
        if cfg.max_buffer < 1 or cfg.retry_interval_s <= 0 or cfg.request_timeout_s <= 0:
            raise ValueError("tracking: max_buffer, retry_interval_s and request_timeout_s "
                             "must be positive")
        if is_http(self._uri):
            fail_fast_http(cfg.request_timeout_s)
        elif cfg.tracking_uri is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # SQLite does not create folders
        self._sink = MlflowSink(self._uri, self.run_dir, experiment=cfg.experiment,
                                run_name=cfg.run_name, resume=run_id,
                                tags={str(k): str(v) for k, v in (tags or {}).items()},
                                ui=self.ui_command(self._uri))
        self._outbox = Outbox(self._sink, retry_interval_s=cfg.retry_interval_s,
                              max_buffer=cfg.max_buffer, batch_size=METRICS_PER_BATCH,
                              name="mlflow-tracker")

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that does nothing (non-zero ranks)."""
        return cls(TrackingConfig(enabled=False), Path.cwd())

    # ----------------------------------------------------------------------- public API
    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    @property
    def run_id(self) -> str | None:
        """The MLflow run id: the resumed one at once, a new one once created in the store.

        A disabled tracker returns the id it was given, so checkpoints keep it."""
        if self._sink is None or self._outbox is None:
            return self._resume or None
        return self._sink.run_id if (self._outbox.opened or self._resume) else None

    @property
    def uri(self) -> str:
        """The resolved tracking URI."""
        return self._uri

    @property
    def experiment_id(self) -> str | None:
        """The run's experiment id once the run exists in the store."""
        if self._sink is None or self._outbox is None or not self._outbox.opened:
            return None
        return self._sink.experiment_id

    def wait_for_run(self, timeout: float | None = None) -> str | None:
        """Block until the run exists (or ``timeout`` s); return its id or None."""
        if self._outbox is None:
            return None
        self._outbox.wait_opened(timeout)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested mappings are flattened to ``a.b.c`` keys; values stringified."""
        if (outbox := self._live()) is not None:
            outbox.put(Params(flatten_params(params)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Enqueue ``metrics`` at ``step`` with the current time; never blocks on I/O."""
        if (outbox := self._live()) is None:
            return
        now = int(time.time() * 1000)
        outbox.put_records([(str(k), float(v), now, int(step)) for k, v in metrics.items()])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Upload a file (or a directory's files); it is read when sent, not when called."""
        if (outbox := self._live()) is not None:
            outbox.put(Artifact(Path(path).resolve(), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if (outbox := self._live()) is not None:
            outbox.put(Tags({str(k): str(v) for k, v in tags.items()}))

    def pending(self) -> int:
        """Records not yet delivered (buffered or in flight)."""
        return 0 if self._outbox is None else self._outbox.pending()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything enqueued so far is delivered (True) or ``timeout`` s pass.

        Meanwhile a failing store is retried every second (at most ``retry_interval_s``) rather
        than every ``retry_interval_s``. ``timeout=None`` waits without limit.
        """
        return True if self._outbox is None else self._outbox.flush(timeout)

    def close(self, status: str = "FINISHED", timeout: float = 30.0) -> None:
        """Flush (up to ``timeout`` s), set the run's terminal status and stop the worker.

        When the store is still unreachable, warn how many records are lost and return; the run
        then stays RUNNING in the store. A later Tracker with the same run id resumes it.
        """
        if status not in STATUSES:
            raise ValueError(f"tracking: status must be one of {STATUSES}, got {status!r}")
        if (outbox := self._live()) is None:
            return
        delivered, lost = outbox.close(Terminate(status, int(time.time() * 1000)), timeout,
                                       join_timeout=self.cfg.request_timeout_s + 1.0)
        if not delivered:
            run = self.run_id if outbox.opened else "(not created)"
            log.warning("MLflow tracking at %s: not reachable at close within %g s; %d records "
                        "were not delivered and are lost; run %s stays RUNNING", self._uri,
                        timeout, lost, run)
        elif outbox.dropped:
            log.warning("MLflow tracking: %d oldest metric records were dropped in total "
                        "(buffer full, max_buffer=%d)", outbox.dropped, self.cfg.max_buffer)

    def summary(self) -> dict[str, str | None]:
        """What ``run.json`` says about this run: store, run id, UI command and, once the run
        exists, its UI page; nothing for a disabled tracker."""
        if not self.enabled:
            return {}
        fields: dict[str, str | None] = {"tracking_uri": self.uri, "mlflow_run_id": self.run_id,
                                         "mlflow_ui": self.ui_command(self.uri)}
        if self.experiment_id is not None:
            fields["mlflow_url"] = runs_view_url(self.uri, self.experiment_id)
        return fields

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("FAILED" if issubclass(exc_type, Exception) else "KILLED")

    @staticmethod
    def ui_command(uri: str) -> str:
        """The one shell command that shows this store in the MLflow UI."""
        if is_http(uri):
            return f"python -m webbrowser {shlex.quote(uri)}"  # the server is the UI
        return (f"mlflow ui --backend-store-uri {shlex.quote(uri)} "
                "--host 127.0.0.1 --port 5000 --workers 1")

    def _live(self) -> Outbox[MetricRecord, Op] | None:
        """The outbox while it takes records: None when disabled or closed (by :meth:`close`,
        or because the store refused to open the run)."""
        outbox = self._outbox
        return outbox if outbox is not None and not outbox.closed else None


# --------------------------------------------------------------------------- the UI
UI_LOCAL = "http://127.0.0.1:5000"  # where `mlflow ui` (Tracker.ui_command) serves


def runs_view_url(uri: str, experiment_id: str) -> str:
    """The MLflow UI page that lists an experiment's runs (MLflow 3.x).

    MLflow 3 opens experiments in its GenAI view (traces, an assistant) unless the URL asks for
    the classic one: ``workflowType=machine_learning`` on the hash route ``/experiments/<id>/runs``.
    A SQLite store is served by the ``mlflow ui`` command at 127.0.0.1:5000; a server is its URI.
    """
    base = uri.rstrip("/") if is_http(uri) else UI_LOCAL
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
