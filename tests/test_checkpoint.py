"""Atomic checkpoints: bitwise round trips, weights_only refusal, RNG restore, SIGKILL mid-write."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from contra.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

K, D = 64, 16


def _assert_equal(a: Any, b: Any, where: str = "state") -> None:
    """Recursive bitwise equality of nested dicts/lists/tuples of tensors and primitives."""
    assert type(a) is type(b) or (isinstance(a, tuple | list) and isinstance(b, tuple | list)), (
        f"{where}: {type(a)} vs {type(b)}"
    )
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_q = nn.Sequential(
            nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, D)
        )
        self.encoder_k = nn.Sequential(
            nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, D)
        )


def _realistic_state() -> dict[str, Any]:
    """Model (`module.encoder_q.*` keys) + SGD momentum after two steps, queue, config, RNG."""
    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        opt.zero_grad()
        x = torch.randn(4, 8)
        (net.encoder_q(x).square().sum() + net.encoder_k(x).sum()).backward()
        opt.step()
    model = {f"module.{k}": v for k, v in net.state_dict().items()}
    queue = nn.functional.normalize(torch.randn(K, D), dim=1)
    return {
        "state_dict": model,
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "global_step": 1234,
        "step_in_epoch": 17,
        "queue": {"queue": queue, "ptr": 0, "K": K, "D": D, "N": 8, "R": 2, "B": 4, "T": 0.2},
        "config": {
            "model": {"arch": "resnet50", "dim": D, "mlp": True},
            "optim": {"lr": 0.03, "momentum": 0.9, "schedule": [120, 160]},
            "data": {"root": "/data/hanco", "views": None},
        },
        "sampler_seed": 42,
        "rng": [capture_rng_state(), capture_rng_state()],
        "run_id": "a1b2c3d4e5f6",
    }


def test_round_trip_bitwise(tmp_path: Path) -> None:
    state = _realistic_state()
    assert "module.encoder_q.0.weight" in state["state_dict"]
    assert state["optimizer"]["state"], "momentum buffers should exist after steps"
    path = save_checkpoint(state, tmp_path / "sub" / "c.pt")
    loaded = load_checkpoint(path)
    _assert_equal(state, loaded)
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary left behind


def test_loaded_state_restores_model_and_optimizer(tmp_path: Path) -> None:
    state = _realistic_state()
    mgr = CheckpointManager(tmp_path)
    mgr.save(state, step=1)
    loaded = mgr.load()
    net = _Net()
    net.load_state_dict({k.removeprefix("module."): v for k, v in loaded["state_dict"].items()})
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(loaded["optimizer"])
    _assert_equal(opt.state_dict(), state["optimizer"])


class _Payload:
    """Would create `target` when unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


class _Custom:
    def __init__(self) -> None:
        self.x = 1


def test_weights_only_refuses_arbitrary_objects(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "x": _Payload(target)}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt") as info:
        CheckpointManager(tmp_path).load(evil)
    assert "\n" not in str(info.value)
    assert "objects other than tensors" in str(info.value)
    assert not target.exists(), "the payload was executed"

    custom = tmp_path / "custom.pt"
    torch.save({"obj": _Custom()}, custom)
    with pytest.raises(CheckpointError, match=r"custom\.pt"):
        load_checkpoint(custom)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "not_a_dict"])
def test_corrupt_or_foreign_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        save_checkpoint(_realistic_state(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=rf"{kind}\.pt") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_failed_save_keeps_previous_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"a": torch.arange(5)}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        save_checkpoint({"a": torch.arange(6), "f": lambda: 0}, path)
    _assert_equal(load_checkpoint(path), {"a": torch.arange(5)})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def _draws() -> tuple[list[float], np.ndarray, torch.Tensor, float, float]:
    return (
        [random.random() for _ in range(5)],
        np.random.rand(5),
        torch.rand(5),
        random.gauss(0, 1),
        float(np.random.standard_normal()),
    )


def test_rng_capture_restore_through_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's state
    np.random.standard_normal()  # draw an odd count so numpy caches one as well
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "r.pt")
    expected = _draws()
    _draws()  # move all generators on
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = _draws()
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])
    assert got[3:] == expected[3:]


