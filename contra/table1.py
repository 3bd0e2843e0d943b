"""Table 1 as data: fine-tune runs → rows (mean ± std over seeds) → Markdown, CSV and a figure.

The pure half of ``contra report`` (no MLflow): :class:`RunRecord` s in, :class:`TableRow` s out,
then text and PNG. Rules a reader of the table can rely on:

- one row per (pretraining strategy, Table 1 row); scratch and imagenet first, then per strategy
  fixed, fixed-bn, full;
- a seed counts when its run is FINISHED with all three final metrics (MLflow's latest value =
  the highest step, i.e. the final evaluation); mean ± sample std (ddof = 1) over those seeds;
- the expected seeds are the sweep parent's ``seeds`` param, else every seed seen in any row, and
  every row says which expected seeds did not finish, and why; nothing is silently averaged over
  fewer seeds.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contra.atomic import write_text_atomic


class ReportError(ValueError):
    """Unusable report input (store, experiment, sweep); the message is one line."""


@dataclass(frozen=True)
class Metric:
    key: str  # the MLflow metric written by ``contra finetune``
    name: str  # the CSV column stem
    title: str  # the table heading


METRICS = (Metric("eval/mesh_al_mean3d_cm", "mesh_al_cm", "PA mesh error (cm)"),
           Metric("eval/f_al_score_5", "f_al_5", "F@5 mm"),
           Metric("eval/f_al_score_15", "f_al_15", "F@15 mm"))
ROW_ORDER = ("scratch", "imagenet", "fixed", "fixed-bn", "full")
BASELINES = ("scratch", "imagenet")  # rows without a pretraining strategy: listed first
LABELS = {"scratch": "Scratch", "imagenet": "ImageNet", "fixed": "Ours-Fixed",
          "fixed-bn": "Ours-Fixed-BN", "full": "Ours"}
FILES = ("table1.md", "table1.csv", "table1.png")
PAGE_SIZE = 1000
PARENT_TAG = "mlflow.parentRunId"


# ------------------------------------------------------------------------------ paper values
@dataclass(frozen=True)
class PaperRow:
    """One FreiHAND entry of the paper's Table 1 (aligned mesh error in cm, F-scores 0..1)."""

    mesh_al_cm: float
    f_al_5: float
    f_al_15: float
    strategy: str = ""  # the pretraining the paper's row used, where the paper says

    def value(self, metric: Metric) -> float:
        return float(getattr(self, metric.name))


PAPER_SOURCE = "https://ar5iv.labs.arxiv.org/html/2106.04324"
# Empty on purpose: the paper's Table 1 numbers could not be read from a verifiable copy of the
# paper when this module was written, and invented numbers would be worse than none. Fill it as
# {"scratch": PaperRow(...), ...} from Table 1 of arXiv 2106.04324; the table then shows them.
PAPER_TABLE1: Mapping[str, PaperRow] = {}
PAPER_MISSING_NOTE = (f"paper: n/a — the FreiHAND numbers of the paper's Table 1 (Zimmermann, "
                      f"Argus, Brox, GCPR 2021, {PAPER_SOURCE}) could not be verified from a "
                      f"stored copy when this report was written, so none are shown; add them "
                      f"to `contra.table1.PAPER_TABLE1`")


# ------------------------------------------------------------------------------ runs → rows
@dataclass(frozen=True)
class RunRecord:
    """What the report needs of one fine-tune run."""

    run_id: str
    row: str
    strategy: str
    seed: str
    status: str
    metrics: Mapping[str, float]
    start_time: int = 0
    pretraining: tuple[str, str] = ("", "")  # tags pretrain_run_id, checkpoint

    @property
    def complete(self) -> bool:
        """FINISHED with a finite final value of every reported metric."""
        return self.status == "FINISHED" and all(
            m.key in self.metrics and math.isfinite(self.metrics[m.key]) for m in METRICS)


@dataclass(frozen=True)
class Stat:
    mean: float  # nan: no seed finished
    std: float  # nan: fewer than two seeds


@dataclass(frozen=True)
class TableRow:
    """One Table 1 entry: the seeds that count, what happened to the others, the statistics."""

    row: str
    strategy: str
    expected: tuple[str, ...]
    finished: tuple[str, ...]
    problems: tuple[tuple[str, tuple[str, ...]], ...]  # (kind, seeds), in reading order
    stats: Mapping[str, Stat]  # by Metric.name
    run_ids: tuple[str, ...]  # the runs averaged, in seed order
    paper: PaperRow | None = None

    @property
    def label(self) -> str:
        return LABELS.get(self.row, self.row)

    @property
    def status(self) -> str:
        """``2 of 3 seeds finished; 1 FAILED (seed 2)``."""
        head = f"{len(self.finished)} of {len(self.expected)} seeds finished"
        return "; ".join([head, *(_phrase(kind, seeds) for kind, seeds in self.problems)])


# Problem kinds, in the order the status names them; run statuses other than these follow.
_INCOMPLETE = "incomplete"
_KIND_ORDER = ("FAILED", "KILLED", "RUNNING", "SCHEDULED", _INCOMPLETE, "missing", "unexpected",
               "duplicate")


