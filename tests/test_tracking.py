"""contra.tracking against real MLflow stores: the embedded SQLite one and a real server that is
stopped and restarted mid-run (no mocks)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflowutil import Server
from netutil import free_port

from contra.tracking import PARAM_VALUE_LIMIT, Tracker, TrackingConfig, flatten_params, save_curve

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

LOGGER = "contra.tracking"
_HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
             "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture(autouse=True)
def _restore_http_env() -> Iterator[None]:
    """The tracker sets MLflow's HTTP retry variables for the process; undo that per test."""
    saved = {k: os.environ.get(k) for k in _HTTP_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One port and backend DB for the server tests; each test starts/stops it as it needs, so
    the tests in file order cost two server starts. Always killed on teardown."""
    srv = Server(tmp_path_factory.mktemp("server"), free_port())
    try:
        yield srv
    finally:
        srv.stop()


def _config(**kw: object) -> TrackingConfig:
    # a loaded test machine can take seconds per request: a long timeout avoids false outages;
    # a stopped server still fails at once (connection refused)
    return TrackingConfig(**{"retry_interval_s": 0.5, "request_timeout_s": 10.0, **kw})


def _timed_log(tracker: Tracker, steps: range) -> float:
    """Log ``loss`` at ``steps``; the slowest call in seconds."""
    worst = 0.0
    for step in steps:
        t0 = time.perf_counter()
        tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
        worst = max(worst, time.perf_counter() - t0)
    return worst


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.WARNING]


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def _steps(client: MlflowClient, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


CONFIG = {"seed": 0, "optim": {"lr": 0.03, "schedule": {"kind": "cosine", "warmup": 5}},
          "data": {"roots": ["/a", "/b"], "size": 224}, "empty": {}, "long": "x" * 900}


# --------------------------------------------------------------------------- SQLite
@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run in the default embedded store: params, metrics at 5 steps, an artifact."""
    root = tmp_path_factory.mktemp("sqlite")
    (root / "config.yaml").write_text("seed: 0\n")
    run_dir = root / "run"  # not created yet: the tracker makes it
    tracker = Tracker(_config(), run_dir, tags={"stage": "pretrain"})
    tracker.log_params(CONFIG)
    for step in range(5):
        tracker.log_metrics({"loss": 5.0 - step, "epoch": step // 2}, step=step * 10)
    tracker.log_artifact(root / "config.yaml")
    tracker.close()
    assert tracker.run_id is not None
    return run_dir, tracker.run_id


def test_sqlite_default_store(sqlite_run: tuple[Path, str]) -> None:
    run_dir, run_id = sqlite_run
    assert (run_dir / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "pretrain"
    params = run.data.params
    assert params["optim.lr"] == "0.03"
    assert params["optim.schedule.kind"] == "cosine"
    assert params["data.roots"] == "['/a', '/b']"
    assert params["empty"] == "{}"
    assert len(params["long"]) == PARAM_VALUE_LIMIT
    assert _steps(client, run_id) == [0, 10, 20, 30, 40]
    assert [m.value for m in client.get_metric_history(run_id, "epoch")] == [0, 0, 1, 1, 2]
    art = run_dir / "mlartifacts"
    assert list(art.rglob("config.yaml")), "artifact not stored under the run dir"
    assert run.info.artifact_uri.startswith((run_dir / "mlartifacts").as_uri())
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]


def test_sqlite_resume_continues_same_run(sqlite_run: tuple[Path, str], tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    src, run_id = sqlite_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)  # the same store, without touching the other test's run
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    caplog.set_level(logging.INFO, logger=LOGGER)
    tracker = Tracker(_config(), run_dir, run_id=run_id)
    assert tracker.run_id == run_id
    assert tracker.wait_for_run(30) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    # same values: no error; one changed value: one warning, the first value is kept
    tracker.log_params({**CONFIG, "seed": 1, "resumed": True})
    tracker.log_metrics({"loss": 0.5}, step=50)
    assert tracker.flush(30)
    tracker.close("KILLED")
    assert client.get_run(run_id).info.status == "KILLED"
    # a preempted run can be resumed again
    again = Tracker(_config(), run_dir, run_id=run_id)
    again.log_metrics({"loss": 0.25}, step=60)
    again.close()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, run_id) == [0, 10, 20, 30, 40, 50, 60]
    assert run.data.params["seed"] == "0" and run.data.params["resumed"] == "True"
    changed = [m for m in _warnings(caplog) if "different values" in m]
    assert len(changed) == 1 and "seed" in changed[0]
    assert len(client.search_runs([run.info.experiment_id])) == 1


# --------------------------------------------------------------------------- server
def test_server_down_at_start(server: Server, tmp_path: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server.stop()  # nothing listens on the port
    tracker = Tracker(_config(tracking_uri=server.uri, run_name="late"), tmp_path / "run",
                      tags={"stage": "pretrain"})
    tracker.log_params({"a": {"b": 1}})
    worst = _timed_log(tracker, range(20))
    assert worst < 0.05
    assert not tracker.flush(2)
    assert tracker.run_id is None
    assert len(_warnings(caplog)) == 1

    server.start()
    run_id = tracker.wait_for_run(30)
    assert run_id is not None
    tracker.close(timeout=30)
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(run_id)
    assert (run.info.status, run.info.run_name) == ("FINISHED", "late")
    assert run.data.params == {"a.b": "1"}
    assert run.data.tags["stage"] == "pretrain"
    assert _steps(client, run_id) == list(range(20))
    assert any("reconnected: flushed" in m for m in _infos(caplog))
    assert len(_warnings(caplog)) == 1


def test_server_goes_down_and_comes_back(server: Server, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    if not server.running:
        server.start()
    tracker = Tracker(_config(tracking_uri=server.uri), tmp_path / "run")
    tracker.log_params(CONFIG)
    _timed_log(tracker, range(5))
    assert tracker.flush(30)
    run_id = tracker.run_id
    assert run_id is not None
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"

    server.stop()
    curve = save_curve(tmp_path / "curve.png", {"loss": ([0, 1], [1.0, 0.5])})
    worst = _timed_log(tracker, range(5, 30))
    tracker.log_artifact(curve)
    t0 = time.monotonic()
    assert not tracker.flush(3)  # the failure is detected fast, not after MLflow's backoff
    assert time.monotonic() - t0 < 4
    worst = max(worst, _timed_log(tracker, range(30, 40)))
    assert worst < 0.05, f"log_metrics blocked for {worst:.3f} s while the server was down"
    warned = _warnings(caplog)
    assert len(warned) == 1, warned
    assert "unreachable" in warned[0] and server.uri in warned[0]

    server.start()
    tracker.close(timeout=30)
    assert any("reconnected: flushed" in m for m in _infos(caplog))
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, run_id) == list(range(40))
    assert _steps(client, run_id, "lr") == list(range(40))
    assert run.data.params["optim.schedule.warmup"] == "5"
    assert [a.path for a in client.list_artifacts(run_id)] == ["curve.png"]
    assert len(_warnings(caplog)) == 1


# --------------------------------------------------------------------------- no server at all
def test_buffer_bound_and_close_while_down(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Nothing ever listens: the oldest metrics are dropped, close returns and says what is lost."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    cfg = _config(tracking_uri=f"http://127.0.0.1:{free_port()}", max_buffer=5)
    tracker = Tracker(cfg, tmp_path)
    for step in range(12):
        tracker.log_metrics({"loss": 1.0}, step=step)
    assert tracker.pending() <= 5
    t0 = time.monotonic()
    tracker.close(timeout=1.0)
    assert time.monotonic() - t0 < 5
    warned = _warnings(caplog)
    assert sum("buffer full" in m for m in warned) == 1
    assert sum("unreachable" in m for m in warned) == 1
    assert any("not delivered" in m and "5 records" in m for m in warned)
    tracker.log_metrics({"loss": 1.0}, step=99)  # after close: ignored, no error


def test_disabled_tracker_is_a_no_op(tmp_path: Path) -> None:
    tracker = Tracker(TrackingConfig(enabled=False), tmp_path, run_id="abc")
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_artifact(tmp_path / "missing")
    assert tracker.flush() and tracker.run_id == "abc" and tracker.wait_for_run(0) is None
    tracker.close()
    assert not list(tmp_path.iterdir())
    assert Tracker.disabled().pending() == 0


def test_flatten_params() -> None:
    flat = flatten_params({"a": {"b": {"c": 1}, "d": None}, "e": [1, 2], "f": "y" * 600})
    assert flat["a.b.c"] == "1" and flat["a.d"] == "None" and flat["e"] == "[1, 2]"
    assert len(flat["f"]) == PARAM_VALUE_LIMIT and flat["f"].endswith("...")


def test_ui_command() -> None:
    cmd = Tracker.ui_command("sqlite:////abs/run/mlflow.db")
    assert cmd == ("mlflow ui --backend-store-uri sqlite:////abs/run/mlflow.db "
                   "--host 127.0.0.1 --port 5000 --workers 1")
    assert "http://h:5000" in Tracker.ui_command("http://h:5000")


def test_runs_view_url_opens_the_runs_of_the_experiment(server: Server) -> None:
    """The printed link's target: the UI page, this MLflow's route and view switch, the id."""
    import json
    import re
    import urllib.request

    from contra.tracking import runs_view_url

    if not server.running:  # the test before may leave it up
        server.start()
    try:
        client = MlflowClient(server.uri)
        exp_id = client.create_experiment("ui-link-check")
        url = runs_view_url(server.uri, exp_id)
        assert url == (f"{server.uri}/#/experiments/{exp_id}/runs"
                       "?workflowType=machine_learning")
        page = url.partition("#")[0]
        with urllib.request.urlopen(page, timeout=10) as resp:
            html = resp.read().decode()
        assert resp.status == 200 and "<div id=\"root\"" in html.replace("'", '"')
        bundle = re.search(r'src="([^"]*static/js/main\.[0-9a-f]+\.js)"', html)
        assert bundle, html[:500]
        js_url = page.rstrip("/") + "/" + bundle.group(1).lstrip("./").lstrip("/")
        with urllib.request.urlopen(js_url, timeout=30) as resp:
            js = resp.read().decode()
        # this MLflow version's hash router has the runs route and reads the view switch
        assert '"/experiments/:experimentId/runs"' in js and "createHashRouter" in js
        assert 'get("workflowType")' in js and '"machine_learning"' in js
        api = f"{server.uri}/ajax-api/2.0/mlflow/experiments/get?experiment_id={exp_id}"
        with urllib.request.urlopen(api, timeout=10) as resp:
            assert json.loads(resp.read())["experiment"]["name"] == "ui-link-check"
        assert runs_view_url("sqlite:////x/mlflow.db", "7").startswith("http://127.0.0.1:5000/#/")
    finally:
        server.stop()


def test_save_curve_png(tmp_path: Path) -> None:
    path = save_curve(tmp_path / "sub" / "loss.png",
                      {"loss": ([0, 10, 20], [5.0, 3.0, 2.5]), "ema": ([0, 20], [5.0, 2.8])},
                      title="MoCo InfoNCE loss")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]
