"""The MLflow end of :class:`contra.tracking.Tracker`'s outbox: one run in one tracking store.

It opens the run (resumes ``run_id`` with status back to RUNNING, or creates one in its
experiment), then sends what :class:`~contra.outbox.Outbox` hands it: params, tags, artifacts,
metric batches and the terminal status. Errors a retry cannot fix (``_PERMANENT``) never block
the queue: a rejected batch is resent one entity at a time and only the bad ones are dropped.
Everything uses an explicit ``MlflowClient``; no fluent (global) MLflow state.

Its messages go to the ``contra.tracking`` logger, like all tracking messages.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contra.outbox import Sink, describe_error

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("contra.tracking")

METRICS_PER_BATCH = 1000  # MLflow's per-request limits
PARAMS_PER_BATCH = 100
# Errors that a retry cannot fix: the record is dropped (with a warning), not retried.
_PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                        "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE",
                        "MALFORMED_REQUEST"})


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class Params:
    values: dict[str, str]


@dataclass(frozen=True)
class Tags:
    values: dict[str, str]


@dataclass(frozen=True)
class Artifact:
    path: Path
    artifact_path: str | None


@dataclass(frozen=True)
class Terminate:
    status: str
    end_time_ms: int


Op = Params | Tags | Artifact | Terminate
MetricRecord = tuple[str, float, int, int]  # key, value, timestamp (ms), step


# --------------------------------------------------------------------------- helpers
def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in _PERMANENT


def fail_fast_http(request_timeout_s: float) -> None:
    """Make MLflow's HTTP requests fail in seconds instead of retrying for minutes.

    MLflow reads these variables at every request (``mlflow.utils.rest_utils.http_request``) and
    offers no per-client setting, so they are set for this process; values the user exported are
    kept. The outbox retries every ``retry_interval_s``, so MLflow's retries are redundant.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(request_timeout_s))))


