"""Helpers of ``benchmarks/gpu_check.sh``, the GPU path check (issue 14).

The shell script does the set-up, the launches (``torchrun``, ranks with torchrun's variables),
the signals and the time limits; this file does what needs Python:

* ``env``: torch, CUDA, the device, bf16, a bf16 channels_last convolution, and a one-rank
  process group of the mode's backend (nccl on GPUs, gloo on CPU);
* ``stage pretrain|finetune --stats DIR -- ARGS``: ``contra.<stage>.main(ARGS)`` (what
  ``contra pretrain`` / ``contra finetune`` run), recording every step of rank 0 and of each rank
  (the scaffold's own step timer: seconds waiting for data and computing, the step's loss and
  accuracies, time stamps) to ``DIR/rank<R>.jsonl``, and the allocator's peak GPU memory
  (``torch.cuda.max_memory_allocated``, per process) to ``DIR/rank<R>.json``;
* ``synth-summary``, ``train-summary``, ``resume-summary``: the checks of one phase, printed as
  ``PASS``/``FAIL`` lines and written to ``RESULTS/<phase>.json``;
* ``table``: the closing table of every phase and the verdict (exit 1 on any failed check).

Throughput is measured after the warm-up steps (cudnn autotuning, the workers' first batches):
``pairs/s`` (``samples/s`` for fine-tuning) is the median over steps of global batch ÷ the
step's wall time (data wait included); the data-wait share is the scaffold's waiting time ÷ its
total time over the same steps.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

TAG = "[gpu-check]"
GIB = 1024**3


# ------------------------------------------------------------------------------ results
class Phase:
    """One phase's checks and figures, written to ``RESULTS/<name>.json``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checks: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": what, "ok": bool(ok), "detail": detail})
        word = "PASS" if ok else "FAIL"
        print(f"{TAG} {word}  {self.name}: {what}" + (f" ({detail})" if detail else ""),
              flush=True)
        return bool(ok)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)

    def write(self, results: str | Path, **extra: Any) -> int:
        out = Path(results)
        out.mkdir(parents=True, exist_ok=True)
        data = {"phase": self.name, "ok": self.ok, "checks": self.checks,
                "metrics": self.metrics, **extra}
        (out / f"{self.name}.json").write_text(json.dumps(data, indent=1, default=str))
        return 0 if self.ok else 1


def finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def pinned(name: str, constraints: Path = CONSTRAINTS) -> str | None:
    try:
        for line in constraints.read_text().splitlines():
            if line.strip().startswith(f"{name}=="):
                return line.split("==", 1)[1].strip()
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------- env
def cmd_env(a: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    ph = Phase("env")
    gpu = a.mode == "cuda"
    pin = pinned("torch")
    info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                            "torch": torch.__version__, "torch_pin": pin,
                            "cuda_build": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count()}
    print(f"{TAG} python {info['python']} ({sys.executable}), torch {torch.__version__} "
          f"(constraints.txt pins {pin}), CUDA build {torch.version.cuda}, cudnn "
          f"{info['cudnn']}, {os.cpu_count()} CPUs", flush=True)
    if pin and not torch.__version__.startswith(pin):
        print(f"{TAG} note: torch {torch.__version__} is not the pinned {pin} (a machine's own "
              f"build; the check runs on it)", flush=True)
    if gpu:
        if not ph.check("torch sees a CUDA device", torch.cuda.is_available(),
                        f"torch.cuda.device_count() = {torch.cuda.device_count()}"):
            ph.metrics.update(info)
            return ph.write(a.results)
        devices = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                            "memory_gib": round(p.total_memory / GIB, 1),
                            "multiprocessors": p.multi_processor_count})
            print(f"{TAG} cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, "
                  f"{p.total_memory / GIB:.1f} GiB, {p.multi_processor_count} SMs", flush=True)
        info["devices"] = devices
        bf16 = torch.cuda.is_bf16_supported()
        ph.check("bf16 supported", bf16, "torch.cuda.is_bf16_supported()")
        x = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(3, 16, 3).cuda().to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = conv(x)
        y.float().square().mean().backward()
        grad = conv.weight.grad
        ph.check("bf16 autocast conv on channels_last runs forward and backward",
                 y.dtype == torch.bfloat16 and grad is not None
                 and bool(torch.isfinite(grad).all()),
                 f"output {y.dtype}, output channels_last "
                 f"{y.is_contiguous(memory_format=torch.channels_last)}")
        torch.cuda.set_device(0)
        backend = "nccl"
        version = torch.cuda.nccl.version() if dist.is_nccl_available() else None
        info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else version
    else:
        backend = "gloo"
    ok, detail = False, ""
    try:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        t = torch.ones(4, device="cuda" if gpu else "cpu")
        dist.all_reduce(t)
        dist.broadcast(t, 0)
        if gpu:
            torch.cuda.synchronize()
        ok = bool((t == 1).all())
        detail = f"all_reduce + broadcast, {dist.get_backend()}" + \
            (f" {info['nccl']}" if gpu else "")
    except Exception as exc:  # the check reports it; nothing else to do
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    ph.check(f"one-rank {backend} process group", ok, detail)
    if a.shm_need and os.path.isdir("/dev/shm"):  # DataLoader batches cross through it
        import shutil

        free = shutil.disk_usage("/dev/shm").free
        info["dev_shm_free_gib"] = round(free / GIB, 1)
        print(f"{TAG} /dev/shm: {free / GIB:.1f} GiB free; the DataLoader may hold about "
              f"{a.shm_need / GIB:.1f} GiB of batches in it (workers × 2 prefetched float32 "
              f"batches)" + ("" if free >= a.shm_need else
                             " — WARNING: too little, workers may die with a bus error; lower "
                             "CONTRA_GPU_CHECK_WORKERS"), flush=True)
    ph.metrics.update(info, wall_s=round(time.time() - a.started))
    return ph.write(a.results)


