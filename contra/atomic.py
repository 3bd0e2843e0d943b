"""Atomic file writes: readers (and a crash at any moment) see the old file or the new one.

A write that runs out of space (ENOSPC, EDQUOT, EFBIG) ends as one :class:`DiskFullError` naming
the target, not the temp file nor torch's wrapper exception, and leaves no temp file behind: the
target keeps its previous content, so a run can resume once space is back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"
#: errno values that mean "no room for this file", with what to tell the user
DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for the filesystem"}


class DiskFullError(OSError):
    """A write refused for lack of space; ``str()`` is the whole one-line explanation."""

    def __str__(self) -> str:
        return str(self.strerror)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _space_error(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT/EFBIG behind ``exc``; torch.save wraps it in a RuntimeError."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno in DISK_FULL:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def disk_full_error(path: Path, cause: OSError, existed: bool) -> DiskFullError:
    """One line: the file, why, how much is free where, that nothing changed, what to do."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is unchanged" if existed else "nothing was written"
    return DiskFullError(cause.errno, f"{path}: disk full while writing it "
                         f"({DISK_FULL[cause.errno]}; {free} in {path.parent}); {kept}. "
                         f"Free space there and run again", str(path))


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temp file beside ``path``; on success fsync it and ``os.replace`` it onto
    ``path``, on any error remove it.  Same folder, so the rename is atomic.  Out of space:
    :class:`DiskFullError`."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full_error(path, exc, existed) from exc
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = _space_error(exc)
        if cause is not None and not isinstance(exc, DiskFullError):
            raise disk_full_error(path, cause, existed) from exc
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, payload: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())
