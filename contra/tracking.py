"""MLflow tracking for rank 0 that can never stop or slow down training.

Why this exists rather than plain ``mlflow.log_metric`` calls in the loop: a tracking server is a
remote dependency that goes down (maintenance, a full disk, a lost node), and MLflow's HTTP client
retries a failed request with exponential backoff for minutes. A days-long pretraining job must not
stall or die for that. So the training thread only appends records to an in-memory buffer (O(1),
no I/O); one daemon thread does every MLflow call, warns once when the store is unreachable, keeps
buffering (bounded), retries every ``retry_interval_s`` and, once the store is back, sends the
backlog with the original steps and timestamps.

Defaults: an embedded SQLite store in the run directory (``sqlite:///<run_dir>/mlflow.db``, no
server) with artifacts in ``<run_dir>/mlartifacts``; ``tracking_uri`` selects a server instead. The
run id is exposed so the checkpoint can store it, and a resumed job passes it back to continue the
same run. Everything uses an explicit ``MlflowClient``; no fluent (global) MLflow state.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contra.atomic import replacing

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")
PARAM_VALUE_LIMIT = 500  # the old MLflow limit; 3.x servers accept 6000, older ones do not
METRICS_PER_BATCH = 1000  # MLflow's per-request limits
PARAMS_PER_BATCH = 100
# Errors that a retry cannot fix: the record is dropped (with a warning), not retried.
_PERMANENT = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                        "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE",
                        "MALFORMED_REQUEST"})


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


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class _Params:
    values: dict[str, str]


@dataclass(frozen=True)
class _Tags:
    values: dict[str, str]


@dataclass(frozen=True)
class _Artifact:
    path: Path
    artifact_path: str | None


@dataclass(frozen=True)
class _Terminate:
    status: str
    end_time_ms: int


_Op = _Params | _Tags | _Artifact | _Terminate
_MetricRecord = tuple[str, float, int, int]  # key, value, timestamp (ms), step


def _size(op: _Op) -> int:
    """How many user records an op carries (the terminal status is not one)."""
    if isinstance(op, _Params | _Tags):
        return len(op.values)
    return 1 if isinstance(op, _Artifact) else 0


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


def _reason(exc: BaseException) -> str:
    """The innermost cause, one line: ``ConnectionRefusedError: [Errno 111] Connection refused``."""
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _is_permanent(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in _PERMANENT


def _fail_fast_http(request_timeout_s: float) -> None:
    """Make MLflow's HTTP requests fail in seconds instead of retrying for minutes.

    MLflow reads these variables at every request (``mlflow.utils.rest_utils.http_request``) and
    offers no per-client setting, so they are set for this process; values the user exported are
    kept. Our own loop retries every ``retry_interval_s``, so MLflow's retries are redundant.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(request_timeout_s))))


