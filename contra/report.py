"""``contra report``: the paper's Table 1 regenerated from the fine-tune runs in MLflow.

Why from MLflow and not from run directories: a sweep's fine-tune runs live on many nodes, but
they all log to one tracking store, and each carries the lineage tags ``contra finetune`` writes
(``table1_row``, ``strategy``, ``seed``, ...). The store is the one place that knows every run,
including the ones that failed, so it is also the one place that can say which seeds are missing.

This module only reads runs (:func:`open_client`, :func:`fetch_runs`) and logs the files
(:func:`build_report`); the statistics and formats are :mod:`contra.table1`'s, testable without
a store. Nothing here prints; :mod:`contra.cli` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contra.table1 import (
    PAGE_SIZE,
    PAPER_TABLE1,
    PARENT_TAG,
    Columns,
    PaperRow,
    ReportError,
    RunRecord,
    Source,
    TableRow,
    display_uri,
    expected_seeds,
    normalise_seed,
    table_rows,
    write_files,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


# ------------------------------------------------------------------------------ MLflow I/O
def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``; never MLflow's silent ./mlruns default."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ReportError("no tracking URI: pass --tracking-uri URI (sqlite:////abs/mlflow.db or "
                          "http://host:port) or set MLFLOW_TRACKING_URI")
    return uri


def _check_store(uri: str) -> None:
    """Refuse what MLflow would silently turn into a new, empty store: a mistyped SQLite path,
    or a bare path / ``file:`` URI (the file store, in maintenance mode in MLflow 3)."""
    scheme = re.match(r"([a-z][a-z0-9+.-]*)://", uri)
    if scheme is None or scheme.group(1) == "file":
        raise ReportError(f"{uri}: not a tracking URI the report reads (file stores are not "
                          f"supported); pass sqlite:////abs/mlflow.db or http://host:port")
    path = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    if path and path != ":memory:" and not Path(path).is_file():
        raise ReportError(f"{uri}: no SQLite store at {path}")


def open_client(uri: str) -> MlflowClient:
    """A client that fails within seconds when a server is down (MLflow's default is to retry
    for minutes); values the user exported are kept."""
    _check_store(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from mlflow import MlflowClient

    with mlflow_errors(uri):
        return MlflowClient(tracking_uri=uri)


def _reason(text: str) -> str:
    """The useful part of MLflow's long connection-error text."""
    for pattern in (r"\[Errno -?\d+\][^'\")]*", r"[Rr]ead timed out[^'\")]*", r"timed out"):
        if found := re.search(pattern, text):
            return found.group(0).strip()
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"


def _database_errors() -> tuple[type[Exception], ...]:
    """SQLAlchemy's errors (a file that is no database), where SQLAlchemy is installed."""
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # mlflow-skinny: HTTP stores only
        return ()
    return (SQLAlchemyError,)


@contextlib.contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """Any store failure (server down, not MLflow, broken DB) → one-line :class:`ReportError`."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        yield
    except (MlflowException, RequestException, OSError, *_database_errors()) as exc:
        text = str(getattr(exc, "message", exc))
        if uri.startswith(("http://", "https://")) and "failed with exception" in text:
            raise ReportError(f"tracking server {display_uri(uri)} is unreachable: "
                              f"{_reason(text)}") from None
        raise ReportError(f"{display_uri(uri)}: {_reason(text)}") from None


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=20)]
        raise ReportError(f"experiment {name!r} not found in {display_uri(uri)} "
                          f"(it has: {', '.join(names) or 'none'})")
    return exp.experiment_id


def sweep_seeds(client: MlflowClient, sweep: str, uri: str) -> tuple[str, ...] | None:
    """The sweep parent's ``seeds`` param (a JSON list), or None when it logged none."""
    from mlflow.exceptions import MlflowException

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", sweep):
        raise ReportError(f"--sweep {sweep!r}: not an MLflow run id")
    try:
        parent = client.get_run(sweep)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ReportError(f"sweep parent run {sweep} not found in {display_uri(uri)}") from None
    raw = parent.data.params.get("seeds")
    if raw is None:
        return None
    try:
        seeds = json.loads(raw)
    except json.JSONDecodeError:
        seeds = None
    if not isinstance(seeds, list) or not seeds:
        raise ReportError(f"sweep parent run {sweep}: param seeds={raw!r} is not a JSON list")
    return tuple(normalise_seed(s) for s in seeds)


