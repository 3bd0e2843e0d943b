"""Damaged data as users meet it: one error line, or a count a user can see (issue 12 §1).

The scenario: a copy of the session's synthetic HanCo with 5 % of its images damaged (a third
truncated, a third garbage, a third deleted), pretrained with the demo config on 2 gloo ranks.
With the default ``pairs.max_failure_fraction`` the run stops with exactly one
``contra: error:`` line over both ranks and no traceback; with a higher fraction it finishes and
the skipped loads are on the bar, in MLflow, in ``run.json`` and in a closing line. The counts
are checked against a brute-force recount of the same items in this process, and
``contra data check`` is checked to flag exactly the damaged files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from contra.augment import decode_rgb
from contra.cli import main as cli_main
from contra.data.check import check_tree
from contra.data.errors import DataFormatError
from contra.data.hanco import HanCo
from contra.data.retry import CountedBatch, CountingCollate
from contra.entry import guarded, one_line
from contra.pairs import PairDataset
from contra.pretrain import load
from contra.pretrain import run as pretrain
from contra.retrieval import RetrievalConfig, RetrievalSet
from tests.damage import damaged_copy
from tests.netutil import ROOT, free_port, launch_ranks

CONFIG = ROOT / "configs" / "pretrain" / "demo.yaml"
CLOSING = re.compile(r"skipped (\d+) of (\d+) pair loads \((\d+\.\d) %\), e\.g\. (\S+);")


@pytest.fixture(scope="module")
def damaged(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """The damaged HanCo copy and the damaged files (relative POSIX paths)."""
    out = tmp_path_factory.mktemp("damaged") / "hanco"
    kinds = damaged_copy(synth_root / "hanco", out, 0.05, seed=0)
    return out, {p.relative_to(out).as_posix() for paths in kinds.values() for p in paths}


def overrides(run_dir: Path, data: Path, **extra: object) -> list[str]:
    values: dict[str, object] = {
        "run_dir": run_dir, "data_root": data, "epochs": 0, "max_steps": 12, "workers": 1,
        "pairs.image_size": 32, "moco.queue_size": 64, "monitor.every_epochs": 0,
        "checkpoint.every_steps": 6, "log_every": 3, "tracking.enabled": True}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def only_run(uri: str, experiment: str) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def two_ranks(tmp_path: Path, args: list[str]) -> tuple[list[int], list[str]]:
    """Exit codes and logs of a 2-rank ``python -m contra.pretrain`` on the demo config."""
    procs = launch_ranks("contra.pretrain", CONFIG, args, 2, free_port(), tmp_path)
    codes = [p.wait(timeout=300) for p in procs]
    return codes, [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]


# ---------------------------------------------------------------------- the scenario, 2 ranks
def test_default_fraction_stops_both_ranks_with_one_line(tmp_path: Path,
                                                          damaged: tuple[Path, set[str]]) -> None:
    root, _ = damaged
    run_dir = tmp_path / "run"
    codes, logs = two_ranks(tmp_path, overrides(run_dir, root, max_steps=60))
    text = "\n".join(logs)
    errors = [line for line in text.splitlines() if line.startswith("contra: error:")]
    assert codes == [2, 2], text[-3000:]
    assert len(errors) == 1, errors
    assert "Traceback" not in text and "DataLoader worker" not in text
    assert errors[0].startswith(f"contra: error: {root}: ") and "pair loads hit missing or " \
        "corrupt images" in errors[0] and "> pairs.max_failure_fraction 1.0%" in errors[0]
    assert f"contra data check --deep {root}" in errors[0]
    assert errors[0] in logs[0]  # rank 0 reports a failure all ranks reached together
    run = only_run(f"sqlite:///{run_dir / 'mlflow.db'}", "contra-pretrain")
    assert run.info.status == "FAILED"


def test_higher_fraction_finishes_and_shows_the_count_everywhere(
        tmp_path: Path, damaged: tuple[Path, set[str]]) -> None:
    root, bad = damaged
    run_dir = tmp_path / "run"
    codes, logs = two_ranks(tmp_path, overrides(run_dir, root, **{
        "pairs.max_failure_fraction": 0.25}))
    assert codes == [0, 0], logs[0][-3000:]
    closing = [m for line in logs[0].splitlines() if (m := CLOSING.search(line))]
    assert len(closing) == 1 and not CLOSING.search(logs[1])
    skipped, loads, pct, example = closing[0].groups()
    data = json.loads((run_dir / "run.json").read_text())["data"]
    assert (data["skipped_loads"], data["loads"]) == (int(skipped), int(loads))
    assert float(pct) == pytest.approx(100 * int(skipped) / int(loads), abs=0.05)
    assert data["source"] == str(root) and example == data["examples"][0]
    assert {Path(e).relative_to(root).as_posix() for e in data["examples"]} <= bad
    # brute force: the same 12 × 32 items loaded here, one process, no workers
    assert (int(loads), int(skipped)) == recount(root, load(CONFIG, overrides(run_dir, root)), 12)
    assert int(skipped) > 0
    bar = logs[0].replace("\r", "\n")
    assert re.search(rf"skipped={skipped}/{loads}\]", bar)
    run = only_run(f"sqlite:///{run_dir / 'mlflow.db'}", "contra-pretrain")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["data/skipped_loads"] == int(skipped)
    assert run.data.metrics["data/loads"] == int(loads)
    assert run.data.metrics["data/skipped_loads_pct"] == pytest.approx(float(pct), abs=0.05)


def recount(root: Path, cfg: Any, steps: int) -> tuple[int, int]:
    """(loads, skipped loads) of the run's first ``steps`` global batches, item by item."""
    ds = PairDataset(HanCo(root), cfg.pairs)
    ds.retry.deferred = True
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    per_epoch = len(sampler) // cfg.batch_size
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        if k == 0:
            ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            order = list(sampler)
        for i in order[k * cfg.batch_size:(k + 1) * cfg.batch_size]:
            ds[i]
    return ds.stats.attempts, ds.stats.failures


