"""Ray Tune fan-out of fine-tuning runs: pretrained checkpoints × Table 1 init modes × seeds.

    python jobs/sweep.py --config configs/sweep/table1.yaml [key=value ...] [--resume]

Each trial runs :func:`contra.finetune.run` in its own run directory (``<sweep>/trials/<name>``)
with a callback that reports every evaluation to Tune; nothing under ``contra/`` imports Ray. A
retried trial (``max_failures``) or one continued by ``--resume`` finds its ``last.pt`` there and
resumes, in the same MLflow child run (the run id lives in that checkpoint). Modes that need no
checkpoint (scratch, imagenet) run once per seed, not once per checkpoint.

MLflow: one parent run per sweep (the sweep config as params, Table 1 as artifacts at the end)
in the fine-tune experiment; every trial is a child run (``mlflow.parentRunId``) with the lineage
tags ``contra finetune`` writes. No run is left RUNNING: the driver closes whatever it stopped.

Runs on this machine (a local Ray instance) or, with ``RAY_ADDRESS`` set (as
``slurm/ray_cluster.sbatch`` sets it), on a multi-node Ray cluster, where ``storage_path`` must be
a shared filesystem.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file or warning for a local Ray
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's table with our columns, not raw dicts
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # sweep state saved often (--resume)

from contra.config import ConfigError, load_config, to_dict  # torch-free

ROWS = ("scratch", "imagenet", "fixed", "fixed-bn", "full")
#: Table 1 row → fine-tune overrides of its initialisation
INIT = {"scratch": ["init.mode=scratch", "init.freeze=none"],
        "imagenet": ["init.mode=imagenet", "init.freeze=none", "data.normalisation=imagenet"],
        "fixed": ["init.mode=moco", "init.freeze=all"],
        "fixed-bn": ["init.mode=moco", "init.freeze=conv"],
        "full": ["init.mode=moco", "init.freeze=none"]}
METRIC = "mesh_al_mean3d_cm"
CRASH_ENV = "CONTRA_SWEEP_CRASH_ONCE"  # fault injection for tests: "<trial name part>:<step>"


# ---------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PretrainedConfig:
    """Where the pretrained checkpoints come from: explicit paths/globs, or an MLflow experiment."""

    checkpoints: list[str] = field(default_factory=list)  # paths or globs of contra last.pt files
    experiment: str | None = None  # or: FINISHED runs of this pretraining experiment
    tracking_uri: str | None = None  # of that experiment; None: the sweep's tracking URI


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0  # per trial; also its torch threads
    gpu: float = 0.0  # per trial, fractions allowed (e.g. 0.5 = two trials per GPU)


@dataclass(frozen=True)
class AshaConfig:
    """Early stopping on PA mesh error; off by default (Table 1 needs complete runs)."""

    enabled: bool = False
    grace_evals: int = 2
    reduction_factor: int = 3


@dataclass(frozen=True)
class SweepConfig:
    name: str = "table1"
    storage_path: Path = Path("runs/sweeps")  # absolute on a cluster, and on a shared filesystem
    finetune_config: Path = Path("configs/finetune/full.yaml")
    overrides: list[str] = field(default_factory=list)  # for every trial
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    modes: list[str] = field(default_factory=lambda: list(ROWS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    grid: dict[str, list[Any]] = field(default_factory=dict)  # any fine-tune key → values
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    max_failures: int = 2  # retries of a crashed trial (each resumes from its last.pt)
    asha: AshaConfig = field(default_factory=AshaConfig)
    tracking_uri: str | None = None  # None: SQLite in the sweep directory (one machine)
    experiment: str = "contra-finetune"
    verbose: int = 1  # Tune's table: 0 silent, 1 status updates, 2 + trial results


@dataclass(frozen=True)
class Checkpoint:
    path: str
    name: str  # short, for trial names
    strategy: str
    pretrain_run_id: str


# -------------------------------------------------------------------------------- sources
def _short(path: Path) -> str:
    """``runs/pretrain-mv/checkpoints/last.pt`` → ``pretrain-mv``."""
    parts = [p for p in path.parts if p not in ("checkpoints", "last.pt")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", parts[-1] if parts else path.stem)


def _inspect(path: Path) -> Checkpoint:
    """A contra pretraining checkpoint's strategy and MLflow run, or a one-line error."""
    from contra.checkpoint import load_checkpoint
    from contra.initialisation import pretraining_strategy

    state = load_checkpoint(path)
    if state.get("format") != "contra-moco/1":
        raise ConfigError(f"pretrained.checkpoints: {path} is not a contra pretraining "
                          f"checkpoint (format {state.get('format')!r})")
    run_id = state.get("mlflow_run_id")
    return Checkpoint(str(path.resolve()), _short(path), pretraining_strategy(state.get("config")),
                      run_id if isinstance(run_id, str) else "")