def to_record(run: Any) -> RunRecord | None:
    """An MLflow run as a :class:`RunRecord`; None for runs that are not Table 1 fine-tunes."""
    tags = run.data.tags
    if "table1_row" not in tags:
        return None
    return RunRecord(run.info.run_id, tags["table1_row"], tags.get("strategy") or "none",
                     normalise_seed(tags.get("seed", "?")), run.info.status,
                     dict(run.data.metrics), int(run.info.start_time or 0),
                     (tags.get("pretrain_run_id", ""), tags.get("checkpoint", "")))


def fetch_runs(client: MlflowClient, exp_id: str, sweep: str | None,
               page_size: int = PAGE_SIZE) -> tuple[list[RunRecord], int]:
    """Every active run of the experiment (of the sweep, with one), all pages; returns the
    Table 1 records and how many runs lacked a ``table1_row`` tag."""
    query = f"tags.`{PARENT_TAG}` = '{sweep}'" if sweep else ""
    records: list[RunRecord] = []
    ignored, token = 0, None
    while True:
        page = client.search_runs([exp_id], filter_string=query, max_results=page_size,
                                  page_token=token)
        for run in page:
            rec = to_record(run)
            records += [rec] if rec else []
            ignored += rec is None
        token = page.token
        if not token:
            return records, ignored


@dataclass(frozen=True)
class Report:
    rows: list[TableRow]
    source: Source
    files: dict[str, Path]
    markdown: str
    logged_to: str | None  # the sweep parent run the files were logged to


def build_report(experiment: str, tracking_uri: str, out_dir: Path | str,
                 sweep: str | None = None, *, paper: Mapping[str, PaperRow] = PAPER_TABLE1,
                 page_size: int = PAGE_SIZE, with_embedding: bool = False,
                 pretrain_uri: str | None = None) -> Report:
    """Read the runs, write the three files, log them to the sweep's parent run (with a sweep).

    ``with_embedding``: add :mod:`contra.embedding_columns` (each row's pretraining embedding,
    looked up in ``pretrain_uri`` when given); without it the files are exactly as before."""
    if pretrain_uri is not None and not with_embedding:
        raise ReportError("--pretrain-tracking-uri is only read with --with-embedding")
    if pretrain_uri is not None:
        _check_store(pretrain_uri)  # a mistyped explicit store fails before any file is written
    client = open_client(tracking_uri)
    with mlflow_errors(tracking_uri):
        exp_id = experiment_id(client, experiment, tracking_uri)
        declared = sweep_seeds(client, sweep, tracking_uri) if sweep else None
        runs, ignored = fetch_runs(client, exp_id, sweep, page_size)
    if not runs:
        scope = f" that are children of sweep run {sweep}" if sweep else ""
        raise ReportError(f"experiment {experiment!r} in {display_uri(tracking_uri)} has no "
                          f"runs with a table1_row tag{scope}")
    source = Source(experiment, tracking_uri, sweep, declared is not None, ignored, paper)
    rows = table_rows(runs, expected_seeds(runs, declared), paper)
    extra = Columns()
    if with_embedding:
        from contra.embedding_columns import embedding_columns  # imports this module

        extra = embedding_columns(rows, runs, tracking_uri, pretrain_uri)
    try:
        files = write_files(rows, source, out_dir, extra)
    except OSError as exc:
        raise ReportError(f"--out {out_dir}: {exc.strerror or exc}") from None
    if sweep:
        with mlflow_errors(tracking_uri):
            for path in files.values():
                client.log_artifact(sweep, str(path))
    return Report(rows, source, files, files["md"].read_text(), sweep)


def write_report(tracking_uri: str, experiment: str, out_dir: Path | str,
                 sweep: str | None = None) -> str:
    """:func:`build_report` for callers that only want the table text (the sweep driver
    prints it at the end of a sweep)."""
    return build_report(experiment, tracking_uri, out_dir, sweep).markdown