# ------------------------------------------------------------------- one process, resumed
def test_counts_survive_a_resume_and_a_clean_tree_skips_nothing(
        tmp_path: Path, synth_root: Path, damaged: tuple[Path, set[str]]) -> None:
    root, _ = damaged
    args = overrides(tmp_path / "run", root, workers=2, progress=False, **{
        "tracking.enabled": False, "pairs.max_failure_fraction": 0.25})
    assert pretrain(load(CONFIG, [*args, "max_steps=6"])) == 0
    assert pretrain(load(CONFIG, args)) == 0  # resumes at step 6, stops at 12
    data = json.loads((tmp_path / "run" / "run.json").read_text())["data"]
    assert (data["loads"], data["skipped_loads"]) == recount(root, load(CONFIG, args), 12)

    clean = overrides(tmp_path / "clean", synth_root / "hanco", max_steps=3, progress=False,
                      **{"tracking.enabled": False})
    assert pretrain(load(CONFIG, clean)) == 0
    data = json.loads((tmp_path / "clean" / "run.json").read_text())["data"]
    assert data["skipped_loads"] == 0 and data["loads"] == 3 * 32 and data["examples"] == []


# ---------------------------------------------------------------------- data check agrees
def training_decoder_fails(path: Path) -> bool:
    """What the pair loader does with a file: read it, decode it (both decoders it may use)."""
    try:
        data = path.read_bytes()
        decode_rgb(data)
        with Image.open(path) as im:
            im.load()
    except (OSError, RuntimeError, ValueError, SyntaxError):
        return True
    return False


def test_data_check_flags_exactly_the_damaged_files(tmp_path: Path,
                                                    damaged: tuple[Path, set[str]]) -> None:
    root, bad = damaged
    unlisted = {p for p in bad if p.startswith("rnd_backgrounds/") and not (root / p).exists()}
    for deep in (False, True):  # a deleted background is not listed, so never read: no damage
        report = check_tree(root, max_examples=10**6, deep=deep)
        flagged = {p.path for kind in report.examples.values() for p in kind}
        assert flagged == bad - unlisted, deep
    # corrupt inside, intact ends: only a full decode sees it, and --deep uses the training one
    tree = tmp_path / "hanco"
    shutil.copytree(root, tree)
    images = sorted(tree.rglob("*.jpg"))
    rng = np.random.default_rng(1)
    for path in images[::7]:
        b = bytearray(path.read_bytes())
        a = len(b) // 3
        b[a:a + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(b))
    deep = {p.path for kind in check_tree(tree, 10**6, deep=True).examples.values() for p in kind}
    fails = {p.relative_to(tree).as_posix() for p in tree.rglob("*")
             if p.suffix in (".jpg", ".png") and training_decoder_fails(p)}
    gone = {p for p in deep if not (tree / p).exists()}
    assert gone == {p for p in bad - unlisted if not (root / p).exists()}
    assert deep - gone == fails and len(fails) > len(bad - gone)