def _phrase(kind: str, seeds: Sequence[str]) -> str:
    where = f"({'seed' if len(seeds) == 1 else 'seeds'} {', '.join(seeds)})"
    what = {_INCOMPLETE: "FINISHED without final eval metrics", "missing": "missing",
            "unexpected": "outside the sweep's seeds, not averaged",
            "duplicate": "with several finished runs, the latest used"}.get(kind, kind)
    return f"{len(seeds)} {what} {where}"


def seed_key(seed: str) -> tuple[int, int, str]:
    """Numeric seeds in numeric order, anything else after them."""
    return (0, int(seed), "") if re.fullmatch(r"-?\d+", seed) else (1, 0, seed)


def normalise_seed(value: Any) -> str:
    """``0``, ``"0"`` and ``0.0`` are the same seed; the tag and the sweep's list must agree."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return str(int(text)) if re.fullmatch(r"[+-]?\d+", text) else text


def _seed_outcome(runs: Sequence[RunRecord], expected: bool) -> tuple[str | None, RunRecord | None]:
    """(problem kind or None, the run that counts or None) for one seed of one row."""
    if not expected:
        return "unexpected", None
    if not runs:
        return "missing", None
    complete = [r for r in runs if r.complete]
    if complete:
        return ("duplicate" if len(complete) > 1 else None), max(complete, key=_started)
    latest = max(runs, key=_started)
    return (_INCOMPLETE if latest.status == "FINISHED" else latest.status), None


def _started(run: RunRecord) -> tuple[int, str]:
    return run.start_time, run.run_id


def _stats(runs: Sequence[RunRecord]) -> dict[str, Stat]:
    out = {}
    for m in METRICS:
        values = np.array([r.metrics[m.key] for r in runs], dtype=np.float64)
        mean = float(values.mean()) if len(values) else math.nan
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        out[m.name] = Stat(mean, std)
    return out


def summarise(row: str, strategy: str, runs: Sequence[RunRecord], expected: Sequence[str],
              paper: PaperRow | None = None) -> TableRow:
    """One Table 1 entry from its runs, judged against the expected seeds."""
    by_seed: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_seed[run.seed].append(run)
    counted: dict[str, RunRecord] = {}
    problems: dict[str, list[str]] = defaultdict(list)
    for seed in sorted(set(expected) | set(by_seed), key=seed_key):
        kind, run = _seed_outcome(by_seed.get(seed, []), seed in expected)
        if run is not None:
            counted[seed] = run
        if kind is not None:
            problems[kind].append(seed)
    order = sorted(problems, key=lambda k: (_KIND_ORDER.index(k) if k in _KIND_ORDER
                                            else len(_KIND_ORDER), k))
    used = [counted[s] for s in sorted(counted, key=seed_key)]
    return TableRow(row, strategy, tuple(sorted(expected, key=seed_key)),
                    tuple(sorted(counted, key=seed_key)),
                    tuple((k, tuple(problems[k])) for k in order), _stats(used),
                    tuple(r.run_id for r in used), paper)


def _row_order(row: TableRow) -> tuple[Any, ...]:
    rank = ROW_ORDER.index(row.row) if row.row in ROW_ORDER else len(ROW_ORDER)
    if row.row in BASELINES:
        return (0, rank, row.strategy, row.row)
    return (1, row.strategy, rank, row.row)


def expected_seeds(runs: Sequence[RunRecord], declared: Sequence[str] | None) -> tuple[str, ...]:
    """The sweep's declared seeds, else every seed seen in any row."""
    seeds = set(declared) if declared is not None else {r.seed for r in runs}
    return tuple(sorted(seeds, key=seed_key))


