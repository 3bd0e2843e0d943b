"""HanCo index build (contra.data.hanco) vs the straightforward Python-list index, real-size meta.

A synthetic ``meta.json`` of HanCo's size is written to a temp dir: 1518 sequences, 20–201 frames
each (skewed towards short sequences, ~107k time steps in all like the real set), ~85% of the
sequences green screen.  Each side then runs in its own fresh Python process (so peak RSS is its
own) and reports:

* build time: json parse + index build, best of ``--repeats`` (and the parse alone);
* peak RSS delta of the first build over the process after imports (VmHWM reset first);
* memory retained after the build (tracemalloc, the raw JSON dropped where the side drops it);
* forked-worker copy-on-read: private memory a forked child dirties by reading every index entry
  once, which is what each DataLoader worker pays with Python-object indices.

The baseline is built the way the official loader does it: keep the parsed ``meta`` dict (lists of
per-frame Python objects) and a list of per-sample ``(sid, fid)`` tuples.  Both indices are checked
equal.  The last line is ``ratio: X`` = baseline time / contra time.

    .venv/bin/python benchmarks/bench_index.py [--seed 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contra.data.hanco import HanCo

N_SEQUENCES, MIN_FRAMES, MAX_FRAMES, P_GREEN = 1518, 20, 201, 0.85


# ------------------------------------------------------------------------------ synthetic meta
def synthetic_meta(seed: int) -> dict[str, list[list[Any]]]:
    """meta.json content of HanCo's size; flags constant per sequence except is_valid/has_fit."""
    rng = np.random.default_rng(seed)
    n = MIN_FRAMES + np.floor((MAX_FRAMES - MIN_FRAMES + 1) * rng.beta(1.0, 2.5, N_SEQUENCES))
    n = n.astype(int).clip(MIN_FRAMES, MAX_FRAMES)
    n[:2] = MIN_FRAMES, MAX_FRAMES
    green = rng.random(N_SEQUENCES) < P_GREEN
    subject = rng.integers(0, 32, N_SEQUENCES)
    obj = np.where(rng.random(N_SEQUENCES) < 0.5, -1, rng.integers(0, 50, N_SEQUENCES))
    return {
        "is_train": [[bool(g)] * int(k) for g, k in zip(green, n, strict=True)],
        "subject_id": [[int(s)] * int(k) for s, k in zip(subject, n, strict=True)],
        "is_valid": [(rng.random(k) < 0.085).tolist() for k in n],
        "object_id": [[None if o < 0 else int(o)] * int(k) for o, k in zip(obj, n, strict=True)],
        "has_fit": [(rng.random(k) < 0.9).tolist() for k in n],
    }


# ------------------------------------------------------------------------------ the two sides
def build_contra(root: Path) -> HanCo:
    return HanCo(root)


def build_baseline(root: Path) -> tuple[dict, list[tuple[int, int]]]:
    with open(root / "meta.json") as f:
        meta = json.load(f)
    index = []
    for sid, flags in enumerate(meta["is_train"]):
        for fid, green in enumerate(flags):
            if green:
                index.append((sid, fid))
    return meta, index


def index_array(kept: Any) -> np.ndarray:
    """(N, 2) int32 (sid, fid) of either side, to check they agree (not timed)."""
    if isinstance(kept, HanCo):
        return np.stack([kept.index_sid, kept.index_fid], axis=1)
    return np.array(kept[1], dtype=np.int32).reshape(-1, 2)


def touch_all(kept: Any) -> None:
    """What a worker does over an epoch: read every entry and its green-screen flag."""
    if isinstance(kept, HanCo):
        for i in range(len(kept)):
            sid, fid = kept[i]
            kept.is_green_screen(sid, fid)
    else:
        meta, index = kept
        for sid, fid in index:
            meta["is_train"][sid][fid]


SIDES: dict[str, Callable[[Path], Any]] = {
    "contra": build_contra, "baseline": build_baseline}


