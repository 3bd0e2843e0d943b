"""``contra report --with-embedding``: each Table 1 row's pretraining embedding beside its scores.

``contra figures`` logs its embedding analysis (:data:`EMBEDDING`) as metrics on the *pretraining*
run of the checkpoint it read. A fine-tune run names that run in its lineage tags
(``pretrain_run_id``, ``checkpoint``, see :meth:`contra.initialisation.InitReport.tags`), but the
pretraining run usually lives in another store than the sweep (the demo: ``runs/demo/pretrain``
vs ``runs/demo/sweeps/demo``), so the store is resolved per run, in this order:

1. ``--pretrain-tracking-uri``, when given;
2. the checkpoint's run directory (``<run_dir>/checkpoints/last.pt``): the ``tracking_uri`` of its
   ``run.json``, else its own ``mlflow.db`` (a run that ended before writing ``run.json``);
3. the report's own tracking URI.

Every row gets its cells or says why not in a footnote: baselines have no pretraining, and a
pretraining run that is missing, unreadable or without ``contra figures`` metrics is named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contra.report import ReportError, mlflow_errors, open_client
from contra.rundir import RunDir
from contra.table1 import BASELINES, Columns, RunRecord, TableRow, display_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class EmbeddingMetric:
    key: str  # the metric ``contra figures`` logs on the pretraining run
    name: str  # the CSV column
    title: str  # the Markdown heading
    digits: int  # decimals in the Markdown table


EMBEDDING = (
    EmbeddingMetric("embedding/bg_invariance", "emb_bg_invariance", "emb. bg invariance", 3),
    EmbeddingMetric("embedding/bg_mixing_ratio", "emb_bg_mixing_ratio", "emb. bg mixing", 3),
    EmbeddingMetric("embedding/pose_nn1_mm", "emb_pose_nn1_mm", "emb. pose NN1 (mm)", 2),
    EmbeddingMetric("embedding/pose_nn5_mm", "emb_pose_nn5_mm", "emb. pose NN5 (mm)", 2),
    EmbeddingMetric("embedding/n", "emb_n", "emb. images", 0),
)
CSV_EXTRA = ("pretrain_run_ids", "pretrain_tracking_uris", "embedding_note")
MEANING = ("emb. = `contra figures`' embedding analysis of the row's pretraining checkpoint, "
           "logged on its pretraining run (the `pretrain_run_id` tag of the runs averaged; its "
           "latest values): bg invariance 1 = same-pose images on other backgrounds are as similar "
           "as identical images, 0 = no more similar than random pairs; bg mixing 1 = background "
           "subsets perfectly mixed among the k nearest neighbours, lower = clustered by "
           "background; pose NN1 / NN5 = PA keypoint error (mm) of the 1st / 5th nearest "
           "neighbour from another sequence, lower is better; images = how many were embedded")
BASELINE_NOTE = "emb.: n/a for {rows}: no contra pretraining checkpoint to analyse"


@dataclass(frozen=True)
class Store:
    uri: str
    via: str  # how it was chosen, for the footnote


@dataclass(frozen=True)
class Pretraining:
    """One pretraining run as its store holds it: the embedding metrics, or why there are none."""

    run_id: str
    store: Store
    metrics: Mapping[str, float]  # by EmbeddingMetric.key; empty: see ``problem``
    steps: tuple[int, ...] = ()
    problem: str = ""


# ------------------------------------------------------------------------------ store → runs
def run_dir_store(checkpoint: str) -> Store | None:
    """The store the checkpoint's run directory recorded, or None where the path is no
    ``<run_dir>/checkpoints/*.pt`` (or ``export/``) of a run directory on this machine."""
    path = Path(checkpoint)
    if not checkpoint or path.parent.name not in ("checkpoints", "export"):
        return None
    found = RunDir(path.parent.parent).recorded_store()
    return Store(*found) if found else None


def pretrain_store(checkpoint: str, explicit: str | None, own: str) -> Store:
    """Where to look for one pretraining run, in the module docstring's order."""
    if explicit:
        return Store(explicit, "--pretrain-tracking-uri")
    return run_dir_store(checkpoint) or Store(own, "the report's own tracking URI")


def _run_or_none(client: MlflowClient, run_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None


def lookup(run_id: str, store: Store) -> Pretraining:
    """The embedding metrics of one pretraining run; any failure becomes ``problem`` (one
    unreadable pretraining store must not cost the whole table)."""
    try:
        client = open_client(store.uri)
        with mlflow_errors(store.uri):
            run = _run_or_none(client, run_id)
            if run is None:
                return Pretraining(run_id, store, {}, (), f"pretraining run {run_id} not found "
                                                          f"in `{display_uri(store.uri)}`")
            found = {m.key: float(run.data.metrics[m.key]) for m in EMBEDDING
                     if m.key in run.data.metrics}
            steps = {h.step for key in found for h in client.get_metric_history(run_id, key)}
    except ReportError as exc:
        return Pretraining(run_id, store, {}, (), f"store unreadable: {exc}")
    if not found:
        return Pretraining(run_id, store, {}, (), f"no `contra figures` run for pretraining run "
                                                  f"{run_id} (no embedding/* metrics)")
    return Pretraining(run_id, store, found, (max(steps),) if steps else ())


# ------------------------------------------------------------------------------ runs → rows
def _name(row: TableRow) -> str:
    return f"{row.label} / {row.strategy}"


def row_runs(row: TableRow, runs: Sequence[RunRecord]) -> list[RunRecord]:
    """The runs the row averaged, in seed order (all of its runs where none finished)."""
    members = [r for r in runs if (r.strategy, r.row) == (row.strategy, row.row)]
    by_id = {r.run_id: r for r in members}
    return [by_id[i] for i in row.run_ids if i in by_id] or members


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _fmt(value: float, digits: int) -> str:
    """``n/a`` for no value; a mean of image counts that is no integer keeps its half."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits or (0 if value.is_integer() else 1)}f}"


def _cells(row: TableRow, used: Sequence[Pretraining]) -> tuple[list[str], list[str]]:
    """(Markdown cells, CSV cells) of one row: the mean over its pretraining runs."""
    means = [_mean([p.metrics[m.key] for p in used if m.key in p.metrics]) for m in EMBEDDING]
    md = [_fmt(v, m.digits) for m, v in zip(EMBEDDING, means, strict=True)]
    ids = [p.run_id for p in used]
    md.append("n/a" if not ids else ids[0][:8] if len(ids) == 1 else f"mean of {len(ids)}")
    csv = ["" if math.isnan(v) else repr(v) for v in means]
    uris = dict.fromkeys(display_uri(p.store.uri) for p in used)
    notes = [p.problem for p in used if p.problem]
    if not ids:
        notes.append("no pretraining checkpoint" if row.row in BASELINES
                     else "no pretrain_run_id tag")
    return md, [*csv, ";".join(ids), ";".join(uris), "; ".join(notes)]


def _run_note(p: Pretraining, rows: Sequence[str]) -> str:
    head = f"emb. of {', '.join(rows)}: pretraining run `{p.run_id}`, store " \
           f"`{display_uri(p.store.uri)}` (from {p.store.via})"
    if p.problem:
        return f"{head}: n/a — {p.problem}"
    missing = [m.key for m in EMBEDDING if m.key not in p.metrics]
    step = f" at step {p.steps[0]}" if p.steps else ""
    lacks = f"; it lacks {', '.join(missing)}" if missing else ""
    return f"{head}: `contra figures` metrics{step}{lacks}"


def _row_notes(row: TableRow, members: Sequence[RunRecord],
               used: Sequence[Pretraining]) -> list[str]:
    notes = []
    untagged = sum(1 for r in members if not r.pretraining[0])
    if untagged and row.row not in BASELINES:
        notes.append(f"emb. of {_name(row)}: {untagged} of {len(members)} run(s) carry no "
                     f"`pretrain_run_id` tag (a checkpoint saved without an MLflow run), so "
                     f"{'n/a' if not used else 'they are left out'}")
    if len(used) > 1:
        have = sum(1 for p in used if p.metrics)
        notes.append(f"emb. of {_name(row)}: its seeds started from {len(used)} pretraining runs "
                     f"({', '.join(p.run_id for p in used)}); the cells are the mean over the "
                     f"{have} with `contra figures` metrics")
    return notes


def embedding_columns(rows: Sequence[TableRow], runs: Sequence[RunRecord], tracking_uri: str,
                      pretrain_uri: str | None = None) -> Columns:
    """The ``--with-embedding`` columns and footnotes for ``rows`` (one lookup per pretraining
    run, however many seeds and rows share it)."""
    found: dict[str, Pretraining] = {}
    users: dict[str, list[str]] = {}
    md_cells, csv_cells, row_notes = {}, {}, []
    for row in rows:
        members = row_runs(row, runs)
        for run_id, checkpoint in (r.pretraining for r in members if r.pretraining[0]):
            if run_id not in found:
                found[run_id] = lookup(run_id, pretrain_store(checkpoint, pretrain_uri,
                                                              tracking_uri))
            if _name(row) not in users.setdefault(run_id, []):
                users[run_id].append(_name(row))
        used = [found[i] for i in dict.fromkeys(r.pretraining[0] for r in members) if i]
        md_cells[(row.strategy, row.row)], csv_cells[(row.strategy, row.row)] = _cells(row, used)
        row_notes += _row_notes(row, members, used)
    baselines = list(dict.fromkeys(r.label for r in rows if r.row in BASELINES))
    notes = [MEANING, *([BASELINE_NOTE.format(rows=", ".join(baselines))] if baselines else []),
             *(_run_note(p, users[p.run_id]) for p in found.values()), *row_notes]
    return Columns((*(m.title for m in EMBEDDING), "pretraining run"),
                   (*(m.name for m in EMBEDDING), *CSV_EXTRA), md_cells, csv_cells, tuple(notes))