def table_rows(runs: Sequence[RunRecord], expected: Sequence[str],
               paper: Mapping[str, PaperRow] = PAPER_TABLE1) -> list[TableRow]:
    """Group by (strategy, table1_row) → one :class:`TableRow` each, in Table 1's order."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        groups[(run.strategy, run.row)].append(run)
    rows = [summarise(row, strategy, members, expected, paper.get(row))
            for (strategy, row), members in groups.items()]
    return sorted(rows, key=_row_order)


# ------------------------------------------------------------------------------ rows → text
@dataclass(frozen=True)
class Source:
    """Where the runs came from, for the caption and the footnotes."""

    experiment: str
    tracking_uri: str
    sweep: str | None = None
    seeds_declared: bool = False  # True: the sweep parent's ``seeds`` param set the seed list
    ignored: int = 0  # runs without a table1_row tag
    paper: Mapping[str, PaperRow] = field(default_factory=lambda: PAPER_TABLE1)


@dataclass(frozen=True)
class Columns:
    """Columns added before ``status`` (``--with-embedding``): cells by (strategy, row), and the
    footnotes that explain them. The empty default is today's table, byte for byte."""

    md_heads: tuple[str, ...] = ()
    csv_heads: tuple[str, ...] = ()
    md_cells: Mapping[tuple[str, str], Sequence[str]] = field(default_factory=dict)
    csv_cells: Mapping[tuple[str, str], Sequence[str]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def _num(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def _cell(stat: Stat) -> str:
    return "—" if math.isnan(stat.mean) else f"{stat.mean:.3f} ± {_num(stat.std)}"


def _paper_cell(row: TableRow, metric: Metric) -> str:
    return "n/a" if row.paper is None else f"{row.paper.value(metric):.3f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def display_uri(uri: str) -> str:
    """The tracking URI without any ``user:password@`` part."""
    return re.sub(r"//[^/@]*@", "//", uri)


def caption(source: Source) -> str:
    sweep = f"sweep `{source.sweep}`" if source.sweep else "all runs with a `table1_row` tag"
    return (f"**Table 1** (FreiHAND evaluation set, Procrustes-aligned; mesh error in cm, lower "
            f"is better; F-scores at 5 / 15 mm, higher is better), regenerated from MLflow "
            f"experiment `{source.experiment}`, {sweep}, tracking URI "
            f"`{display_uri(source.tracking_uri)}`.")


def footnotes(rows: Sequence[TableRow], source: Source) -> list[str]:
    seeds = ", ".join(rows[0].expected) if rows else ""
    where = ("the sweep parent's `seeds` param" if source.seeds_declared
             else "every seed seen in any row")
    notes = [
        "mean ± sample standard deviation (ddof = 1) over seeds, each run's value at its final "
        "evaluation (MLflow's latest step); \"—\" where only one seed finished",
        f"seeds = finished / expected; the expected seeds ({seeds}) are {where}; a seed counts "
        f"when its run is FINISHED with all three metrics, and the status names every expected "
        f"seed that did not",
        _paper_note(source.paper),
    ]
    if source.ignored:
        notes.append(f"{source.ignored} run(s) without a `table1_row` tag were ignored")
    return notes


def _paper_note(paper: Mapping[str, PaperRow]) -> str:
    if not paper:
        return PAPER_MISSING_NOTE
    used = sorted({p.strategy for p in paper.values() if p.strategy})
    strategy = f"; the paper's Ours rows used {', '.join(used)} pretraining" if used else ""
    return (f"paper: Table 1 (FreiHAND) of Zimmermann, Argus, Brox, GCPR 2021, {PAPER_SOURCE}, "
            f"shown beside every row of the same Table 1 entry{strategy}; n/a where the paper "
            f"has no such row")


def format_markdown(rows: Sequence[TableRow], source: Source, extra: Columns = Columns()) -> str:
    """The Markdown table with its caption and footnotes."""
    head = ["Table 1 row", "strategy", *(m.title for m in METRICS), "seeds",
            *(f"paper {m.title}" for m in METRICS), *extra.md_heads, "status"]
    lines = [caption(source), "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---", *["---:"] * (7 + len(extra.md_heads)), "---"]) + "|"]
    for r in rows:
        cells = [r.label, r.strategy, *(_cell(r.stats[m.name]) for m in METRICS),
                 f"{len(r.finished)}/{len(r.expected)}", *(_paper_cell(r, m) for m in METRICS),
                 *extra.md_cells.get((r.strategy, r.row), ()), r.status]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    lines.append("")
    notes = [*footnotes(rows, source), *extra.notes]
    lines += [f"{i}. {_md(note)}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def _csv_num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def format_csv(rows: Sequence[TableRow], extra: Columns = Columns()) -> str:
    """One line per entry; full precision, empty cells for undefined values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "label", "strategy", "n_seeds", "n_expected",
                     *(f"{m.name}_{s}" for m in METRICS for s in ("mean", "std")),
                     *(f"paper_{m.name}" for m in METRICS), "seeds", "run_ids", *extra.csv_heads,
                     "status"])
    for r in rows:
        stats = [_csv_num(getattr(r.stats[m.name], s)) for m in METRICS for s in ("mean", "std")]
        paper = [_csv_num(r.paper.value(m) if r.paper else None) for m in METRICS]
        writer.writerow([r.row, r.label, r.strategy, len(r.finished), len(r.expected), *stats,
                         *paper, ";".join(r.finished), ";".join(r.run_ids),
                         *extra.csv_cells.get((r.strategy, r.row), ()), r.status])
    return out.getvalue()


# ------------------------------------------------------------------------------ rows → files
def save_figure(path: Path | str, rows: Sequence[TableRow], title: str) -> Path:
    """:func:`contra.table1_figure.save_figure`, kept importable from here."""
    from contra.table1_figure import save_figure as draw

    return draw(path, rows, title)


def write_files(rows: Sequence[TableRow], source: Source, out_dir: Path | str,
                extra: Columns = Columns()) -> dict[str, Path]:
    """``table1.md``, ``table1.csv`` and ``table1.png`` in ``out_dir``, each written atomically
    (``extra`` goes into the first two; the figure is the same with or without it)."""
    out = Path(out_dir)
    md, csv_file, png = (out / name for name in FILES)
    write_text_atomic(md, format_markdown(rows, source, extra))
    write_text_atomic(csv_file, format_csv(rows, extra))
    sweep = f", sweep {source.sweep}" if source.sweep else ""
    save_figure(png, rows, f"Table 1 — {source.experiment}{sweep}")
    return {"md": md, "csv": csv_file, "png": png}