def from_paths(patterns: list[str]) -> list[Checkpoint]:
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise ConfigError(f"pretrained.checkpoints: {pattern!r} matches no file")
        found.extend(matches)
    return [_inspect(p) for p in dict.fromkeys(found)]


def from_experiment(name: str, uri: str) -> list[Checkpoint]:
    """FINISHED runs of a pretraining experiment: ``<run_dir param>/checkpoints/last.pt``."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise ConfigError(f"pretrained.experiment: no experiment {name!r} at {uri}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    if not runs:
        raise ConfigError(f"pretrained.experiment: {name!r} at {uri} has no FINISHED "
                          f"pretraining runs")
    out = []
    for r in runs:
        path = Path(r.data.params.get("run_dir", "")) / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ConfigError(f"pretrained.experiment: run {r.info.run_id} ({r.info.run_name}) "
                              f"has no checkpoint at {path}")
        ck = _inspect(path)
        out.append(dataclasses.replace(ck, name=_short(path), pretrain_run_id=r.info.run_id))
    return out


def pretrained_checkpoints(cfg: SweepConfig, uri: str) -> list[Checkpoint]:
    """The checkpoints the MoCo modes start from (none when no such mode is asked for)."""
    p = cfg.pretrained
    if not any(m in ("fixed", "fixed-bn", "full") for m in cfg.modes):
        return []
    if p.checkpoints:
        return from_paths(p.checkpoints)
    return from_experiment(p.experiment, p.tracking_uri or uri) if p.experiment else []


# --------------------------------------------------------------------------------- trials
def check(cfg: SweepConfig, checkpoints: list[Checkpoint]) -> None:
    """Everything that can be wrong with the sweep's space, before anything starts."""
    bad = [m for m in cfg.modes if m not in ROWS]
    if bad or not cfg.modes:
        raise ConfigError(f"modes: unknown init mode {bad[0] if bad else '(none)'!r}; "
                          f"choose from {list(ROWS)}")
    if not cfg.seeds:
        raise ConfigError("seeds: no seed given")
    needs = [m for m in cfg.modes if m in ("fixed", "fixed-bn", "full")]
    if needs and not checkpoints:
        raise ConfigError(f"pretrained: modes {needs} need pretrained checkpoints; give "
                          f"pretrained.checkpoints or pretrained.experiment")
    _grid(cfg.grid)
    if not Path(cfg.finetune_config).is_file():
        raise ConfigError(f"finetune_config: {cfg.finetune_config} does not exist")


def trial_specs(cfg: SweepConfig, checkpoints: list[Checkpoint], sweep_dir: Path,
                tracking_uri: str, parent_id: str) -> list[dict[str, Any]]:
    """One dict per trial: its name, run directory and the fine-tune overrides it runs with."""
    needs = [m for m in cfg.modes if m in ("fixed", "fixed-bn", "full")]
    grid = _grid(cfg.grid)
    specs = []
    for mode in cfg.modes:
        sources = checkpoints if mode in needs else [None]
        for ck in sources:
            for seed in cfg.seeds:
                for point in grid:
                    specs.append(_spec(cfg, mode, ck, seed, point, sweep_dir, tracking_uri,
                                       parent_id))
    return specs


def _grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values")
        points = [{**p, key: v} for p in points for v in values]
    return points


def _spec(cfg: SweepConfig, mode: str, ck: Checkpoint | None, seed: int, point: dict[str, Any],
          sweep_dir: Path, uri: str, parent: str) -> dict[str, Any]:
    parts = [mode, ck.name if ck else "", f"s{seed}",
             *(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in point.items())]
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(p for p in parts if p))
    run_dir = sweep_dir / "trials" / name
    overrides = [*cfg.overrides, *INIT[mode], f"seed={seed}", f"run_dir={run_dir}",
                 f"tracking.tracking_uri={uri}", f"tracking.experiment={cfg.experiment}",
                 f"tracking.parent_run_id={parent}", "tracking.enabled=true", "progress=false",
                 f"threads={max(1, int(cfg.resources.cpu))}",
                 *(f"{k}={json.dumps(v)}" for k, v in point.items())]
    if ck is not None:
        overrides.append(f"init.weights={ck.path}")
    return {"name": name, "row": mode, "seed": seed, "run_dir": str(run_dir),
            "config": str(Path(cfg.finetune_config).resolve()), "overrides": overrides,
            "strategy": ck.strategy if ck else "none", **point}