# --------------------------------------------------------------------------- the sink
class MlflowSink(Sink[MetricRecord, Op]):
    """One MLflow run at ``uri``; ``resume`` names the run to continue.

    ``run_id`` and ``experiment_id`` are valid once the outbox reports the sink open (before
    that, ``run_id`` is ``resume``); ``ui`` is the command shown in the "run opened" line.
    """

    def __init__(self, uri: str, run_dir: Path, *, experiment: str | None,
                 run_name: str | None, resume: str | None, tags: Mapping[str, str],
                 ui: str = "") -> None:
        from mlflow.tracking import MlflowClient  # imported here: disabled trackers skip it

        self.uri = uri
        self.run_dir = run_dir
        self.experiment = experiment
        self.run_name = run_name
        self.resume = resume
        self.run_id = resume
        self.experiment_id: str | None = None
        self.ui = ui
        self._init_tags = dict(tags)
        self._client_cls: Callable[..., MlflowClient] = MlflowClient
        self._client: MlflowClient | None = None
        self._known_params: dict[str, str] = {}
        self._warned_params = False

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = self._client_cls(tracking_uri=self.uri)
        return self._client

    # ----------------------------------------------------------------------- the Sink protocol
    def size(self, message: Op) -> int:
        """How many user records a message carries (the terminal status is not one)."""
        if isinstance(message, Params | Tags):
            return len(message.values)
        return 1 if isinstance(message, Artifact) else 0

    def fatal(self, exc: Exception) -> bool:
        return is_permanent(exc)

    def open(self) -> list[Op]:
        """Resume ``resume`` (status back to RUNNING) or create a new run."""
        client = self.client
        run = None
        if self.resume:
            try:
                run = client.get_run(self.resume)
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                log.warning("MLflow tracking at %s: run %s not found (%s); starting a new run",
                            self.uri, self.resume, describe_error(exc))
            if run is not None and run.info.lifecycle_stage == "deleted":
                log.warning("MLflow tracking: run %s was deleted; starting a new run", self.resume)
                run = None
        if run is None:
            run = client.create_run(self._experiment_id(client), run_name=self.run_name,
                                    tags=self._init_tags)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        first: list[Op] = []
        if self.resume and run.info.run_id == self.resume and self._init_tags:
            first.append(Tags(self._init_tags))  # create_run set them otherwise
        self._known_params = dict(run.data.params)
        self.experiment_id = run.info.experiment_id
        self.run_id = run.info.run_id
        log.info("MLflow run %s at %s (UI: %s)", self.run_id, self.uri, self.ui)
        return first

    def send_records(self, batch: list[MetricRecord]) -> None:
        from mlflow.entities import Metric

        self._send_isolating([Metric(k, v, t, s) for k, v, t, s in batch], "metrics")

    def send(self, message: Op) -> None:
        client, run_id = self.client, self.run_id
        if isinstance(message, Params):
            self._send_params(message.values)
        elif isinstance(message, Tags):
            from mlflow.entities import RunTag

            self._send_isolating([RunTag(k, v) for k, v in message.values.items()], "tags")
        elif isinstance(message, Artifact):
            if message.path.is_dir():
                client.log_artifacts(run_id, str(message.path), message.artifact_path)
            elif message.path.is_file():
                client.log_artifact(run_id, str(message.path), message.artifact_path)
            else:
                log.warning("MLflow tracking: artifact %s no longer exists; skipped",
                            message.path)
        else:
            client.set_terminated(run_id, message.status, end_time=message.end_time_ms)

    # ----------------------------------------------------------------------- outbox state
    def unreachable(self, exc: Exception, retry_interval_s: float) -> None:
        log.warning("MLflow tracking at %s: unreachable (%s); training continues, records "
                    "are buffered and retried every %g s", self.uri, describe_error(exc),
                    retry_interval_s)

    def buffer_full(self, max_buffer: int) -> None:
        log.warning("MLflow tracking: buffer full (max_buffer=%d records); dropping the "
                    "oldest metric records, the total is reported later", max_buffer)

    def reconnected(self, sent: int, dropped: int) -> None:
        extra = (f"; {dropped} oldest metric records were dropped "
                 "(buffer full)") if dropped else ""
        log.info("MLflow tracking reconnected: flushed %d records%s", sent, extra)

    def gave_up(self, exc: Exception) -> None:
        """The store refuses to open the run (not a connectivity problem): stop tracking."""
        log.error("MLflow tracking at %s: cannot open a run (%s); tracking is off for this job",
                  self.uri, describe_error(exc))

    # ----------------------------------------------------------------------- MLflow calls
    def _experiment_id(self, client: MlflowClient) -> str:
        name = self.experiment or "contra"
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None if is_http(self.uri) else (self.run_dir / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception as exc:  # another job created it meanwhile
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id

    def _send_params(self, values: dict[str, str]) -> None:
        """Log params not yet in the run; a changed value keeps the logged one (warned once)."""
        from mlflow.entities import Param

        changed = sorted(k for k, v in values.items()
                         if k in self._known_params and self._known_params[k] != v)
        if changed and not self._warned_params:
            self._warned_params = True
            log.warning("MLflow tracking: run %s already has different values for params %s; "
                        "MLflow params are immutable, the first values are kept",
                        self.run_id, ", ".join(changed[:10]) + (" ..." if len(changed) > 10
                                                                else ""))
        new = [Param(k, v) for k, v in values.items() if k not in self._known_params]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            chunk = new[i:i + PARAMS_PER_BATCH]
            self._send_isolating(chunk, "params")
            self._known_params.update((p.key, p.value) for p in chunk)

    def _send_isolating(self, entities: list[Any], kind: str) -> None:
        """``log_batch``; if the store rejects the batch, send one by one and drop the bad ones."""
        try:
            self.client.log_batch(self.run_id, **{kind: entities}, synchronous=True)
            return
        except Exception as exc:
            if not is_permanent(exc):
                raise
            if len(entities) == 1:
                log.warning("MLflow tracking: rejected %s %s (%s); dropped", kind[:-1],
                            getattr(entities[0], "key", "?"), describe_error(exc))
                return
        for entity in entities:
            self._send_isolating([entity], kind)
