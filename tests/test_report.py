"""contra report against real MLflow stores (no mocks): a SQLite store filled with a sweep's
fine-tune runs through MlflowClient, then a real ``mlflow server`` on a copy of it, whose numbers
are checked against its own REST API."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflowutil import Server, restore_report_env  # noqa: F401 (autouse fixture)
from netutil import free_port

from contra.cli import main
from contra.report import build_report, write_report
from contra.table1 import (
    METRICS,
    PAPER_MISSING_NOTE,
    PaperRow,
    RunRecord,
    Source,
    format_markdown,
    save_figure,
    summarise,
    table_rows,
)

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric as MlflowMetric  # noqa: E402

EXP = "contra-finetune"
PARENT_TAG = "mlflow.parentRunId"
KEYS = [m.key for m in METRICS]
STEPS = (300, 100, 200)  # logged out of step order: the report must take step 300's value

# sweep A (parent param seeds = [0, 1]): (row, strategy, seed, status)
SWEEP_A = [("scratch", "none", 0, "FINISHED"), ("scratch", "none", 1, "FINISHED"),
           ("fixed", "multiview", 0, "FINISHED"), ("fixed", "multiview", 1, "FINISHED"),
           ("full", "multiview", 0, "FINISHED"), ("full", "multiview", 1, "FAILED"),
           ("fixed", "background", 0, "FINISHED"), ("fixed", "background", 1, "FINISHED"),
           ("full", "background", 0, "FINISHED")]  # background full lacks seed 1
# sweep B (another parent, no seeds param): must never leak into sweep A's table
SWEEP_B = [("full", "multiview", s, "FINISHED") for s in (0, 1, 2)]


@dataclass
class Store:
    uri: str
    db: Path
    exp_id: str
    sweep_a: str
    sweep_b: str
    bad_seeds: str  # a parent whose seeds param is not a JSON list
    finals: dict[tuple[str, str, str, int], dict[str, float]]  # (sweep, strategy, row, seed)
    ignored: int  # runs without a table1_row tag


def _final(rng: np.random.Generator, leak: bool) -> dict[str, float]:
    mesh = rng.uniform(0.7, 1.2) + (8.0 if leak else 0.0)
    return {KEYS[0]: mesh, KEYS[1]: rng.uniform(0.4, 0.7), KEYS[2]: rng.uniform(0.9, 0.99),
            "eval/xyz_al_mean3d_cm": mesh * 0.9}


def _history(final: dict[str, float], t0: int, steps: tuple[int, ...]) -> list[MlflowMetric]:
    """Each metric at several steps, worse before the last one; timestamps rise in logging
    order, so step 300 carries the *earliest* timestamp."""
    out = []
    for i, step in enumerate(steps):
        worse = (300 - step) / 100.0
        for key, value in final.items():
            shift = -0.1 * worse if key.startswith("eval/f_") else 0.3 * worse
            out.append(MlflowMetric(key, value + shift, t0 + i, step))
    return out


def _child(client: MlflowClient, exp_id: str, parent: str, spec: tuple[str, str, int, str],
           final: dict[str, float], start: int) -> str:
    row, strategy, seed, status = spec
    tags = {PARENT_TAG: parent, "table1_row": row, "strategy": strategy, "seed": str(seed),
            "init_mode": "scratch" if row == "scratch" else "moco", "freeze": "none",
            "pretrain_run_id": "", "checkpoint_sha256": "", "mano_model": "standin"}
    run = client.create_run(exp_id, start_time=start, tags=tags,
                            run_name=f"finetune {row} {strategy} seed {seed}")
    steps = (100,) if status == "FAILED" else STEPS  # a failed run stops after one evaluation
    client.log_batch(run.info.run_id, metrics=_history(final, start, steps))
    client.set_terminated(run.info.run_id, status=status, end_time=start + 1000)
    return run.info.run_id


def _parent(client: MlflowClient, exp_id: str, start: int, seeds: str | None) -> str:
    run = client.create_run(exp_id, start_time=start, run_name="sweep")
    if seeds is not None:
        client.log_param(run.info.run_id, "seeds", seeds)
    client.set_terminated(run.info.run_id, end_time=start + 1)
    return run.info.run_id


def _fill(client: MlflowClient, exp_id: str) -> tuple[str, str, str, dict, int]:
    rng = np.random.default_rng(0)
    finals: dict[tuple[str, str, str, int], dict[str, float]] = {}
    start = 1_700_000_000_000
    a, b = _parent(client, exp_id, start, "[0, 1]"), _parent(client, exp_id, start + 1, None)
    bad = _parent(client, exp_id, start + 2, "zero and one")
    for name, parent, specs in (("A", a, SWEEP_A), ("B", b, SWEEP_B)):
        for spec in specs:
            start += 10_000
            final = _final(rng, leak=name == "B")
            finals[(name, spec[1], spec[0], spec[2])] = final
            _child(client, exp_id, parent, spec, final, start)
    stray = client.create_run(exp_id, tags={PARENT_TAG: a})  # a child that is no fine-tune
    client.set_terminated(stray.info.run_id)
    lone = client.create_run(exp_id, start_time=start + 10_000,  # outside any sweep
                             tags={"table1_row": "imagenet", "strategy": "none", "seed": "0"})
    finals[("-", "none", "imagenet", 0)] = _final(rng, leak=False)
    client.log_batch(lone.info.run_id, metrics=_history(finals[("-", "none", "imagenet", 0)],
                                                        start, STEPS))
    client.set_terminated(lone.info.run_id)
    return a, b, bad, finals, 4  # ignored: parents A, B, bad, and the stray child


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    db = root / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXP, artifact_location=str(root / "artifacts"))
    a, b, bad, finals, ignored = _fill(client, exp_id)
    return Store(uri, db, exp_id, a, b, bad, finals, ignored)


def _report(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", "--experiment", EXP, *args])
    out, err = capsys.readouterr()
    return code, out, err


def _csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        return {(r["strategy"], r["row"]): r for r in csv.DictReader(f)}


def _expect(values: list[float]) -> tuple[float, float | None]:
    arr = np.array(values)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _check_stats(row: dict[str, str], values: dict[str, list[float]]) -> None:
    for m in METRICS:
        mean, std = _expect(values[m.key])
        assert float(row[f"{m.name}_mean"]) == pytest.approx(mean, rel=1e-12)
        if std is None:
            assert row[f"{m.name}_std"] == ""
        else:
            assert float(row[f"{m.name}_std"]) == pytest.approx(std, rel=1e-12)


def _finals(store: Store, sweep: str, strategy: str, row: str, seeds: list[int]) -> dict:
    return {k: [store.finals[(sweep, strategy, row, s)][k] for s in seeds] for k in KEYS}


# ------------------------------------------------------------------------------ SQLite store
def test_sweep_report_on_sqlite(store: Store, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _report(["--tracking-uri", store.uri, "--sweep", store.sweep_a,
                              "--out", str(tmp_path)], capsys)
    assert code == 0, err
    rows = _csv(tmp_path / "table1.csv")
    assert list(rows) == [("none", "scratch"), ("background", "fixed"), ("background", "full"),
                          ("multiview", "fixed"), ("multiview", "full")]
    complete = {("none", "scratch"), ("background", "fixed"), ("multiview", "fixed")}
    for strategy, row in complete:
        r = rows[(strategy, row)]
        assert (r["n_seeds"], r["n_expected"], r["status"]) == ("2", "2", "2 of 2 seeds finished")
        _check_stats(r, _finals(store, "A", strategy, row, [0, 1]))
    failed, missing = rows[("multiview", "full")], rows[("background", "full")]
    assert failed["status"] == "1 of 2 seeds finished; 1 FAILED (seed 1)"
    assert missing["status"] == "1 of 2 seeds finished; 1 missing (seed 1)"
    _check_stats(failed, _finals(store, "A", "multiview", "full", [0]))  # not sweep B's 9 cm
    _check_stats(missing, _finals(store, "A", "background", "full", [0]))
    assert all(r[f"paper_{m.name}"] == "" for r in rows.values() for m in METRICS)

    md = (tmp_path / "table1.md").read_text()
    assert md in out and f"`{EXP}`" in md and store.sweep_a in md and store.uri in md
    assert "| Ours | multiview |" in md and "± —" in md and "n/a" in md
    assert PAPER_MISSING_NOTE.split(" — ")[0] in md and "1 run(s) without a `table1_row`" in md
    assert (tmp_path / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {f.path for f in MlflowClient(tracking_uri=store.uri).list_artifacts(store.sweep_a)}
    assert logged == {"table1.md", "table1.csv", "table1.png"}
    assert f"logged them as artifacts of sweep run {store.sweep_a}" in out


def test_report_without_sweep_uses_every_tagged_run(store: Store, tmp_path: Path) -> None:
    """No sweep: every table1_row run; the expected seeds are the union (0, 1, 2); a seed with
    two finished runs counts once (the latest), a FAILED seed with a later finished run counts."""
    report = build_report(EXP, store.uri, tmp_path, page_size=3)  # 4+ pages of search results
    rows = {(r.strategy, r.row): r for r in report.rows}
    assert [(r.strategy, r.row) for r in report.rows][:2] == [("none", "scratch"),
                                                              ("none", "imagenet")]
    assert rows[("none", "imagenet")].status == "1 of 3 seeds finished; 2 missing (seeds 1, 2)"
    assert rows[("none", "scratch")].status == "2 of 3 seeds finished; 1 missing (seed 2)"
    full = rows[("multiview", "full")]
    assert full.finished == ("0", "1", "2")
    assert full.status == ("3 of 3 seeds finished; 1 with several finished runs, the latest "
                           "used (seed 0)")
    expect = _finals(store, "B", "multiview", "full", [0, 1, 2])  # B's runs started later
    assert full.stats["mesh_al_cm"].mean == pytest.approx(np.mean(expect[KEYS[0]]))
    assert report.source.ignored == store.ignored and report.logged_to is None
    assert not report.source.seeds_declared
    assert (tmp_path / "table1.md").read_text() == report.markdown
    # the sweep driver's entry point: same table, text only
    assert write_report(store.uri, EXP, tmp_path / "w") == report.markdown


@pytest.mark.parametrize("case, message", [
    ("no-uri", "no tracking URI: pass --tracking-uri"),
    ("no-db", "no SQLite store at"),
    ("experiment", "experiment 'nope' not found"),
    ("sweep", "sweep parent run 0123456789abcdef0123456789abcdef not found"),
    ("childless", "has no runs with a table1_row tag that are children of sweep run"),
    ("bad-seeds", "param seeds='zero and one' is not a JSON list"),
    ("bad-id", "not an MLflow run id"),
    ("file-store", "not a tracking URI the report reads"),
    ("not-a-db", "file is not a database"),
    ("out-is-a-file", "--out"),
])
def test_one_line_errors(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         case: str, message: str) -> None:
    uri = ["--tracking-uri", store.uri]
    args = {"no-uri": [], "no-db": ["--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"],
            "experiment": uri, "sweep": [*uri, "--sweep", "0123456789abcdef0123456789abcdef"],
            "childless": [],
            "bad-seeds": [*uri, "--sweep", store.bad_seeds], "bad-id": [*uri, "--sweep", "x' OR"],
            "file-store": ["--tracking-uri", str(tmp_path / "mlruns")],
            "not-a-db": ["--tracking-uri", f"sqlite:///{tmp_path / 'junk.db'}"],
            "out-is-a-file": uri}
    (tmp_path / "junk.db").write_text("not sqlite")
    if case == "childless":  # a real run that is nobody's parent
        child = MlflowClient(tracking_uri=store.uri).search_runs(
            [store.exp_id], "tags.table1_row = 'scratch'")[0].info.run_id
        args[case] = [*uri, "--sweep", child]
    experiment = "nope" if case == "experiment" else EXP
    out_dir = tmp_path / ("junk.db" if case == "out-is-a-file" else "out")
    code = main(["report", "--experiment", experiment, *args[case], "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("contra: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.db").exists()


def test_unreachable_server_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    code, out, err = _report(["--tracking-uri", f"http://127.0.0.1:{free_port()}",
                              "--out", str(tmp_path)], capsys)
    assert code == 2 and out == "" and time.monotonic() - t0 < 15
    assert err.count("\n") == 1 and "is unreachable: [Errno 111] Connection refused" in err, err


# ------------------------------------------------------------------------------ pure functions
def _rec(seed: int, status: str = "FINISHED", mesh: float = 1.0, row: str = "full",
         strategy: str = "multiview", drop: str = "") -> RunRecord:
    metrics = {k: mesh for k in KEYS if k != drop}
    return RunRecord(f"r{seed}{status}{row}", row, strategy, str(seed), status, metrics, seed)


def test_status_names_every_seed_that_did_not_count() -> None:
    runs = [_rec(0, mesh=1.0), _rec(2, "FAILED"), _rec(3, "RUNNING"), _rec(4, drop=KEYS[2]),
            _rec(7, mesh=5.0), _rec(5, "KILLED"), _rec(6, mesh=3.0)]
    row = summarise("full", "multiview", runs, ["0", "1", "2", "3", "4", "5", "6"])
    assert row.status == ("2 of 7 seeds finished; 1 FAILED (seed 2); 1 KILLED (seed 5); "
                          "1 RUNNING (seed 3); 1 FINISHED without final eval metrics (seed 4); "
                          "1 missing (seed 1); 1 outside the sweep's seeds, not averaged (seed 7)")
    assert row.finished == ("0", "6") and row.stats["mesh_al_cm"].mean == pytest.approx(2.0)
    assert row.stats["mesh_al_cm"].std == pytest.approx(np.std([1.0, 3.0], ddof=1))


def test_order_and_paper_values_beside_matching_rows_only(tmp_path: Path) -> None:
    runs = [_rec(0, row=r, strategy=s) for s in ("temporal", "background") for r in
            ("full", "odd", "fixed-bn", "fixed")] + [_rec(0, row="imagenet", strategy="none"),
                                                     _rec(0, row="scratch", strategy="none")]
    paper = {"full": PaperRow(0.5, 0.7, 0.99, "multiview")}
    rows = table_rows(runs, ["0"], paper)
    assert [(r.strategy, r.row) for r in rows] == [
        ("none", "scratch"), ("none", "imagenet"), ("background", "fixed"),
        ("background", "fixed-bn"), ("background", "full"), ("background", "odd"),
        ("temporal", "fixed"), ("temporal", "fixed-bn"), ("temporal", "full"),
        ("temporal", "odd")]
    assert [r.row for r in rows if r.paper] == ["full", "full"]
    md = format_markdown(rows, Source(EXP, "sqlite:////x.db", paper=paper))
    line = next(x for x in md.splitlines() if x.startswith("| Ours | background |"))
    assert "| 0.500 | 0.700 | 0.990 |" in line
    assert "| Ours-Fixed | background | 1.000 ± — |" in md and "multiview pretraining" in md
    png = save_figure(tmp_path / "paper.png", rows, "with paper markers")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert format_markdown(rows, Source(EXP, "http://u:pw@h:1")).count("n/a") > 0
    assert "pw@" not in format_markdown(rows, Source(EXP, "http://u:pw@h:1"))


# ------------------------------------------------------------------------------ HTTP server
@pytest.fixture
def server(store: Store, tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a copy of the store, in its own process group."""
    shutil.copy(store.db, tmp_path / "srv.db")
    srv = Server(tmp_path, free_port())
    try:
        srv.start()
        yield srv.uri
    finally:
        srv.stop()