# ------------------------------------------------------------------------------ trainable
def finetune_trial(config: dict[str, Any]) -> None:
    """Tune's trainable: one contra fine-tune, each evaluation reported to Tune."""
    from ray import tune

    from contra.finetune import load, run

    spec = config["trial"]
    cfg = load(spec["config"], spec["overrides"])
    reported: list[int] = []

    def on_eval(step: int, scores: dict[str, float]) -> None:
        _maybe_crash(spec["name"], step, Path(spec["run_dir"]))
        reported.append(step)
        tune.report({METRIC: scores["mesh_al_mean3d"], "f_al_score_5": scores["f_al_score_5"],
                     "f_al_score_15": scores["f_al_score_15"], "step": step})

    code = run(cfg, on_eval=on_eval)
    if code != 0:
        raise RuntimeError(f"contra.finetune exited with {code} in {spec['run_dir']}")
    if not reported:  # the run had finished before (a restored sweep): report its last scores
        summary = json.loads((Path(spec["run_dir"]) / "run.json").read_text())
        s = summary.get("scores") or {}
        if s:
            tune.report({METRIC: s["mesh_al_mean3d"], "f_al_score_5": s["f_al_score_5"],
                         "f_al_score_15": s["f_al_score_15"], "step": s["step"]})


def _maybe_crash(name: str, step: int, run_dir: Path) -> None:
    """``CONTRA_SWEEP_CRASH_ONCE=<part>:<step>``: the first attempt of a matching trial dies."""
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return
    part, _, at = spec.rpartition(":")
    marker = run_dir / ".crashed-once"
    if part in name and step >= int(at) and not marker.exists():
        marker.write_text(f"step {step}\n")
        raise RuntimeError(f"injected crash of trial {name} at step {step} ({CRASH_ENV})")


# ------------------------------------------------------------------------------- tracking
def parent_run(cfg: SweepConfig, uri: str, sweep_dir: Path, resume: bool) -> str:
    """The sweep's parent MLflow run: created once, reused by ``--resume``."""
    from mlflow import MlflowClient

    from contra.tracking import flatten_params

    state = sweep_dir / "sweep.json"
    client = MlflowClient(uri)
    if resume and state.is_file():
        run_id = json.loads(state.read_text())["parent_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        cfg.experiment, artifact_location=(sweep_dir / "mlartifacts").resolve().as_uri()
        if uri.startswith("sqlite") else None)
    run = client.create_run(exp_id, run_name=f"sweep {cfg.name}",
                            tags={"stage": "sweep", "sweep": cfg.name})
    params = flatten_params(to_dict(cfg))
    params["seeds"] = json.dumps(list(cfg.seeds))
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value[:500])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"parent_run_id": run.info.run_id, "tracking_uri": uri}))
    return run.info.run_id


def close_children(uri: str, experiment: str, parent: str, status: str) -> int:
    """Children still RUNNING (their trial was stopped or killed) get ``status``."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    running = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}' "
                                 "and attributes.status = 'RUNNING'")
    for r in running:
        client.set_terminated(r.info.run_id, status)
    return len(running)


# --------------------------------------------------------------------------------- driver
class TrialLines:
    """One line per trial start, result and end, with its key metrics."""

    def __new__(cls) -> Any:
        from ray import tune

        class _Lines(tune.Callback):
            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                print(f"[sweep] start  {_trial_name(trial)}", flush=True)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                                  **info: Any) -> None:
                r = trial.last_result or {}
                print(f"[sweep] done   {_trial_name(trial)}: {_scores(r)}", flush=True)

            def on_trial_recover(self, iteration: int, trials: list, trial: Any,
                                 **info: Any) -> None:
                print(f"[sweep] retry  {_trial_name(trial)}: it failed; it resumes from its "
                      f"last checkpoint", flush=True)

            def on_trial_error(self, iteration: int, trials: list, trial: Any,
                               **info: Any) -> None:
                print(f"[sweep] error  {_trial_name(trial)}: failed for good (max_failures)",
                      flush=True)

        return _Lines()


def _trial_name(trial: Any) -> str:
    return trial.config.get("trial", {}).get("name", str(trial))


def _scores(r: dict[str, Any]) -> str:
    if METRIC not in r:
        return "no evaluation"
    return (f"PA mesh error {10 * r[METRIC]:.2f} mm, F@5 {r['f_al_score_5']:.3f}, "
            f"F@15 {r['f_al_score_15']:.3f} (step {r.get('step')})")


def _init_ray(cfg: SweepConfig) -> None:
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, object_store_memory=200 * 2**20,
                 log_to_driver=False)


def check_shared(path: Path) -> None:
    """On a multi-node cluster every node must see ``path``: one line when one does not."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    probe = path / f".shared-{os.getpid()}"
    probe.write_text("ok")

    @ray.remote(num_cpus=0)
    def sees(p: str) -> bool:
        return os.path.exists(p)

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(probe)) for n in nodes]
    seen = ray.get(refs)
    probe.unlink()
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise ConfigError(f"storage_path: {path} is not on a shared filesystem: node(s) "
                          f"{', '.join(blind)} cannot see it")


