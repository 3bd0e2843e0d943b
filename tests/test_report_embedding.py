"""``contra report --with-embedding`` against real SQLite stores (no mocks): pretraining runs
with ``contra figures``' metrics in their own stores, fine-tune runs tagged with them in another,
as ``contra pretrain`` / ``contra finetune`` lay them out (``run.json`` in each run directory)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric as MlflowMetric
from mlflowutil import restore_report_env  # noqa: F401 (autouse fixture)

from contra.cli import main
from contra.embedding_columns import EMBEDDING, run_dir_store
from contra.table1 import METRICS

EXP = "contra-finetune"
KEYS = [m.key for m in EMBEDDING]
# the CSV header of `contra report` before --with-embedding existed
OLD_HEADER = ("row,label,strategy,n_seeds,n_expected,mesh_al_cm_mean,mesh_al_cm_std,f_al_5_mean,"
              "f_al_5_std,f_al_15_mean,f_al_15_std,paper_mesh_al_cm,paper_f_al_5,"
              "paper_f_al_15,seeds,run_ids,status")


@dataclass
class Stores:
    root: Path
    sweep: str  # the fine-tune store's URI
    other: str  # a pretraining store no run dir names (for --pretrain-tracking-uri)
    pre: dict[str, str] = field(default_factory=dict)  # name → pretraining run id


def _uri(db: Path) -> str:
    return f"sqlite:///{db}"


def _new_store(template: Path, db: Path) -> str:
    """A fresh store as a copy of an empty one: MLflow's schema migrations run once, not per
    store (seconds each on a loaded machine)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, db)
    return _uri(db)


def _pretrain_run(uri: str, figures: bool, seed: int) -> str:
    """A pretraining run; with ``figures``, the embedding metrics at steps 120 and 240 (the
    report must show step 240's, the latest)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("contra-pretrain")
    exp_id = exp.experiment_id if exp else client.create_experiment("contra-pretrain")
    run_id = client.create_run(exp_id, run_name=f"pretrain {seed}").info.run_id
    client.log_batch(run_id, [MlflowMetric("train/loss", 1.0, 0, 240)])
    if figures:
        rng = np.random.default_rng(seed)
        for step in (120, 240):
            values = {"embedding/bg_invariance": rng.uniform(0.3, 0.9),
                      "embedding/bg_mixing_ratio": rng.uniform(0.2, 1.0),
                      "embedding/pose_nn1_mm": rng.uniform(5, 30),
                      "embedding/pose_nn5_mm": rng.uniform(10, 40), "embedding/n": 512.0 + seed}
            client.log_batch(run_id, [MlflowMetric(k, v, step, step) for k, v in values.items()])
    client.set_terminated(run_id)
    return run_id


def _run_dir(root: Path, name: str, uri: str | None, run_id: str) -> str:
    """A pretraining run directory; its run.json names the store (none: no run.json)."""
    run_dir = root / name
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    if uri is not None:
        (run_dir / "run.json").write_text(json.dumps({"tracking_uri": uri,
                                                      "mlflow_run_id": run_id}))
    return str(run_dir / "checkpoints" / "last.pt")


def _finetune(client: MlflowClient, exp_id: str, row: str, strategy: str, seed: int,
              pretrain: str, checkpoint: str, status: str = "FINISHED") -> None:
    tags = {"table1_row": row, "strategy": strategy, "seed": str(seed),
            "pretrain_run_id": pretrain, "checkpoint": checkpoint}
    run_id = client.create_run(exp_id, start_time=1_700_000_000_000 + seed
                               + (0 if status == "FAILED" else 10), tags=tags).info.run_id
    client.log_batch(run_id, [MlflowMetric(m.key, 1.0 + seed / 10, 0, 300) for m in METRICS])
    client.set_terminated(run_id, status=status)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    root = tmp_path_factory.mktemp("emb")
    MlflowClient(tracking_uri=_uri(root / "empty.db")).search_experiments()  # creates it
    shared, own = (_new_store(root / "empty.db", root / db)
                   for db in ("shared.db", "pre2/mlflow.db"))
    s = Stores(root, _new_store(root / "empty.db", root / "sweep.db"),
               _new_store(root / "empty.db", root / "other.db"))
    s.pre = {"p1": _pretrain_run(shared, True, 1), "p2": _pretrain_run(own, True, 2),
             "p3": _pretrain_run(shared, False, 3), "p4": _pretrain_run(s.other, True, 4),
             "p5": _pretrain_run(_new_store(root / "empty.db", root / "pre5" / "mlflow.db"),
                                 True, 5)}
    ckpt = {"p1": _run_dir(root, "pre1", shared, s.pre["p1"]),
            "p2": _run_dir(root, "pre2", own, s.pre["p2"]),
            "p3": _run_dir(root, "pre3", shared, s.pre["p3"]),
            "p4": "/node7/runs/gone/checkpoints/last.pt",  # a run dir on another machine
            "p5": _run_dir(root, "pre5", None, s.pre["p5"])}  # ended before writing run.json
    client = MlflowClient(tracking_uri=s.sweep)
    exp_id = client.create_experiment(EXP)
    for seed in (0, 1):
        _finetune(client, exp_id, "scratch", "none", seed, "", "")
        _finetune(client, exp_id, "imagenet", "none", seed, "", "/hub/checkpoints/resnet50.pth")
        for row, strategy, name in (("fixed", "multiview", "p1"), ("fixed-bn", "multiview", "p3"),
                                    ("fixed", "temporal", "p4"), ("full", "temporal", "p5")):
            _finetune(client, exp_id, row, strategy, seed, s.pre[name], ckpt[name])
        name = ("p1", "p2")[seed]  # the seeds of one row from two pretraining runs
        _finetune(client, exp_id, "full", "multiview", seed, s.pre[name], ckpt[name])
    # a failed attempt from another checkpoint: not averaged, so not in the embedding columns
    _finetune(client, exp_id, "fixed", "multiview", 1, s.pre["p3"], ckpt["p3"], "FAILED")
    return s


def _report(stores: Stores, out: Path, capsys: pytest.CaptureFixture[str],
            *extra: str) -> tuple[str, dict[tuple[str, str], dict[str, str]]]:
    code = main(["report", "--experiment", EXP, "--tracking-uri", stores.sweep,
                 "--out", str(out), *extra])
    printed, err = capsys.readouterr()
    assert code == 0, err
    with open(out / "table1.csv", newline="") as f:
        rows = {(r["strategy"], r["row"]): r for r in csv.DictReader(f)}
    return printed, rows


def _held(stores: Stores, name: str, uri: str) -> dict[str, float]:
    """What MLflow holds: the run's latest value of every embedding metric."""
    return {k: v for k, v in MlflowClient(tracking_uri=uri).get_run(
        stores.pre[name]).data.metrics.items() if k.startswith("embedding/")}