def _rest(uri: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _rest_groups(uri: str, parent: str) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Table 1 groups computed from the REST API alone: FINISHED children with all three
    metrics (``data.metrics`` holds each metric's latest value)."""
    exp = _rest(uri, f"experiments/get-by-name?experiment_name={EXP}")["experiment"]
    runs = _rest(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                      "filter": f"tags.`{PARENT_TAG}` = '{parent}'",
                                      "max_results": 1000})["runs"]
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        if "table1_row" not in tags:
            continue
        group = groups[(tags["strategy"], tags["table1_row"])]
        if run["info"]["status"] == "FINISHED" and all(k in metrics for k in KEYS):
            for k in KEYS:
                group[k].append(metrics[k])
    return groups


def test_http_server_numbers_equal_its_rest_api(store: Store, server: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _report(["--tracking-uri", server, "--sweep", store.sweep_a,
                              "--out", str(tmp_path / "http")], capsys)
    assert code == 0, err
    assert server in (tmp_path / "http" / "table1.md").read_text() and server in out
    rows = _csv(tmp_path / "http" / "table1.csv")
    groups = _rest_groups(server, store.sweep_a)
    assert set(rows) == set(groups)
    for key, values in groups.items():
        assert int(rows[key]["n_seeds"]) == len(values[KEYS[0]])
        for m in METRICS:
            vals = values[m.key]
            assert float(rows[key][f"{m.name}_mean"]) == pytest.approx(statistics.fmean(vals))
            std = rows[key][f"{m.name}_std"]
            assert (std == "") if len(vals) < 2 else \
                float(std) == pytest.approx(statistics.stdev(vals))
    assert rows[("multiview", "full")]["status"] == "1 of 2 seeds finished; 1 FAILED (seed 1)"