def default_uri(run_dir: Path | str) -> str:
    """``sqlite:////abs/run_dir/mlflow.db``: the embedded store of one run directory."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


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
        self._run_id = run_id
        self._resume = run_id  # cleared once the run is open
        self._run_ready = threading.Event()
        self._closed = not cfg.enabled
        if not cfg.enabled:
            return
        if cfg.max_buffer < 1 or cfg.retry_interval_s <= 0 or cfg.request_timeout_s <= 0:
            raise ValueError("tracking: max_buffer, retry_interval_s and request_timeout_s "
                             "must be positive")
        if _is_http(self._uri):
            _fail_fast_http(cfg.request_timeout_s)
        elif cfg.tracking_uri is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # SQLite does not create folders
        from mlflow.tracking import MlflowClient  # imported here: disabled trackers skip it

        self._client_cls: Callable[..., MlflowClient] = MlflowClient
        self._client: MlflowClient | None = None
        self._init_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._cv = threading.Condition()
        self._metrics: collections.deque[_MetricRecord] = collections.deque()
        self._ops: collections.deque[_Op] = collections.deque()
        self._inflight = 0  # records taken by the worker and not yet confirmed
        self._busy = False  # the worker holds an op or a batch taken from the buffer
        self._stop = False
        self._next_try = 0.0  # monotonic time of the next attempt after a failure
        self._flushing = 0  # callers waiting in flush(): retry a failing store every second
        self._down = False  # between a failed attempt and the next success
        self._flushed: int | None = None  # records sent since reconnecting, until drained
        self._dropped = 0
        self._experiment: str | None = None
        self._known_params: dict[str, str] = {}
        self._warned_params = False
        self._thread = threading.Thread(target=self._loop, name="mlflow-tracker", daemon=True)
        self._thread.start()

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
        return self._run_id if (self._run_ready.is_set() or self._resume) else None

    @property
    def uri(self) -> str:
        """The resolved tracking URI."""
        return self._uri

    def wait_for_run(self, timeout: float | None = None) -> str | None:
        """Block until the run exists (or ``timeout`` s); return its id or None."""
        if not self.cfg.enabled:
            return None
        self._run_ready.wait(timeout)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested mappings are flattened to ``a.b.c`` keys; values stringified."""
        if not self._closed:
            self._push_op(_Params(flatten_params(params)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Enqueue ``metrics`` at ``step`` with the current time; never blocks on I/O."""
        if self._closed:
            return
        now = int(time.time() * 1000)
        records = [(str(k), float(v), now, int(step)) for k, v in metrics.items()]
        with self._cv:
            self._metrics.extend(records)
            self._trim()
            self._cv.notify()

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Upload a file (or a directory's files); it is read when sent, not when called."""
        if not self._closed:
            self._push_op(_Artifact(Path(path).resolve(), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self._closed:
            self._push_op(_Tags({str(k): str(v) for k, v in tags.items()}))

    def pending(self) -> int:
        """Records not yet delivered (buffered or in flight)."""
        if not self.cfg.enabled:
            return 0
        with self._cv:
            return self._pending_records()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything enqueued so far is delivered (True) or ``timeout`` s pass.

        Meanwhile a failing store is retried every second (at most ``retry_interval_s``) rather
        than every ``retry_interval_s``. ``timeout=None`` waits without limit.
        """
        if not self.cfg.enabled:
            return True
        with self._cv:
            if not self._thread.is_alive():
                return self._delivered()
            self._next_try = 0.0
            self._flushing += 1
            self._cv.notify_all()
            try:
                self._cv.wait_for(lambda: self._delivered() or self._stop, timeout)
            finally:
                self._flushing -= 1
            return self._delivered()

    def close(self, status: str = "FINISHED", timeout: float = 30.0) -> None:
        """Flush (up to ``timeout`` s), set the run's terminal status and stop the worker.

        When the store is still unreachable, warn how many records are lost and return; the run
        then stays RUNNING in the store. A later Tracker with the same run id resumes it.
        """
        if status not in STATUSES:
            raise ValueError(f"tracking: status must be one of {STATUSES}, got {status!r}")
        if self._closed:
            return
        self._push_op(_Terminate(status, int(time.time() * 1000)))
        self._closed = True
        delivered = self.flush(timeout)
        with self._cv:
            lost = self._pending_records()
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout=self.cfg.request_timeout_s + 1.0)
        if not delivered:
            run = self._run_id if self._run_ready.is_set() else "(not created)"
            log.warning("MLflow tracking at %s: not reachable at close within %g s; %d records "
                        "were not delivered and are lost; run %s stays RUNNING", self._uri,
                        timeout, lost, run)
        elif self._dropped:
            log.warning("MLflow tracking: %d oldest metric records were dropped in total "
                        "(buffer full, max_buffer=%d)", self._dropped, self.cfg.max_buffer)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("FAILED" if issubclass(exc_type, Exception) else "KILLED")

    @property
    def experiment_id(self) -> str | None:
        """The run's experiment id once the run exists in the store."""
        return self._experiment if self._run_ready.is_set() else None

    @staticmethod
    def ui_command(uri: str) -> str:
        """The one shell command that shows this store in the MLflow UI."""
        if _is_http(uri):
            return f"python -m webbrowser {shlex.quote(uri)}"  # the server is the UI
        return (f"mlflow ui --backend-store-uri {shlex.quote(uri)} "
                "--host 127.0.0.1 --port 5000 --workers 1")

    # ----------------------------------------------------------------------- buffer (any thread)
    def _push_op(self, op: _Op) -> None:
        with self._cv:
            self._ops.append(op)
            self._cv.notify()

    def _trim(self) -> None:
        """Caller holds the lock: drop the oldest metrics beyond ``max_buffer`` of them."""
        excess = len(self._metrics) - self.cfg.max_buffer
        if excess <= 0:
            return
        for _ in range(excess):
            self._metrics.popleft()
        if not self._dropped:
            log.warning("MLflow tracking: buffer full (max_buffer=%d records); dropping the "
                        "oldest metric records, the total is reported later",
                        self.cfg.max_buffer)
        self._dropped += excess

    def _pending_records(self) -> int:
        return len(self._metrics) + sum(_size(op) for op in self._ops) + self._inflight

    def _delivered(self) -> bool:
        return not self._metrics and not self._ops and not self._busy

    # ----------------------------------------------------------------------- worker thread
    def _loop(self) -> None:
        while self._wait_for_work():
            try:
                sent = self._step()
            except Exception as exc:
                if not self._run_ready.is_set() and _is_permanent(exc):
                    self._give_up(exc)
                    return
                self._on_failure(exc)
            else:
                self._on_success(sent)

    def _give_up(self, exc: Exception) -> None:
        """The store refuses to open the run (not a connectivity problem): stop tracking."""
        log.error("MLflow tracking at %s: cannot open a run (%s); tracking is off for this job",
                  self._uri, _reason(exc))
        with self._cv:
            self._stop = self._closed = True
            self._cv.notify_all()

    def _wait_for_work(self) -> bool:
        """Sleep until there is something to do and no back-off is pending; False: stop."""
        with self._cv:
            while not self._stop:
                has_work = not self._delivered() or not self._run_ready.is_set()
                wait = self._next_try - time.monotonic()
                if has_work and wait <= 0:
                    return True
                self._cv.wait(wait if has_work else None)
            return False

    def _step(self) -> int:
        """One unit of I/O: open the run, or send one op or one batch of metrics."""
        if self._client is None:
            self._client = self._client_cls(tracking_uri=self._uri)
        if not self._run_ready.is_set():
            self._open_run(self._client)
            return 0
        op: _Op | None = None
        batch: list[_MetricRecord] = []
        with self._cv:  # ops first, the terminal status only after the last metric
            if self._ops and not (isinstance(self._ops[0], _Terminate) and self._metrics):
                op = self._ops.popleft()
            else:
                batch = [self._metrics.popleft()
                         for _ in range(min(len(self._metrics), METRICS_PER_BATCH))]
            self._inflight = _size(op) if op is not None else len(batch)
            self._busy = True
        try:
            if op is not None:
                self._send_op(self._client, op)
            else:
                self._send_metrics(self._client, batch)
        except Exception:
            with self._cv:  # put it back, in order, for the next attempt
                if op is not None:
                    self._ops.appendleft(op)
                else:
                    self._metrics.extendleft(reversed(batch))
                    self._trim()
                self._inflight, self._busy = 0, False
            raise
        return _size(op) if op is not None else len(batch)

    def _on_success(self, sent: int) -> None:
        with self._cv:
            self._inflight, self._busy = 0, False
            if self._down:
                self._down, self._flushed = False, 0
            if self._flushed is not None:
                self._flushed += sent
                if self._delivered():
                    extra = (f"; {self._dropped} oldest metric records were dropped "
                             "(buffer full)") if self._dropped else ""
                    log.info("MLflow tracking reconnected: flushed %d records%s",
                             self._flushed, extra)
                    self._flushed = None
            self._cv.notify_all()

    def _on_failure(self, exc: Exception) -> None:
        with self._cv:
            if not self._down:
                log.warning("MLflow tracking at %s: unreachable (%s); training continues, records "
                            "are buffered and retried every %g s", self._uri, _reason(exc),
                            self.cfg.retry_interval_s)
            self._down = True
            interval = self.cfg.retry_interval_s
            self._next_try = time.monotonic() + (min(interval, 1.0) if self._flushing else interval)
            self._cv.notify_all()

    # ----------------------------------------------------------------------- MLflow calls
    def _open_run(self, client: MlflowClient) -> None:
        """Resume ``run_id`` (status back to RUNNING) or create a new run."""
        run = None
        if self._resume:
            try:
                run = client.get_run(self._resume)
            except Exception as exc:
                if not _is_permanent(exc):
                    raise
                log.warning("MLflow tracking at %s: run %s not found (%s); starting a new run",
                            self._uri, self._resume, _reason(exc))
            if run is not None and run.info.lifecycle_stage == "deleted":
                log.warning("MLflow tracking: run %s was deleted; starting a new run", self._resume)
                run = None
        if run is None:
            run = client.create_run(self._experiment_id(client), run_name=self.cfg.run_name,
                                    tags=self._init_tags)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        with self._cv:
            if self._resume and run.info.run_id == self._resume and self._init_tags:
                self._ops.appendleft(_Tags(self._init_tags))  # create_run set them otherwise
            self._known_params = dict(run.data.params)
            self._experiment = run.info.experiment_id
            self._run_id = run.info.run_id
            self._resume = None
            self._run_ready.set()
        log.info("MLflow run %s at %s (UI: %s)", self._run_id, self._uri,
                 self.ui_command(self._uri))

    def _experiment_id(self, client: MlflowClient) -> str:
        name = self.cfg.experiment or "contra"
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None if _is_http(self._uri) else (self.run_dir / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception as exc:  # another job created it meanwhile
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id

    def _send_metrics(self, client: MlflowClient, batch: list[_MetricRecord]) -> None:
        from mlflow.entities import Metric

        self._send_isolating(client, [Metric(k, v, t, s) for k, v, t, s in batch], "metrics")

    def _send_op(self, client: MlflowClient, op: _Op) -> None:
        run_id = self._run_id
        if isinstance(op, _Params):
            self._send_params(client, op.values)
        elif isinstance(op, _Tags):
            from mlflow.entities import RunTag

            self._send_isolating(client, [RunTag(k, v) for k, v in op.values.items()], "tags")
        elif isinstance(op, _Artifact):
            if op.path.is_dir():
                client.log_artifacts(run_id, str(op.path), op.artifact_path)
            elif op.path.is_file():
                client.log_artifact(run_id, str(op.path), op.artifact_path)
            else:
                log.warning("MLflow tracking: artifact %s no longer exists; skipped", op.path)
        else:
            client.set_terminated(run_id, op.status, end_time=op.end_time_ms)

    def _send_params(self, client: MlflowClient, values: dict[str, str]) -> None:
        """Log params not yet in the run; a changed value keeps the logged one (warned once)."""
        from mlflow.entities import Param

        changed = sorted(k for k, v in values.items()
                         if k in self._known_params and self._known_params[k] != v)
        if changed and not self._warned_params:
            self._warned_params = True
            log.warning("MLflow tracking: run %s already has different values for params %s; "
                        "MLflow params are immutable, the first values are kept",
                        self._run_id, ", ".join(changed[:10]) + (" ..." if len(changed) > 10
                                                                 else ""))
        new = [Param(k, v) for k, v in values.items() if k not in self._known_params]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            chunk = new[i:i + PARAMS_PER_BATCH]
            self._send_isolating(client, chunk, "params")
            self._known_params.update((p.key, p.value) for p in chunk)

    def _send_isolating(self, client: MlflowClient, entities: list[Any], kind: str) -> None:
        """``log_batch``; if the store rejects the batch, send one by one and drop the bad ones."""
        try:
            client.log_batch(self._run_id, **{kind: entities}, synchronous=True)
            return
        except Exception as exc:
            if not _is_permanent(exc):
                raise
            if len(entities) == 1:
                log.warning("MLflow tracking: rejected %s %s (%s); dropped", kind[:-1],
                            getattr(entities[0], "key", "?"), _reason(exc))
                return
        for entity in entities:
            self._send_isolating(client, [entity], kind)


# --------------------------------------------------------------------------- the UI
UI_LOCAL = "http://127.0.0.1:5000"  # where `mlflow ui` (Tracker.ui_command) serves


def runs_view_url(uri: str, experiment_id: str) -> str:
    """The MLflow UI page that lists an experiment's runs (MLflow 3.x).

    MLflow 3 opens experiments in its GenAI view (traces, an assistant) unless the URL asks for
    the classic one: ``workflowType=machine_learning`` on the hash route ``/experiments/<id>/runs``.
    A SQLite store is served by the ``mlflow ui`` command at 127.0.0.1:5000; a server is its URI.
    """
    base = uri.rstrip("/") if _is_http(uri) else UI_LOCAL
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


# --------------------------------------------------------------------------- figures
def save_curve(path: Path | str, series: Mapping[str, tuple[list[int], list[float]]],
               title: str = "", xlabel: str = "step", ylabel: str = "loss") -> Path:
    """Draw ``{name: (steps, values)}`` as lines into a PNG at ``path`` (written atomically).

    Uses a bare ``Figure`` with the Agg canvas, not pyplot: no global backend switch, no GUI,
    safe from any thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (steps, values) in series.items():
        ax.plot(list(steps), list(values), label=name, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if series:
        ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig: Any, path: Path | str) -> Path:
    """Write a matplotlib figure as PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
