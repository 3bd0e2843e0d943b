"""The pretraining loop: schedule, configs, checkpoints, exact resume after a signal, export.

Multi-rank runs are real: ``python -m contra.pretrain`` processes with torchrun's variables
(RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), gloo on CPU, on the session's synthetic HanCo.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from contra.checkpoint import load_checkpoint
from contra.cli import main as cli_main
from contra.config import ConfigError
from contra.preempt import EXIT_PREEMPTED, PreemptionFlag
from contra.pretrain import OptimConfig, PretrainConfig, learning_rate, load
from tests.netutil import free_port, launch_ranks, wait_ranks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "pretrain"
PAPER = ("augmentation", "background", "temporal", "multiview")


def tiny(run_dir: Path, data: Path, **extra: object) -> list[str]:
    """Overrides for a seconds-long run on the demo config (32 px, resnet18, K = 64)."""
    values: dict[str, object] = {
        "run_dir": run_dir, "data_root": data, "epochs": 2, "batch_size": 16, "workers": 0,
        "threads": 1, "log_every": 1, "progress": False, "pairs.image_size": 32,
        "moco.queue_size": 64, "checkpoint.every_steps": 8, "monitor.every_epochs": 0,
        "tracking.enabled": False, "deterministic": True,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def launch(overrides: list[str], world: int, port: int, log_dir: Path) -> list[subprocess.Popen]:
    """``world`` ranks of ``python -m contra.pretrain`` (torchrun's environment variables)."""
    return launch_ranks("contra.pretrain", CONFIGS / "demo.yaml", overrides, world, port, log_dir)


def wait_all(procs: list[subprocess.Popen], log_dir: Path, timeout: float = 300) -> list[int]:
    return wait_ranks(procs, log_dir, (0, EXIT_PREEMPTED), timeout)


def train(overrides: list[str], world: int, log_dir: Path) -> list[int]:
    log_dir.mkdir(parents=True, exist_ok=True)
    return wait_all(launch(overrides, world, free_port(), log_dir), log_dir)


def assert_same_state(a: dict, b: dict) -> None:
    """Model, optimizer and queue bitwise equal."""
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["queue"], b["queue"]) and a["queue_pointer"] == b["queue_pointer"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k


# --------------------------------------------------------------------------- schedule
def test_learning_rate_is_the_papers_cosine_with_linear_scaling() -> None:
    opt = OptimConfig()
    expected = {0: 0.015, 25: 0.012803, 50: 0.0075, 75: 0.002197, 99: 3.7e-6}  # moco.md §2
    for epoch, lr in expected.items():
        assert learning_rate(opt, 128, epoch / 100) == pytest.approx(lr, rel=2e-3, abs=1e-7)
    assert learning_rate(opt, 512, 0.0) == pytest.approx(0.06)  # 4 × batch → 4 × lr
    const = OptimConfig(schedule="constant")
    assert learning_rate(const, 64, 0.7) == pytest.approx(0.0075)
    assert learning_rate(opt, 128, 0.5) == pytest.approx(0.015 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_warmup_ramps_linearly_then_follows_the_schedule() -> None:
    warm = OptimConfig(warmup_steps=10, schedule="constant")
    assert [learning_rate(warm, 128, 0.0, s) for s in (0, 4, 9, 10, 500)] == pytest.approx(
        [0.0015, 0.0075, 0.015, 0.015, 0.015])
    assert learning_rate(OptimConfig(), 128, 0.0, 0) == pytest.approx(0.015)  # none by default


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_follow_the_recipe(name: str) -> None:
    cfg = load(CONFIGS / f"{name}.yaml")
    assert cfg.pairs.strategies == (name,)
    assert cfg.model.arch == "resnet50" and cfg.pairs.augmentation == "mocov2"
    assert cfg.pairs.image_size in (None, 224)
    assert (cfg.batch_size, cfg.epochs, cfg.optim.lr, cfg.optim.schedule) == (
        128, 100, 0.015, "cosine-epoch")
    assert (cfg.moco.queue_size, cfg.moco.momentum, cfg.moco.temperature) == (65536, 0.999, 0.2)


def test_release_and_demo_configs_load() -> None:
    rel = load(CONFIGS / "contra-hand-release.yaml")
    assert rel.pairs.augmentation == "contra-hand"
    demo = load(CONFIGS / "demo.yaml")
    assert demo.model.arch == "resnet18" and 64 <= (demo.pairs.image_size or 0) <= 112
    assert demo.moco.queue_size % demo.batch_size == 0


def test_bad_config_values_are_one_line_errors(tmp_path: Path, synth_root: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"optim\.schedule"):
        load(CONFIGS / "demo.yaml", ["optim.schedule=linear"])
    args = tiny(tmp_path / "run", synth_root / "hanco", **{"moco.queue_size": 60})
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contra: error:") and "queue size K=60" in err and "\n" not in err


# ------------------------------------------------------------------------------ signals
def test_preemption_flag_catches_signals_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionFlag() as flag:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert flag.requested and flag.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


# ------------------------------------------------------------- single process + export
def test_single_process_run_checkpoint_and_export(tmp_path: Path, synth_root: Path) -> None:
    run_dir = tmp_path / "run"
    args = tiny(run_dir, synth_root / "hanco", max_steps=6)
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"), *args]) == 0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["world_size"] == 1
    keys = state["model"].keys()
    assert any(k.startswith("module.encoder_q.layer4.") for k in keys)
    assert any(k.startswith("module.encoder_k.fc2.") for k in keys)
    assert state["queue"].shape == (64, 128) and state["queue_pointer"] == 6 * 16 % 64
    assert state["config"]["batch_size"] == 16 and len(state["rng"]) == 1
    assert (run_dir / "config.yaml").is_file()

    out = tmp_path / "r18.pth"
    assert cli_main(["export", str(run_dir / "checkpoints" / "last.pt"), "--out", str(out)]) == 0
    net = torchvision.models.resnet18()
    result = net.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert torch.equal(net.conv1.weight, state["model"]["module.encoder_q.conv1.weight"])
    hand = tmp_path / "embed.pth"
    assert cli_main(["export", str(run_dir / "checkpoints" / "last.pt"), "--out", str(hand),
                     "--format", "contra-hand"]) == 0
    assert {"fc.weight", "fc2.weight"} <= torch.load(hand, weights_only=True).keys()


def test_collapse_freshness_and_instance_figures_are_logged(
        tmp_path: Path, synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The remedies run together (small stem, head BN, warm-up, queue+batch negatives) and every
    run records the freshness control, the collapse statistics and the instance measure."""
    run_dir = tmp_path / "run"
    args = tiny(run_dir, synth_root / "hanco", epochs=1, max_steps=0, **{
        "monitor.every_epochs": 1, "monitor.frames": 24, "monitor.instance_pairs": 16,
        "model.stem": "small", "model.head_bn": True, "optim.warmup_steps": 3,
        "moco.negatives": "queue+batch"})
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"), *args]) == 0
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
    steps = len(history["step"])
    for key in ("acc1_batch", "emb_std_ratio", "cos_unrelated"):
        assert len(history[key]) == steps and all(math.isfinite(v) for v in history[key])
    assert all(0 <= v <= 100 for v in history["acc1_batch"])
    assert 0.5 < history["emb_std_ratio"][0] <= 1.5  # head BN: spread from the first step
    retrieval = json.loads((run_dir / "retrieval.json").read_text())
    assert len(retrieval) == 2  # before training and after the epoch
    for r in retrieval:
        assert 0 <= r["instance_top1_pct"] <= 100 and 0 <= r["random_init_instance_top1_pct"] <= 100
    card = json.loads((run_dir / "export" / "model.json").read_text())
    assert card["stem"] == "small" and not card["standard_torchvision"] and card["head_bn"]
    assert len(card["notes"]) == 2
    capsys.readouterr()
    assert cli_main(["export", str(run_dir / "checkpoints" / "last.pt"),
                     "--out", str(tmp_path / "small.pth")]) == 0
    assert "non-standard backbone (model.stem=small" in capsys.readouterr().out


def test_export_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["export", str(bad), "--out", str(tmp_path / "x.pth")]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------ 2 ranks, exact resume
def test_signal_checkpoint_resume_is_bitwise_equal_to_an_uninterrupted_run(
        tmp_path: Path, synth_root: Path) -> None:
    data = synth_root / "hanco"
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    assert train(tiny(ref_dir, data, workers=1), 2, tmp_path / "ref-logs") == [0, 0]
    reference = load_checkpoint(ref_dir / "checkpoints" / "last.pt")
    total = reference["step"]
    assert total == 2 * (8 * 24 // 2 // 8)  # 2 epochs × (8 cameras × 24 frames / 2 ranks / 8)

    logs = tmp_path / "cut-logs"
    logs.mkdir()
    procs = launch(tiny(cut_dir, data, workers=1), 2, free_port(), logs)
    last = cut_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and time.monotonic() < deadline and procs[1].poll() is None:
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGUSR1)  # one rank signalled: both must stop together
    assert wait_all(procs, logs) == [EXIT_PREEMPTED, EXIT_PREEMPTED]
    cut = load_checkpoint(last)
    assert 8 <= cut["step"] < total, "the signal came too late to test a resume"

    assert train(tiny(cut_dir, data, workers=1), 2, logs) == [0, 0]
    assert_same_state(load_checkpoint(last), reference)


def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path: Path, synth_root: Path) -> None:
    """Re-sharding: the canonical queue of R=2 (pointer mid-ring) continues on R=1."""
    data, run_dir = synth_root / "hanco", tmp_path / "run"
    train(tiny(run_dir, data, max_steps=3), 2, tmp_path / "logs")
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["world_size"] == 2 and saved["queue_pointer"] == 3 * 16 % 64
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"),
                     *tiny(run_dir, data, max_steps=5)]) == 0
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == 5 and resumed["world_size"] == 1
    # one rank holds the whole canonical queue: its 2 steps overwrote the 32 oldest rows only
    p = saved["queue_pointer"]
    written = (torch.arange(p, p + 32) % 64)
    keep = torch.ones(64, dtype=torch.bool)
    keep[written] = False
    assert torch.equal(resumed["queue"][keep], saved["queue"][keep])
    assert not torch.equal(resumed["queue"][~keep], saved["queue"][~keep])
    assert resumed["queue_pointer"] == (p + 32) % 64


def test_config_dataclass_defaults_are_the_paper_recipe() -> None:
    cfg = PretrainConfig()
    assert (cfg.batch_size, cfg.optim.lr, cfg.epochs, cfg.model.arch) == (128, 0.015, 100,
                                                                        "resnet50")


def test_tracking_and_monitor_continue_the_same_mlflow_run(tmp_path: Path,
                                                           synth_root: Path) -> None:
    """A run stopped at max_steps and resumed logs into one MLflow run (SQLite in run_dir)."""
    from mlflow import MlflowClient

    run_dir, data = tmp_path / "run", synth_root / "hanco"
    extra = {"tracking.enabled": True, "monitor.every_epochs": 1, "monitor.frames": 12,
             "log_every": 2}
    config = ["pretrain", "--config", str(CONFIGS / "demo.yaml")]
    assert cli_main([*config, *tiny(run_dir, data, max_steps=4, **extra)]) == 0
    first = load_checkpoint(run_dir / "checkpoints" / "last.pt")["mlflow_run_id"]
    assert first
    assert cli_main([*config, *tiny(run_dir, data, epochs=1, **extra)]) == 0
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["mlflow_run_id"] == first and last["step"] == 12

    client = MlflowClient(f"sqlite:///{run_dir.resolve()}/mlflow.db")
    run = client.get_run(first)
    assert run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "16" and run.data.params["model.arch"] == "resnet18"
    steps = [m.step for m in client.get_metric_history(first, "train/loss")]
    assert steps == [2, 4, 6, 8, 10, 12]  # both processes, one history
    assert len(client.get_metric_history(first, "retrieval/nn_mm")) == 2  # before + after
    assert "retrieval/random_init_nn_mm" in run.data.metrics
    assert {"train/acc1_pct", "train/data_wait_frac", "train/pairs_per_s"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(first)}
    assert {"config.yaml", "loss_curve.png", "weights.txt"} <= artifacts
    summary = (run_dir / "run.json").read_text()
    assert first in summary and "mlflow ui --backend-store-uri" in summary


def test_gpu_code_path_bf16_autocast_and_channels_last_on_cpu(tmp_path: Path,
                                                             synth_root: Path) -> None:
    """What runs on GPUs (bf16 autocast, channels_last) also runs here; the queue stays fp32."""
    run_dir = tmp_path / "run"
    args = tiny(run_dir, synth_root / "hanco", max_steps=2, amp="bf16", channels_last=True,
                deterministic=False)
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"), *args]) == 0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["queue"].dtype == torch.float32 and torch.isfinite(state["queue"]).all()
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["model"]["module.encoder_q.conv1.weight"].dtype == torch.float32


def test_a_signal_during_the_rendezvous_checkpoints_after_the_first_step(
        tmp_path: Path, synth_root: Path) -> None:
    """SLURM's warning can come while a requeued job's ranks are still meeting: rank 0 waits
    in the rendezvous (its store listens, rank 1 is not there yet) when USR1 arrives. It must
    not die; both ranks stop after the first step with a checkpoint (exit 75)."""
    import socket

    port = free_port()
    args = tiny(tmp_path / "run", synth_root / "hanco")
    procs = [start_rank(0, port, args, tmp_path)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # rank 0's store is up: it is in init_process_group
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert procs[0].poll() is None, (tmp_path / "rank0.log").read_text()
        time.sleep(0.1)
    procs[0].send_signal(signal.SIGUSR1)
    time.sleep(1.0)  # rank 0 handles it while still alone
    assert procs[0].poll() is None, (tmp_path / "rank0.log").read_text()
    procs.append(start_rank(1, port, args, tmp_path))
    assert wait_all(procs, tmp_path, timeout=180) == [EXIT_PREEMPTED] * 2
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 1
    assert "received SIGUSR1" in (tmp_path / "rank0.log").read_text()


def start_rank(rank: int, port: int, args: list[str], log_dir: Path) -> subprocess.Popen:
    """One of 2 ranks of ``python -m contra.pretrain`` on the demo config."""
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    with open(log_dir / f"rank{rank}.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "contra.pretrain", "--config",
                                 str(CONFIGS / "demo.yaml"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.parametrize("damage", ["no step", "rng not a list", "model not a dict"])
def test_a_damaged_last_checkpoint_is_one_line(damage: str, tmp_path: Path, synth_root: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from contra.checkpoint import save_checkpoint
    from contra.pretrain import CHECKPOINT_FORMAT

    args = tiny(tmp_path / "run", synth_root / "hanco", max_steps=1)
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"), *args]) == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert state["format"] == CHECKPOINT_FORMAT
    if damage == "no step":
        del state["step"]
    elif damage == "rng not a list":
        state["rng"] = {"python": 1}
    else:
        state["model"] = [1, 2]
    save_checkpoint(state, last)
    capsys.readouterr()
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"), *args[:-1],
                     "max_steps=2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"contra: error: {last}: a damaged "), err