def _check(row: dict[str, str], *held: dict[str, float]) -> None:
    for m in EMBEDDING:
        assert float(row[m.name]) == pytest.approx(np.mean([h[m.key] for h in held]), rel=1e-12)


def _md_row(md: str, label: str, strategy: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {label} | {strategy} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_columns_equal_what_mlflow_holds(stores: Stores, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    printed, rows = _report(stores, tmp_path, capsys, "--with-embedding")
    root, pre = stores.root, stores.pre
    shared = _uri(root / "shared.db")
    _check(rows[("multiview", "fixed")], _held(stores, "p1", shared))
    assert rows[("multiview", "fixed")]["pretrain_run_ids"] == pre["p1"]  # not the FAILED one's
    _check(rows[("multiview", "full")], _held(stores, "p1", shared),
           _held(stores, "p2", _uri(root / "pre2" / "mlflow.db")))
    assert rows[("multiview", "full")]["pretrain_run_ids"] == f"{pre['p1']};{pre['p2']}"
    _check(rows[("temporal", "full")], _held(stores, "p5", _uri(root / "pre5" / "mlflow.db")))
    assert _held(stores, "p1", shared)["embedding/n"] == 513.0
    for key in (("none", "scratch"), ("none", "imagenet"), ("multiview", "fixed-bn"),
                ("temporal", "fixed")):
        assert all(rows[key][m.name] == "" for m in EMBEDDING), key
    assert rows[("none", "scratch")]["embedding_note"] == "no pretraining checkpoint"
    assert "no `contra figures` run" in rows[("multiview", "fixed-bn")]["embedding_note"]

    md = (tmp_path / "table1.md").read_text()
    assert md in printed  # the printed table is the Markdown file
    head = _md_row(md, "Table 1 row", "strategy")
    assert head[9:15] == [m.title for m in EMBEDDING] + ["pretraining run"]
    assert _md_row(md, "Scratch", "none")[9:15] == ["n/a"] * 6
    fixed = _md_row(md, "Ours-Fixed", "multiview")
    p1 = _held(stores, "p1", shared)
    assert fixed[9:15] == [f"{p1[m.key]:.{m.digits}f}" for m in EMBEDDING] + [pre["p1"][:8]]
    assert _md_row(md, "Ours", "multiview")[13:15] == ["513.5", "mean of 2"]  # 513, 514 images
    assert _md_row(md, "Ours-Fixed-BN", "multiview")[9:14] == ["n/a"] * 5
    assert f"n/a — no `contra figures` run for pretraining run {pre['p3']}" in md
    assert f"pretraining run {pre['p4']} not found in `{stores.sweep}`" in md  # fell back
    assert f"its seeds started from 2 pretraining runs ({pre['p1']}, {pre['p2']})" in md
    assert f"`tracking_uri` of {root / 'pre1' / 'run.json'}" in md and "at step 240" in md
    assert f"(from run dir {root / 'pre5'}, whose run.json names no tracking URI)" in md
    assert "n/a for Scratch, ImageNet: no contra pretraining checkpoint" in md


def test_pretrain_tracking_uri_overrides_the_run_dirs(stores: Stores, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, rows = _report(stores, tmp_path, capsys, "--with-embedding",
                      "--pretrain-tracking-uri", stores.other)
    _check(rows[("temporal", "fixed")], _held(stores, "p4", stores.other))
    assert rows[("temporal", "fixed")]["pretrain_tracking_uris"] == stores.other
    md = (tmp_path / "table1.md").read_text()
    assert f"pretraining run {stores.pre['p1']} not found in `{stores.other}`" in md
    assert all(rows[("multiview", "fixed")][m.name] == "" for m in EMBEDDING)


def _without_embedding(md: str, first: int, n: int) -> str:
    """The Markdown with table columns ``first`` .. ``first + n - 1`` and the emb. notes cut."""
    out = []
    for line in md.splitlines():
        if re.match(r"\d+\. emb\.", line):
            continue
        edge, sep = ("|", "|") if line.startswith("|---") else ("| ", " | ")
        if line.startswith(edge):
            cells = line[len(edge):-len(edge)].split(sep)
            del cells[first:first + n]
            line = edge + sep.join(cells) + edge[::-1]
        out.append(line)
    return "\n".join(out) + "\n"


def test_without_the_flag_the_files_are_unchanged(stores: Stores, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The flag only adds: the table without it is the table with it, minus its columns and
    footnotes; the figure is the same file."""
    plain, with_emb = tmp_path / "plain", tmp_path / "emb"
    printed, _ = _report(stores, plain, capsys)
    _report(stores, with_emb, capsys, "--with-embedding")
    md = (plain / "table1.md").read_text()
    assert "emb." not in md and md in printed
    assert (plain / "table1.csv").read_text().splitlines()[0] == OLD_HEADER
    assert _without_embedding((with_emb / "table1.md").read_text(), 9, 6) == md
    with open(with_emb / "table1.csv", newline="") as f:
        full = list(csv.reader(f))
    trimmed, n = io.StringIO(), len(EMBEDDING) + 3  # + run ids, URIs, note
    csv.writer(trimmed, lineterminator="\n").writerows(r[:16] + r[16 + n:] for r in full)
    assert trimmed.getvalue() == (plain / "table1.csv").read_text()
    assert (plain / "table1.png").read_bytes() == (with_emb / "table1.png").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--pretrain-tracking-uri", "sqlite:////x.db"], "only read with --with-embedding"),
    (["--with-embedding", "--pretrain-tracking-uri", "sqlite:////nowhere/x.db"],
     "no SQLite store at /nowhere/x.db"),
])
def test_pretrain_uri_errors(stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str], message: str) -> None:
    code = main(["report", "--experiment", EXP, "--tracking-uri", stores.sweep,
                 "--out", str(tmp_path / "out"), *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_run_dir_store_reads_only_run_directories(tmp_path: Path) -> None:
    assert run_dir_store("") is None and run_dir_store("/hub/resnet50.pth") is None
    ckpt = tmp_path / "checkpoints" / "step_00000100.pt"
    ckpt.parent.mkdir()
    assert run_dir_store(str(ckpt)) is None  # no run.json, no mlflow.db
    (tmp_path / "run.json").write_text("[not, a, summary")
    (tmp_path / "mlflow.db").write_bytes(b"")
    store = run_dir_store(str(ckpt))
    assert store is not None and store.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    (tmp_path / "run.json").write_text(json.dumps({"tracking_uri": "http://h:5000"}))
    assert run_dir_store(str(ckpt)).uri == "http://h:5000"  # type: ignore[union-attr]
