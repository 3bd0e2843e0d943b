"""A real ``mlflow server`` on 127.0.0.1 that tests start, kill (as a crash) and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

#: MLflow's variables that ``contra report`` sets for its process
REPORT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
              "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture(autouse=True)
def restore_report_env() -> Iterator[None]:
    """The report sets MLflow's HTTP variables for the process; undo that per test (import this
    fixture into a test module to use it there)."""
    saved = {k: os.environ.pop(k, None) for k in REPORT_ENV}
    yield
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


class Server:
    """``mlflow server`` in its own process group on a fixed port and backend DB."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{self.root / 'srv.db'}",
               "--artifacts-destination", str(self.root / "art"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"mlflow server not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Kill the whole process group (the CLI and its uvicorn child): the server is gone at
        once, as after a crash; SQLite keeps the backend DB consistent."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