# ------------------------------------------------------------------ the retrieval set's skips
def test_retrieval_set_counts_and_names_its_skips(tmp_path: Path, synth_root: Path) -> None:
    root = tmp_path / "hanco"
    bad = {p.relative_to(root).as_posix() for paths in damaged_copy(
        synth_root / "hanco", root, 0.3, seed=2, folders=("rgb",)).values() for p in paths}
    data = RetrievalSet.from_hanco(root, RetrievalConfig(frames=30, subset="gs", seed=3), 32)
    summary = data.skip_summary()
    n = summary["skipped_frames"]
    assert summary["frames"] == len(data) and n == sum(data.skipped.values()) > 0
    assert len(data) + n == 30  # every candidate frame of the tree was tried
    assert {Path(f).relative_to(root).as_posix() for f in summary["examples"]} <= bad
    line = data.skip_line()
    assert line is not None and line.startswith(f"retrieval set {root}: skipped {n} of 30 ")


# ---------------------------------------------------------------- worker errors, one line
class _Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        raise DataFormatError(f"/data/x/{i}.json: field 'K': expected 3×3")


def test_an_error_in_a_worker_process_is_the_original_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    def run() -> int:
        for _ in DataLoader(_Broken(), num_workers=1):
            pass
        return 0

    assert guarded(run) == 2
    err = capsys.readouterr().err
    assert err == "contra: error: /data/x/0.json: field 'K': expected 3×3\n"
    with pytest.raises(DataFormatError) as info:
        run()
    assert "Traceback" in str(info.value)
    assert one_line(info.value) == "/data/x/0.json: field 'K': expected 3×3"


def test_counting_collate_hands_each_batch_its_own_loads(
        damaged: tuple[Path, set[str]], synth_root: Path) -> None:
    """Worker-side counts per batch sum to the brute-force count, whatever the worker count."""
    root, _ = damaged
    cfg = load(CONFIG, overrides(Path("unused"), root)).pairs
    totals = []
    for workers in (0, 2):
        ds = PairDataset(HanCo(root), cfg)
        ds.retry.deferred = True
        loader = DataLoader(ds, batch_size=16, sampler=range(96), num_workers=workers,
                            collate_fn=CountingCollate(ds.retry))
        per_batch = [(b.attempts, b.failures) for b in map(lambda x: CountedBatch(*x), loader)]
        assert all(a == 16 + f for a, f in per_batch)
        totals.append(per_batch)
    assert totals[0] == totals[1]
    ref = PairDataset(HanCo(root), cfg)
    ref.retry.deferred = True
    for i in range(96):
        ref[i]
    assert sum(a for a, _ in totals[0]) == ref.stats.attempts
    assert sum(f for _, f in totals[0]) == ref.stats.failures


# ------------------------------------------------------------------------------ fine-tuning
def finetune_args(run_dir: Path, data: Path, **extra: object) -> list[str]:
    values: dict[str, object] = {
        "run_dir": run_dir, "data.root": data, "max_steps": 4, "batch_size": 8, "workers": 0,
        "threads": 1, "progress": False, "data.image_size": 32, "eval.every_steps": 0,
        "eval.figure_samples": 0, "tracking.enabled": False, "mano_root": "standin"}
    values.update(extra)
    return ["finetune", "--config", str(ROOT / "configs" / "finetune" / "demo.yaml"),
            *(f"{k}={v}" for k, v in values.items())]


def test_fine_tuning_counts_its_skips_or_stops_with_one_line(
        tmp_path: Path, synth_root: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "freihand"
    bad = damaged_copy(synth_root / "freihand", root, 0.25, seed=4, folders=("training",))
    assert bad["deleted"]
    assert cli_main(finetune_args(tmp_path / "stop", root, **{"data.min_attempts": 8})) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"contra: error: {root}") and \
        "> data.max_failure_fraction 1.0%" in err[0], err

    with caplog.at_level("INFO"):
        assert cli_main(finetune_args(tmp_path / "run", root, **{
            "data.max_failure_fraction": 0.9})) == 0
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    data = summary["data"]
    assert data["what"] == "image loads" and data["loads"] == 4 * 8 + data["skipped_loads"]
    assert data["skipped_loads"] > 0 and data["source"] == str(root)
    lines = [r.getMessage() for r in caplog.records if "image loads (" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(
        f"skipped {data['skipped_loads']} of {data['loads']} image loads (")
    assert summary["eval_data"]["skipped_loads"] == 0  # the evaluation images are intact