# -------------------------------------------------------------------------------- stage
def _first_conv_channels_last(stage: Any) -> bool | None:
    import torch

    model = getattr(stage, "model", None) or getattr(stage, "net", None)
    if model is None:
        return None
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.weight.is_contiguous(memory_format=torch.channels_last)
    return None


def cmd_stage(stage_name: str, stats: Path, args: list[str]) -> int:
    """``contra.<stage>.main(args)`` with every step recorded (see the module docstring)."""
    import resource

    import torch
    import torch.distributed as dist

    from contra import run as crun

    rank = int(os.environ.get("RANK", "0"))
    if not callable(getattr(crun.Run, "_record", None)):  # the one private hook used here
        print(f"{TAG} FAIL  contra.run.Run._record(stage, means, timer, bar) is gone: update "
              f"cmd_stage in {__file__}", file=sys.stderr, flush=True)
        return 1
    stats.mkdir(parents=True, exist_ok=True)
    rows = open(stats / f"rank{rank}.jsonl", "w", buffering=1)
    record = crun.Run._record
    first = [True]

    def recorded(self: Any, stage: Any, means: dict[str, float], timer: Any, bar: Any) -> None:
        record(self, stage, means, timer, bar)
        row: dict[str, Any] = {"step": self.progress.step, "epoch": self.progress.epoch,
                               "t": time.perf_counter(), "timer_steps": timer.steps,
                               "wait_s": timer.wait, "busy_s": timer.busy,
                               **{k: float(v) for k, v in self.stats.items()}}
        if first[0]:
            first[0] = False
            row["setup"] = {
                "device": str(self.device), "amp": str(self.amp_dtype),
                "channels_last": bool(self.channels_last),
                "first_conv_channels_last": _first_conv_channels_last(stage),
                "world": self.world, "batch": self.cfg.batch_size,
                "batch_per_rank": self.batch, "workers": self.cfg.workers,
                "threads": torch.get_num_threads(), "steps_per_epoch": self.steps_per_epoch,
                "backend": dist.get_backend() if dist.is_initialized() else "none (1 rank)",
                "cudnn_benchmark": torch.backends.cudnn.benchmark}
        rows.write(json.dumps(row) + "\n")

    crun.Run._record = recorded  # type: ignore[method-assign]
    module = importlib.import_module(f"contra.{stage_name}")
    start = time.perf_counter()
    code = module.main(args)
    peak: dict[str, Any] = {"exit_code": code, "seconds": time.perf_counter() - start,
                            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                            / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        peak["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    (stats / f"rank{rank}.json").write_text(json.dumps(peak, indent=1))
    rows.close()
    return code


# ------------------------------------------------------------------------------- synth
def cmd_synth_summary(a: argparse.Namespace) -> int:
    ph = Phase("synth")
    root = Path(a.data)
    ph.metrics.update(wall_s=a.wall, reused=a.reused)
    if not ph.check("contra synth exit code 0", a.code == 0, f"exit {a.code}" +
                    (", reused from an earlier run" if a.reused else "")):
        return ph.write(a.results)
    from contra.data.hanco import HanCo
    from contra.data.synth.scene import N_CAMERAS

    pairs = N_CAMERAS * len(HanCo(root / "hanco"))
    ft = {}
    for split in ("training", "evaluation"):
        xyz = read_json(root / "freihand" / f"{split}_xyz.json")
        ft[split] = len(xyz) if isinstance(xyz, list) else 0
    ph.metrics.update(pairs_per_epoch=pairs, freihand=ft)
    need = a.batch * a.steps
    ph.check("HanCo pairs cover every pretraining step in one epoch", pairs >= need,
             f"{pairs} pairs per epoch, {a.steps} steps × batch {a.batch} = {need}")
    ph.check("FreiHAND training and evaluation splits written",
             ft["training"] > 0 and ft["evaluation"] > 0,
             f"{ft['training']} training × 4 versions, {ft['evaluation']} evaluation")
    return ph.write(a.results)


# ------------------------------------------------------------------------------- train
def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line cut by a kill
    return out


def throughput(rows: list[dict[str, Any]], batch: int, warmup: int) -> dict[str, Any]:
    """Median per-step items/s, mean items/s and data-wait share after ``warmup`` steps."""
    if not rows:
        return {}
    last_epoch = rows[-1]["epoch"]
    epoch_rows = [r for r in rows if r["epoch"] == last_epoch]  # the step timer is per epoch
    base = next((r for r in epoch_rows if r["step"] >= warmup), epoch_rows[0])
    after = [r for r in epoch_rows if r["step"] > base["step"]]
    rates, prev = [], base
    for r in after:
        dt = r["t"] - prev["t"]
        if r["step"] == prev["step"] + 1 and dt > 0:
            rates.append(batch / dt)
        prev = r
    out: dict[str, Any] = {"measured_steps": len(after), "warmup_steps": base["step"],
                           "epochs_seen": len({r["epoch"] for r in rows})}
    if not after:
        return out
    end = after[-1]
    wall = end["t"] - base["t"]
    wait = end["wait_s"] - base["wait_s"]
    busy = end["busy_s"] - base["busy_s"]
    out.update(median_per_s=statistics.median(rates) if rates else None,
               mean_per_s=batch * len(after) / wall if wall > 0 else None,
               compute_only_per_s=batch * len(after) / busy if busy > 0 else None,
               data_wait=wait / (wait + busy) if wait + busy > 0 else None,
               step_ms_median=1000 * batch / statistics.median(rates) if rates else None)
    return out


def smi_peak(path: Path | None) -> float | None:
    """The largest memory.used (MiB → GiB) nvidia-smi sampled, over all GPUs."""
    if path is None or not path.is_file():
        return None
    used = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            used.append(float(parts[-1]))
        except (ValueError, IndexError):
            pass
    return max(used) / 1024 if used else None


def cmd_train_summary(a: argparse.Namespace) -> int:
    ph = Phase(a.phase)
    stats, run_dir = Path(a.stats), Path(a.run_dir)
    rows = _rows(stats / "rank0.jsonl")
    ranks = [read_json(p) or {} for p in sorted(stats.glob("rank*.json"))]
    summary = read_json(run_dir / "run.json") or {}
    setup = rows[0].get("setup", {}) if rows else {}
    ph.metrics.update(wall_s=a.wall, exit_code=a.code, setup=setup, unit=a.unit,
                      image_size=a.size, arch=a.arch, batch=a.batch, steps=a.steps)
    ph.check("exit code 0", a.code == 0,
             f"exit {a.code}" + (" (timed out)" if a.code in (124, 137) else ""))
    ph.check(f"run.json: finished at step {a.steps}",
             summary.get("exit_code") == 0 and summary.get("step") == a.steps,
             f"exit_code {summary.get('exit_code')}, step {summary.get('step')}")
    if not rows:
        ph.check("per-step records", False, f"none in {stats}/rank0.jsonl")
        return ph.write(a.results)
    gpu = a.mode == "cuda"
    want = {"device": "cuda" if gpu else "cpu", "amp": "torch.bfloat16" if gpu else "None",
            "channels_last": gpu}
    got_device = setup.get("device", "").split(":")[0]
    ph.check(f"device {want['device']}, amp {want['amp']}, channels_last {want['channels_last']}",
             got_device == want["device"] and setup.get("amp") == want["amp"]
             and setup.get("channels_last") == want["channels_last"]
             and setup.get("first_conv_channels_last") in (want["channels_last"], None),
             f"{setup.get('device')}, amp {setup.get('amp')}, channels_last "
             f"{setup.get('channels_last')}, first conv weight channels_last "
             f"{setup.get('first_conv_channels_last')}")
    world = setup.get("world", 1)
    backend = "nccl" if gpu else "gloo"
    ph.check(f"{world} rank(s)" + (f" on {backend}" if world > 1 else " (no process group: "
                                   "one rank)"),
             world == 1 or setup.get("backend") == backend,
             f"backend {setup.get('backend')}, batch {setup.get('batch')} = {world} × "
             f"{setup.get('batch_per_rank')}, {setup.get('workers')} DataLoader workers per "
             f"rank, {setup.get('steps_per_epoch')} steps per epoch")
    keys = ["loss", "acc1"] if a.unit == "pairs" else ["loss"]
    bad = [r["step"] for r in rows if not finite(*(r.get(k) for k in keys))]
    last = rows[-1]
    ph.metrics.update(final={k: last.get(k) for k in
                             ("step", "loss", "acc1", "acc5", "acc1_batch", "emb_std_ratio",
                              "cos_unrelated", "loss_xyz", "loss_uv", "loss_theta") if k in last})
    ph.check(f"{' and '.join('Acc@1' if k == 'acc1' else k for k in keys)} finite at every step",
             not bad and len(rows) == last["step"],
             f"{len(rows)} steps recorded, non-finite at {bad[:5]}" if bad else
             f"{len(rows)} steps, final loss {_fmt(last.get('loss'), '.4g')}" +
             (f", Acc@1 {_fmt(last.get('acc1'), '.2f', ' %')}" if "acc1" in last else ""))
    tp = throughput(rows, a.batch, a.warmup)
    ph.metrics["throughput"] = tp
    rate = tp.get("median_per_s")
    ph.check(f"{a.unit}/s measured after {tp.get('warmup_steps')} warm-up steps",
             finite(rate) and rate > 0 and tp.get("epochs_seen") == 1,
             f"median {_fmt(rate, '.1f')} {a.unit}/s, mean {_fmt(tp.get('mean_per_s'), '.1f')}, "
             f"compute-only {_fmt(tp.get('compute_only_per_s'), '.1f')}, data wait "
             f"{_fmt(100 * (tp.get('data_wait') or math.nan), '.1f', ' %')} over "
             f"{tp.get('measured_steps')} steps, {tp.get('epochs_seen')} epoch(s)")
    peaks = [r.get("max_memory_allocated") for r in ranks if r.get("max_memory_allocated")]
    reserved = [r.get("max_memory_reserved") for r in ranks if r.get("max_memory_reserved")]
    ph.metrics.update(peak_alloc_gib=max(peaks) / GIB if peaks else None,
                      peak_reserved_gib=max(reserved) / GIB if reserved else None,
                      peak_smi_gib=smi_peak(Path(a.smi) if a.smi else None),
                      peak_rss_mib=max((r.get("peak_rss_mib", 0) for r in ranks), default=None))
    if gpu:
        ph.check("peak GPU memory recorded", bool(peaks),
                 f"allocator peak {ph.metrics['peak_alloc_gib'] or 0:.2f} GiB "
                 f"(max over ranks of torch.cuda.max_memory_allocated), reserved "
                 f"{ph.metrics['peak_reserved_gib'] or 0:.2f} GiB, nvidia-smi memory.used max "
                 + (f"{ph.metrics['peak_smi_gib']:.2f} GiB" if ph.metrics["peak_smi_gib"]
                    else "n/a"))
    if a.unit == "samples":
        scores = summary.get("scores") or {}
        err = scores.get("mesh_al_mean3d")
        ph.metrics["scores"] = scores
        ph.check("final evaluation: PA mesh error, F@5, F@15 finite",
                 finite(err, scores.get("f_al_score_5"), scores.get("f_al_score_15")),
                 f"PA mesh error {err:.3f} cm, F@5 {scores['f_al_score_5']:.3f}, F@15 "
                 f"{scores['f_al_score_15']:.3f} (official protocol, "
                 f"{'stand-in MANO' if summary.get('mano_model') == 'standin' else 'MANO'})"
                 if finite(err) else f"scores {scores}")
        init = summary.get("init") or {}
        if a.init_expected:
            n = int(init.get("transferred_tensors") or 0)
            ph.check("initialised from the pretraining checkpoint",
                     init.get("init_mode") == "moco" and n > 0,
                     f"{n} backbone tensors from {init.get('checkpoint')}")
    return ph.write(a.results)


# ------------------------------------------------------------------------------ resume
def cmd_resume_summary(a: argparse.Namespace) -> int:
    ph = Phase("resume")
    run_dir = Path(a.run_dir)
    first = read_json(run_dir / "run.first.json") or {}
    final = read_json(run_dir / "run.json") or {}
    c1, c2 = [int(c) for c in a.first_codes.split()], [int(c) for c in a.second_codes.split()]
    ph.metrics.update(wall_s=a.wall, first_codes=c1, second_codes=c2, signal_after=a.every,
                      steps=a.steps)
    ph.check(f"SIGUSR1 sent to rank {max(len(c1), 1) - 1} after the step-{a.every} checkpoint",
             a.signalled == 1, "sent" if a.signalled else "never sent: the run ended or timed "
             "out before its first checkpoint")
    stop = first.get("step")
    ph.check("every rank exited 75 (checkpointed after the signal)",
             bool(c1) and all(c == 75 for c in c1), f"exit codes {c1}")
    ph.check("run.json of the stop: exit_code 75 at a step before max_steps",
             first.get("exit_code") == 75 and isinstance(stop, int) and a.every <= stop < a.steps,
             f"exit_code {first.get('exit_code')}, step {stop} (signal after step {a.every}, "
             f"max_steps {a.steps})")
    log = Path(a.log2).read_text(errors="replace") if Path(a.log2).is_file() else ""
    m = re.search(r"resumed (\S+) at epoch (\d+), step (\d+)", log)
    resumed = int(m.group(3)) if m else None
    ph.check("the restart resumed from that checkpoint", resumed is not None and resumed == stop,
             f"log: 'resumed … step {resumed}'" if m else "no 'resumed' line in the log")
    ph.check("every rank of the restart exited 0", bool(c2) and all(c == 0 for c in c2),
             f"exit codes {c2}")
    ph.check(f"run.json: finished at step {a.steps}",
             final.get("exit_code") == 0 and final.get("step") == a.steps,
             f"exit_code {final.get('exit_code')}, step {final.get('step')}")
    ckpt = run_dir / "checkpoints" / "last.pt"
    if ckpt.is_file():
        import torch

        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        h = state.get("history", {})
        steps = [int(s) for s in h.get("step", [])]
        expected = list(range(a.log_every, a.steps + 1, a.log_every))
        losses, accs = h.get("loss", []), h.get("acc1", [])
        ph.check("last.pt: step max_steps, history continuous across the resume",
                 int(state.get("step", -1)) == a.steps and steps == expected,
                 f"step {state.get('step')}, history steps {steps[:3]}…{steps[-2:]} "
                 f"({len(steps)} of {len(expected)} expected)")
        ph.check("loss and Acc@1 finite over the whole history",
                 len(losses) == len(steps) and finite(*losses, *accs),
                 f"final loss {_fmt(losses[-1], '.4g')}, Acc@1 "
                 f"{_fmt(accs[-1] if accs else None, '.2f', ' %')}" if losses else "empty")
        ph.metrics["final"] = {"loss": losses[-1] if losses else None,
                               "acc1": accs[-1] if accs else None}
        del state
    else:
        ph.check("last.pt exists", False, str(ckpt))
    retrieval = read_json(run_dir / "retrieval.json")
    if a.monitor:
        ok = isinstance(retrieval, list) and bool(retrieval) and \
            finite(retrieval[0].get("nn_mm"), retrieval[0].get("random_init_nn_mm"))
        r0 = retrieval[0] if ok else {}
        ph.check("pose-retrieval monitor ran on the device at step 0", ok,
                 f"nn {r0.get('nn_mm', 0):.2f} mm, random-init "
                 f"{r0.get('random_init_nn_mm', 0):.2f} mm, instance top-1 "
                 f"{_fmt(r0.get('instance_top1_pct'), '.1f', ' %')}"
                 if ok else f"retrieval.json: {retrieval}")
    if a.tracking:
        r1, r2 = first.get("mlflow_run_id"), final.get("mlflow_run_id")
        ph.check("the restart continued the same MLflow run", bool(r1) and r1 == r2,
                 f"{r1} → {r2}")
    ph.metrics.update(stopped_at=stop, resumed_at=resumed)
    return ph.write(a.results)


# ------------------------------------------------------------------------------- table
def _fmt(v: Any, spec: str, unit: str = "") -> str:
    return f"{v:{spec}}{unit}" if finite(v) else "-"


def cmd_table(a: argparse.Namespace) -> int:
    results = Path(a.results)
    expected = [p for p in a.expect.split(",") if p]
    found = {p.stem: read_json(p) or {} for p in sorted(results.glob("*.json"))}
    phases = {n: found[n] for n in [*expected, *sorted(set(found) - set(expected))]
              if n in found}  # in the order they ran
    missing = [p for p in expected if p not in phases]
    env = phases.get("env", {}).get("metrics", {})
    devices = env.get("devices") or []
    where = (f"{len(devices)} × {devices[0]['name']}" if devices else "CPU") + \
        f", torch {env.get('torch')}, python {env.get('python')}"
    lines = [f"{TAG} summary ({a.mode}: {where}; total {a.total} s of a {a.budget} s budget)", ""]
    head = (f"{'phase':<14} {'model':<9} {'px':>4} {'batch':>5} {'steps':>5} "
            f"{'throughput (median)':>22} {'data wait':>9} {'peak alloc':>10} "
            f"{'peak smi':>9} {'final loss':>10} {'Acc@1 / PA err':>14} {'wall':>6}")
    lines += [head, "-" * len(head)]
    for name, ph in phases.items():
        m = ph.get("metrics", {})
        if "throughput" not in m:
            continue
        tp, final = m["throughput"], m.get("final", {})
        wait = 100 * tp["data_wait"] if finite(tp.get("data_wait")) else None
        if m.get("unit") == "samples":
            score = _fmt((m.get("scores") or {}).get("mesh_al_mean3d"), ".3f", " cm")
        else:
            score = _fmt(final.get("acc1"), ".2f", " %")
        lines.append(
            f"{name:<14} {m.get('arch', ''):<9} {m.get('image_size', ''):>4} "
            f"{m.get('batch', ''):>5} {m.get('steps', ''):>5} "
            f"{_fmt(tp.get('median_per_s'), '.1f', ' ' + m.get('unit', '') + '/s'):>22} "
            f"{_fmt(wait, '.1f', ' %'):>9} "
            f"{_fmt(m.get('peak_alloc_gib'), '.2f', ' GiB'):>10} "
            f"{_fmt(m.get('peak_smi_gib'), '.2f', ' GiB'):>9} "
            f"{_fmt(final.get('loss'), '.4g'):>10} {score:>14} "
            f"{_fmt(m.get('wall_s'), 'd', ' s'):>6}")
    lines += ["",
              "throughput: median over the steps after the warm-up of global batch ÷ the step's "
              "wall time (data wait included)",
              "data wait: the scaffold's step timer, waiting ÷ total over the same steps",
              "peak alloc: torch.cuda.max_memory_allocated (per process), max over ranks",
              "peak smi: nvidia-smi memory.used, max of 200 ms samples (device-wide: CUDA "
              "context and allocator cache included)"]
    ranks = [p.get("metrics", {}).get("setup", {}).get("world") for p in phases.values()]
    world = max((w for w in ranks if isinstance(w, int)), default=None)
    if world is not None:
        backend = "nccl" if a.mode == "cuda" else "gloo"
        lines.append(f"ranks: {world}" + (f", {backend} between them" if world > 1 else
                     f" (one rank: no process group in training; {backend} checked in env)"))
    r = phases.get("resume", {}).get("metrics", {})
    if r:
        lines += ["", f"resume: SIGUSR1 after the step-{r.get('signal_after')} checkpoint → "
                  f"exit {r.get('first_codes')} at step {r.get('stopped_at')} → restart resumed "
                  f"at step {r.get('resumed_at')} → exit {r.get('second_codes')} at step "
                  f"{r.get('steps')} ({r.get('wall_s')} s)"]
    walls = {n: p.get("metrics", {}).get("wall_s") for n, p in phases.items()}
    lines += ["", "phase times: " + ", ".join(f"{n} {w} s" for n, w in walls.items()
                                              if isinstance(w, int | float))]
    failed = [(n, c) for n, p in phases.items() for c in p.get("checks", []) if not c["ok"]]
    passed = sum(c["ok"] for p in phases.values() for c in p.get("checks", []))
    over = a.total > a.budget
    lines.append(f"checks: {passed} passed, {len(failed)} failed"
                 + (f"; phases not run: {', '.join(missing)}" if missing else ""))
    for n, c in failed:
        lines.append(f"{TAG} FAIL  {n}: {c['check']} ({c['detail']})")
    if over:
        lines.append(f"{TAG} FAIL  total {a.total} s is over the {a.budget} s budget")
    ok = not failed and not missing and not over
    lines.append(f"{TAG} {'PASS' if ok else 'FAIL'}: GPU path check ({a.mode})")
    text = "\n".join(lines)
    print(text, flush=True)
    out = Path(a.out)
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps({"ok": ok, "mode": a.mode, "total_s": a.total,
                                                  "budget_s": a.budget, "missing": missing,
                                                  "phases": phases}, indent=1, default=str))
    return 0 if ok else 1


# -------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    if argv[:1] == ["stage"]:  # stage NAME --stats DIR -- ARGS (ARGS go to contra unparsed)
        rest = argv[argv.index("--") + 1:] if "--" in argv else []
        head = argv[:argv.index("--")] if "--" in argv else argv
        p = argparse.ArgumentParser(prog="gpu_check.py stage")
        p.add_argument("stage", choices=["pretrain", "finetune"])
        p.add_argument("--stats", type=Path, required=True)
        s = p.parse_args(head[1:])
        return cmd_stage(s.stage, s.stats, rest)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--mode", choices=["cuda", "cpu"], required=True)
    e.add_argument("--results", required=True)
    e.add_argument("--started", type=float, default=time.time(), help="phase start (epoch s)")
    e.add_argument("--shm-need", type=float, default=0, help="bytes of batches in /dev/shm")
    s = sub.add_parser("synth-summary")
    for name in ("--data", "--results"):
        s.add_argument(name, required=True)
    for name in ("--code", "--wall", "--batch", "--steps", "--reused"):
        s.add_argument(name, type=int, required=True)
    t = sub.add_parser("train-summary")
    for name in ("--phase", "--stats", "--run-dir", "--results", "--mode", "--unit", "--arch"):
        t.add_argument(name, required=True)
    t.add_argument("--smi", default=None)
    for name in ("--code", "--wall", "--steps", "--warmup", "--batch", "--size"):
        t.add_argument(name, type=int, required=True)
    t.add_argument("--init-expected", type=int, default=0)
    r = sub.add_parser("resume-summary")
    for name in ("--run-dir", "--results", "--first-codes", "--second-codes", "--log2"):
        r.add_argument(name, required=True)
    for name in ("--signalled", "--every", "--steps", "--log-every", "--wall", "--monitor",
                 "--tracking"):
        r.add_argument(name, type=int, required=True)
    b = sub.add_parser("table")
    for name in ("--results", "--out", "--mode"):
        b.add_argument(name, required=True)
    b.add_argument("--expect", default="")
    for name in ("--total", "--budget"):
        b.add_argument(name, type=int, required=True)
    a = p.parse_args(argv)
    return {"env": cmd_env, "synth-summary": cmd_synth_summary,
            "train-summary": cmd_train_summary, "resume-summary": cmd_resume_summary,
            "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