def test_keep_every_retention_and_latest(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_every=3)
    assert mgr.latest() is None
    with pytest.raises(FileNotFoundError):
        mgr.load()
    for step in range(1, 8):
        mgr.save({"step": step, "w": torch.full((4,), float(step))}, step=step)
    mgr.save({"step": 8, "w": torch.full((4,), 8.0)}, step=8, epoch_end=True)
    assert [p.name for p in mgr.kept()] == [
        "step_00000003.pt",
        "step_00000006.pt",
        "step_00000008.pt",
    ]
    assert mgr.latest() == mgr.dir / "last.pt"
    assert mgr.load()["step"] == 8
    assert mgr.load(mgr.dir / "step_00000003.pt")["step"] == 3  # not changed by later saves
    (mgr.dir / "last.pt").unlink()
    assert mgr.latest() == mgr.dir / "step_00000008.pt"

    only_last = CheckpointManager(tmp_path / "b")
    for step in range(1, 5):
        only_last.save({"step": step}, step=step, epoch_end=True)
    assert sorted(p.name for p in only_last.dir.iterdir()) == ["last.pt"]
    with pytest.raises(ValueError):
        CheckpointManager(tmp_path, keep_every=-1)


def test_stale_temporaries_are_ignored_and_cleaned(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    mgr.save({"step": 1}, step=1)
    stale = mgr.dir / ".last.pt.abc123.tmp"
    stale.write_bytes(b"PK\x03\x04 half a zip")
    assert mgr.load()["step"] == 1
    mgr2 = CheckpointManager(tmp_path)
    assert not stale.exists()
    assert mgr2.load()["step"] == 1


# --- SIGKILL in the middle of a write ------------------------------------------------------------

_N_FLOATS = 16 * 1024 * 1024  # 64 MB per state

_CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    from contra.checkpoint import CheckpointManager

    run_dir, marker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = torch.randn(n, generator=torch.Generator().manual_seed(0))
    mgr = CheckpointManager(run_dir)
    i = 0
    while True:
        i += 1
        state = {"index": i, "w": base + i, "tag": torch.full((8,), i), "cfg": {"i": i}}
        with open(marker, "a") as f:
            f.write(f"start {i} {time.monotonic()}\\n")
        mgr.save(state, step=i)
        with open(marker, "a") as f:
            f.write(f"done {i} {time.monotonic()}\\n")
    """
)


def _events(marker: Path) -> list[tuple[str, int, float]]:
    if not marker.exists():
        return []
    out = []
    for line in marker.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), float(parts[2])))
    return out


def _kill_mid_write(tmp_path: Path, fraction: float) -> tuple[Path, Path, bool]:
    """Run the saving child, SIGKILL it `fraction` of a save into save #2 (or later).

    Returns (run_dir, marker, whether a temporary file was left, i.e. the kill hit a write).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(run_dir), str(marker), str(_N_FLOATS)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(e[:2] == ("start", 2) for e in _events(marker)):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "child never reached save #2"
            time.sleep(0.005)
        t = {(kind, i): ts for kind, i, ts in _events(marker)}
        time.sleep(fraction * (t[("done", 1)] - t[("start", 1)]))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    hit = any(p.name.endswith(".tmp") for p in (run_dir / "checkpoints").iterdir())
    return run_dir, marker, hit


def test_sigkill_mid_write_leaves_previous_checkpoint(tmp_path: Path) -> None:
    base = torch.randn(_N_FLOATS, generator=torch.Generator().manual_seed(0))
    hits = 0
    for n, fraction in enumerate([0.1, 0.3, 0.5, 0.8]):
        run_dir, marker, hit = _kill_mid_write(tmp_path / str(n), fraction)
        hits += hit
        done = {i for kind, i, _ in _events(marker) if kind == "done"}
        started = max(i for kind, i, _ in _events(marker) if kind == "start")
        loaded = CheckpointManager(run_dir).load()
        i = loaded["index"]
        assert i in done or i == started  # the kill may land after os.replace, before "done"
        assert i >= max(done)
        expected = {"index": i, "w": base + i, "tag": torch.full((8,), i), "cfg": {"i": i}}
        _assert_equal(loaded, expected)
        leftovers = [p.name for p in (run_dir / "checkpoints").iterdir()]
        assert leftovers == ["last.pt"], leftovers  # the manager cleaned any stale temporary
    assert hits >= 1, "no kill landed in the middle of a write"
