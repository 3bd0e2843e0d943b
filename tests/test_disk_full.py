"""A full disk while writing: one line naming the file, the previous file kept, resume later.

The unit tests fake the error (no root needed); the end-to-end test mounts a small tmpfs as the
run directory (root only; skipped with one line elsewhere), so that a real single-process
pretraining run hits ENOSPC on its second checkpoint, then, after a remount with room for the
checkpoints but not for the exported encoders, on its final export, and finally finishes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from contra.atomic import DiskFullError, replacing, write_text_atomic
from contra.checkpoint import load_checkpoint, save_checkpoint
from contra.entry import EXIT_USER_ERROR, guarded

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
FIRST_SIZE = 200 * MiB  # one resnet18 MoCo checkpoint (~132 MiB) fits, a second one does not


# ------------------------------------------------------------------------------ unit tests
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_out_of_space_is_one_line_naming_the_file_and_leaves_it_unchanged(
        tmp_path: Path, code: int) -> None:
    target = write_text_atomic(tmp_path / "run.json", "old")
    with pytest.raises(DiskFullError) as exc, replacing(target) as tmp:
        tmp.write_text("partial")
        raise OSError(code, os.strerror(code))
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{target}: disk full while writing it (")
    assert "the previous run.json is unchanged. Free space there and run again" in message
    assert exc.value.errno == code and isinstance(exc.value, OSError)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left


def test_torch_save_wrapping_enospc_is_still_a_disk_full_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a failed write as a RuntimeError whose context is the OSError."""
    import torch

    def save(obj: object, f: object) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")  # noqa: B904

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DiskFullError, match=r"last\.pt: disk full while writing it \(no space "
                                            r"left on device; .*; nothing was written\."):
        save_checkpoint({"step": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise DiskFullError(errno.ENOSPC, f"{tmp_path}/x: disk full", str(tmp_path / "x"))

    assert guarded(fail) == EXIT_USER_ERROR
    assert capsys.readouterr().err == f"contra: error: {tmp_path}/x: disk full\n"


# ------------------------------------------------------------------------------ end to end
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A FIRST_SIZE tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FIRST_SIZE}", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def resize(mnt: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True, timeout=30)


def pretrain(run_dir: Path, data: Path) -> subprocess.CompletedProcess:
    """A seconds-long single-process run: checkpoints at steps 2, 4, 6 (kept as hard links)."""
    overrides = [f"run_dir={run_dir}", f"data_root={data}", "epochs=0", "max_steps=6",
                 "batch_size=8", "workers=0", "threads=1", "progress=false",
                 "pairs.image_size=32", "moco.queue_size=64", "monitor.every_epochs=0",
                 "checkpoint.every_steps=2", "checkpoint.keep_every=2", "tracking.enabled=false"]
    env = {k: v for k, v in os.environ.items()
           if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    return subprocess.run([sys.executable, "-m", "contra.pretrain", "--config",
                           str(ROOT / "configs" / "pretrain" / "demo.yaml"), *overrides],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def assert_one_line_error(proc: subprocess.CompletedProcess, path: Path) -> None:
    """Exit 2, no traceback, and the last stderr line is the one error line naming ``path``."""
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("contra: error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr[-3000:]
    assert errors[0].startswith(f"contra: error: {path}: disk full while writing it (no space "
                                f"left on device; "), errors[0]
    assert errors[0].endswith("Free space there and run again"), errors[0]


def test_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(
        small_disk: Path, synth_root: Path) -> None:
    run, data = small_disk / "run", synth_root / "hanco"
    last, kept = run / "checkpoints" / "last.pt", run / "checkpoints" / "step_00000002.pt"

    first = pretrain(run, data)  # step 2 fits; step 4's last.pt does not
    assert_one_line_error(first, last)
    assert "the previous last.pt is unchanged" in first.stderr
    assert os.path.samefile(last, kept)  # never replaced: still the step-2 file
    assert load_checkpoint(last)["step"] == 2
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]  # no partial files
    size = last.stat().st_size
    assert size < FIRST_SIZE < 2 * size, f"checkpoint of {size / MiB:.0f} MiB: adjust FIRST_SIZE"

    # room for the checkpoints of steps 4 and 6 beside the kept step-2 file, not for the exports
    resize(small_disk, 3 * size + 16 * MiB)
    second = pretrain(run, data)
    assert f"resumed {last} at epoch 0, step 2" in second.stderr
    assert_one_line_error(second, run / "export" / "backbone_torchvision.pth")
    assert load_checkpoint(last)["step"] == 6  # training itself is done and saved
    assert not (run / "run.json").exists()

    resize(small_disk, 4 * size + 16 * MiB)
    third = pretrain(run, data)  # finished: only the exports (and run.json) are left to write
    assert third.returncode == 0, third.stderr[-3000:]
    assert (run / "export" / "backbone_torchvision.pth").is_file()
    assert (run / "export" / "embed_contra_hand.pth").is_file()
    assert '"exit_code": 0' in (run / "run.json").read_text()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