# ------------------------------------------------------------------------------ measurements
def _proc_kib(file: str, field: str) -> int | None:
    """A ``field: N kB`` value of /proc/self/<file> in bytes (summed), None off Linux."""
    try:
        text = Path("/proc/self", file).read_text()
    except OSError:
        return None
    return sum(int(line.split()[1]) * 1024 for line in text.splitlines()
               if line.startswith(field + ":"))


def start_peak() -> int:
    """Reset the peak RSS (VmHWM) where the kernel allows it; return the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss = _proc_kib("status", "VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    hwm = _proc_kib("status", "VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def private_dirty() -> int | None:
    return _proc_kib("smaps_rollup", "Private_Dirty")


def copy_on_read(kept: Any) -> int | None:
    """Bytes a forked child dirties reading every entry once (None when not measurable)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        before = private_dirty()
        touch_all(kept)  # no explicit gc: refcount writes only (a gen-2 pass adds more)
        after = private_dirty()
        os.write(w, str(-1 if before is None else after - before).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        value = int(f.read())
    os.waitpid(pid, 0)
    return None if value < 0 else value


def worker(side: str, root: Path, repeats: int) -> dict[str, Any]:
    build = SIDES[side]
    gc.collect()
    rss0 = start_peak()
    kept = build(root)
    peak = peak_rss() - rss0
    index = index_array(kept)
    cow = copy_on_read(kept)
    nbytes = kept.nbytes if isinstance(kept, HanCo) else None
    del kept
    times, parse = [], []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        kept = build(root)
        times.append(time.perf_counter() - t0)
        del kept
        t0 = time.perf_counter()
        json.loads((root / "meta.json").read_text())
        parse.append(time.perf_counter() - t0)
    gc.collect()
    tracemalloc.start()
    _kept = build(root)
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"time": min(times), "parse": min(parse), "peak": peak, "retained": retained,
            "cow": cow, "nbytes": nbytes, "n": len(index),
            "digest": hashlib.sha1(index.tobytes()).hexdigest()}


def run_side(side: str, root: Path, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", side, "--root", str(root),
           "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ report
def mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.root, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        meta = synthetic_meta(args.seed)
        (root / "meta.json").write_text(json.dumps(meta))
        n_total = sum(map(len, meta["is_train"]))
        n_green = sum(sum(s) for s in meta["is_train"])
        size = (root / "meta.json").stat().st_size
        del meta
        res = {side: run_side(side, root, args.repeats) for side in ("contra", "baseline")}
    c, b = res["contra"], res["baseline"]
    if c["digest"] != b["digest"] or c["n"] != b["n"]:
        sys.exit("index mismatch between contra and baseline")
    rows = [
        (f"build time, best of {args.repeats} (s)", f"{c['time']:.3f}", f"{b['time']:.3f}"),
        ("  of which read + json.loads (s)", f"{c['parse']:.3f}", f"{b['parse']:.3f}"),
        ("peak RSS delta, first build (MiB)", mib(c["peak"]), mib(b["peak"])),
        ("retained after build (MiB)", mib(c["retained"]), mib(b["retained"])),
        ("forked worker copy-on-read (MiB)", mib(c["cow"]), mib(b["cow"])),
        ("index + meta arrays (bytes)", f"{c['nbytes']:,}", "-"),
        ("index entries", f"{c['n']:,}", f"{b['n']:,}"),
    ]
    print(f"synthetic meta.json: {N_SEQUENCES} sequences, {n_total:,} time steps, "
          f"{n_green:,} green screen ({100 * n_green / n_total:.1f}%), {size / 2**20:.1f} MiB")
    print(f"{'':36s}{'contra':>12s}{'baseline':>12s}")
    for name, x, y in rows:
        print(f"{name:36s}{x:>12s}{y:>12s}")
    print(f"ratio: {b['time'] / c['time']:.2f}")


if __name__ == "__main__":
    main()