def _tuner(cfg: SweepConfig, specs: list[dict[str, Any]], sweep_dir: Path, resume: bool) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = tune.with_resources(finetune_trial, {"cpu": cfg.resources.cpu,
                                                     "gpu": cfg.resources.gpu})
    if resume and tune.Tuner.can_restore(str(sweep_dir / "tune")):
        return tune.Tuner.restore(str(sweep_dir / "tune"), trainable, resume_unfinished=True,
                                  resume_errored=True)
    scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=cfg.asha.grace_evals,
                              reduction_factor=cfg.asha.reduction_factor) \
        if cfg.asha.enabled else FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="min", scheduler=scheduler,
            max_concurrent_trials=cfg.max_concurrent_trials or None,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(sweep_dir), verbose=cfg.verbose,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            callbacks=[TrialLines()],
            progress_reporter=tune.CLIReporter(
                metric_columns={METRIC: "mesh cm", "f_al_score_5": "F@5",
                                "f_al_score_15": "F@15", "step": "step"},
                parameter_columns={"trial/row": "row", "trial/strategy": "strategy",
                                   "trial/seed": "seed"},
                max_report_frequency=60)))


def summary(results: Any) -> list[str]:
    """The best trial per Table 1 row."""
    best: dict[str, tuple[float, str]] = {}
    for r in results:
        if r.metrics and METRIC in r.metrics:
            row, name = r.config["trial"]["row"], r.config["trial"]["name"]
            if row not in best or r.metrics[METRIC] < best[row][0]:
                best[row] = (r.metrics[METRIC], f"{name}: {_scores(r.metrics)}")
    return [f"  best {row:9s} {best[row][1]}" for row in ROWS if row in best]


def run_sweep(cfg: SweepConfig, resume: bool = False) -> int:
    """The whole sweep; 0 when every trial finished."""
    sweep_dir = (Path(cfg.storage_path) / cfg.name).resolve()
    uri = cfg.tracking_uri or f"sqlite:///{sweep_dir}/mlflow.db"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = pretrained_checkpoints(cfg, uri)
    check(cfg, checkpoints)
    parent = parent_run(cfg, uri, sweep_dir, resume)
    specs = trial_specs(cfg, checkpoints, sweep_dir, uri, parent)
    print(f"[sweep] {cfg.name}: {len(specs)} trials ({len(checkpoints)} checkpoint(s) × "
          f"{cfg.modes} × seeds {list(cfg.seeds)}) in {sweep_dir}", flush=True)
    _init_ray(cfg)
    check_shared(sweep_dir)
    status = "FAILED"
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        results = _tuner(cfg, specs, sweep_dir, resume).fit()
        errors = results.num_errors
        status = "FINISHED" if errors == 0 else "FAILED"
        print(f"[sweep] {len(results)} trials, {errors} failed")
        for line in summary(results):
            print(line)
        _table(uri, cfg.experiment, parent, sweep_dir)
        return 0 if errors == 0 else 1
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"[sweep] stopped; continue with: python jobs/sweep.py --resume ... "
              f"(sweep dir {sweep_dir})", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        closed = close_children(uri, cfg.experiment, parent, "KILLED")
        if closed:
            print(f"[sweep] marked {closed} unfinished child run(s) KILLED")
        from mlflow import MlflowClient

        MlflowClient(uri).set_terminated(parent, status)
        print(f"[sweep] MLflow: {_ui(uri)}")
        print(f"[sweep] runs:   {_url(uri, cfg.experiment)}")


def _table(uri: str, experiment: str, parent: str, sweep_dir: Path) -> None:
    """Table 1 of this sweep (``contra report``), printed and logged to the parent run."""
    from contra.report import ReportError, write_report

    try:
        print(write_report(uri, experiment, sweep_dir / "report", sweep=parent))
    except ReportError as exc:  # e.g. every trial failed: the sweep's own outcome says enough
        print(f"[sweep] no Table 1: {exc}")


def _ui(uri: str) -> str:
    from contra.tracking import Tracker

    return Tracker.ui_command(uri)


def _url(uri: str, experiment: str) -> str:
    """The UI page listing the sweep's runs (with the parent run's children nested)."""
    from mlflow import MlflowClient

    from contra.tracking import runs_view_url

    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    return runs_view_url(uri, exp.experiment_id) if exp else "(no experiment yet)"


# ---------------------------------------------------------------------------------- entry
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs/sweep.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sweep config (YAML), e.g. "
                   "configs/sweep/table1.yaml")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in its directory (finished trials are not rerun)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from contra.entry import configure_logging, guarded

    args = parse_args(argv)
    configure_logging("WARNING")
    return guarded(lambda: run_sweep(load_config(SweepConfig, args.config, args.overrides),
                                     resume=args.resume))


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    print(f"[sweep] {time.monotonic() - t0:.0f} s", file=sys.stderr)
    sys.exit(code)
