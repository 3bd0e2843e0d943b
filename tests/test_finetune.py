"""Fine-tuning: the loss against float64, Table 1's init modes and freezes, transfer, learning,
exact resume after a signal, evaluation files that ``contra evaluate`` reproduces, lineage tags.

Runs are real: ``contra finetune`` in process, or ``python -m contra.finetune`` ranks with
torchrun's variables (gloo, CPU), on synthetic FreiHAND data written in the real formats.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from contra.checkpoint import load_checkpoint, save_checkpoint
from contra.cli import main as cli_main
from contra.config import ConfigError
from contra.data.freihand import FreiHAND
from contra.data.supervised import SupervisedDataConfig, SupervisedDataset
from contra.finetune import eval_metric, learning_rate, load
from contra.initialisation import InitConfig, initialise
from contra.mano.theta import freihand_layer
from contra.metrics import evaluate_freihand
from contra.nets import BACKBONE_KEYS, ManoNet
from contra.preempt import EXIT_PREEMPTED
from contra.shape_loss import HandShapeLoss, LossConfig, normalised_target, theta_from_output
from tests.netutil import free_port, launch_ranks, wait_ranks

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "finetune" / "demo.yaml"
ROWS = ("scratch", "imagenet", "fixed", "fixed-bn", "full")


def tiny(run_dir: Path, data: Path, **extra: object) -> list[str]:
    """Overrides for a seconds-long fine-tune on the demo config (32 px, resnet18, batch 8)."""
    values: dict[str, object] = {
        "run_dir": run_dir, "data.root": data, "max_steps": 4, "batch_size": 8, "workers": 0,
        "threads": 1, "log_every": 1, "progress": False, "data.image_size": 32,
        "eval.every_steps": 0, "eval.figure_samples": 2, "checkpoint.every_steps": 2,
        "tracking.enabled": False, "deterministic": True, "mano_root": "standin",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def finetune(args: list[str]) -> int:
    return cli_main(["finetune", "--config", str(DEMO), *args])


def is_backbone(key: str) -> bool:
    return key.split(".", 1)[0] in BACKBONE_KEYS


@pytest.fixture(scope="module")
def moco_ckpt(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """A real contra pretraining checkpoint (resnet18, 2 steps) with its MLflow run."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    args = [f"{k}={v}" for k, v in {
        "run_dir": run_dir, "data_root": synth_root / "hanco", "epochs": 1, "max_steps": 2,
        "batch_size": 16, "workers": 0, "threads": 1, "progress": False,
        "pairs.image_size": 32, "moco.queue_size": 64, "monitor.every_epochs": 0,
        "tracking.enabled": True}.items()]
    config = ROOT / "configs" / "pretrain" / "demo.yaml"
    assert cli_main(["pretrain", "--config", str(config), *args]) == 0
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def freihand_large(tmp_path_factory: pytest.TempPathFactory, standin_root: Path) -> Path:
    """A synthetic FreiHAND with 160 training and 16 evaluation samples (≈ 10 s to write).

    Root orientations within 30° of MANO's rest pose: with uniform orientations (the default),
    a few hundred CPU steps learn the global rotation first and the articulation not yet, so
    the PA-aligned error cannot move (measured: 15.0 → 20.2 mm after 800 steps at 32 px).
    """
    from contra.data.synth.generate import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth-large")
    generate(SynthConfig(out_dir=out, seed=3, sequences=2, frames=2, test_sequences=1,
                         subjects=2, backgrounds=4, freihand_train=160, freihand_eval=16,
                         freihand_subjects=2, workers=2, mano_root=str(standin_root),
                         freihand_root_spread_deg=30.0))
    return out / "freihand"


# ---------------------------------------------------------------------------------- the loss
def _reference_terms(raw: np.ndarray, K: np.ndarray, xyz: np.ndarray, theta: np.ndarray,
                     size: int, layer: torch.nn.Module, cfg: LossConfig) -> dict[str, float]:
    """Spec §6 in float64 NumPy, from contra-hand's constants, only the mesh from the layer."""
    gain = np.array([1.0] * 48 + [0.5] * 10 + [14.0] * 2 + [125.0])
    offset = np.array([0.0] * 58 + [112.0] * 2 + [730.0])
    k = size / 224
    th = raw * gain + offset
    th[:, 58:] *= k
    with torch.no_grad():
        _, joints = layer.double()(torch.from_numpy(th[:, :48]), torch.from_numpy(th[:, 48:58]))
    joints = joints.numpy()
    f = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    z = f / th[:, 60]
    t = np.stack([(th[:, 58] - K[:, 0, 2]) / th[:, 60], (th[:, 59] - K[:, 1, 2]) / th[:, 60], z],
                 axis=1)
    kp = joints - joints[:, 9:10] + t[:, None]
    d3 = (kp - kp[:, 9:10]) - (xyz - xyz[:, 9:10]) if cfg.root_relative else kp - xyz

    def proj(p: np.ndarray) -> np.ndarray:
        q = np.einsum("bij,bnj->bni", K, p)
        return q[..., :2] / q[..., 2:]

    d2 = (proj(kp) - proj(xyz)) / k
    dist = (lambda d: (d ** 2).sum(-1)) if cfg.norm == "squared" \
        else (lambda d: np.sqrt((d ** 2).sum(-1)))
    target = theta.copy()
    target[:, 58:] /= k
    target = (target - offset) / gain
    terms = {"loss_xyz": dist(d3).mean(), "loss_uv": dist(d2).mean(),
             "loss_theta": ((raw - target) ** 2).mean()}
    terms["loss"] = cfg.w_xyz * terms["loss_xyz"] + cfg.w_uv * terms["loss_uv"] \
        + cfg.w_theta * terms["loss_theta"]
    return terms


@pytest.mark.parametrize("cfg", [LossConfig(), LossConfig(norm="squared", w_uv=0.1),
                                 LossConfig(root_relative=False, w_xyz=500.0)])
def test_loss_terms_match_an_independent_float64_computation(cfg: LossConfig, standin_root: Path,
                                                             synth_root: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    b, size = 6, 64
    data = SupervisedDataset(SupervisedDataConfig(root=synth_root / "freihand", image_size=size,
                                                  seed=1), "training")
    batch = torch.utils.data.default_collate([data[i] for i in range(b)])
    raw = 0.3 * torch.randn(b, 61, generator=gen)
    layer = freihand_layer(str(standin_root))
    got = HandShapeLoss(cfg, layer)(raw, batch["K"], batch["xyz"], batch["theta"], size)
    ref = _reference_terms(raw.double().numpy(), batch["K"].double().numpy(),
                           batch["xyz"].double().numpy(), batch["theta"].double().numpy(), size,
                           freihand_layer(str(standin_root)), cfg)
    for key, value in ref.items():
        assert float(got[key]) == pytest.approx(value, rel=2e-4, abs=1e-7), key
    assert float(got["loss"]) > 1.0  # a random output is far from the target


def test_ground_truth_target_has_zero_loss_and_round_trips(standin_root: Path,
                                                           synth_root: Path) -> None:
    cfg = SupervisedDataConfig(root=synth_root / "freihand", image_size=48, seed=2)
    data = SupervisedDataset(cfg, "training")
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    r = normalised_target(batch["theta"], 48)
    assert torch.allclose(theta_from_output(r, 48), batch["theta"], atol=1e-4)
    terms = HandShapeLoss(LossConfig(), freihand_layer(str(standin_root)))(
        r, batch["K"], batch["xyz"], batch["theta"], 48)
    assert float(terms["loss_xyz"]) < 1e-6  # 1 µm: the keypoints are the GT's
    assert float(terms["loss_uv"]) < 0.05  # px (FreiHAND's averaged-focal placement)
    assert float(terms["loss_theta"]) < 1e-10


def test_schedule_is_the_papers_step_decay() -> None:
    from contra.finetune import OptimConfig

    opt = OptimConfig()
    assert learning_rate(opt, 0, 500_000) == pytest.approx(1e-4)
    assert learning_rate(opt, 219_999, 500_000) == pytest.approx(1e-4)
    assert learning_rate(opt, 220_000, 500_000) == pytest.approx(5e-5)
    assert learning_rate(opt, 340_000, 500_000) == pytest.approx(2.5e-5)
    assert learning_rate(opt, 100, 200) == pytest.approx(5e-5)  # milestones scale (88, 136)


@pytest.mark.parametrize("row", ROWS)
def test_paper_configs_name_table1s_rows(row: str, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    cfg = load(ROOT / "configs" / "finetune" / f"{row}.yaml", [f"init.weights={weights}"]
               if row in ("fixed", "fixed-bn", "full") else [])
    assert (cfg.model.arch, cfg.data.image_size, cfg.batch_size, cfg.max_steps) == (
        "resnet50", 224, 16, 500_000)
    assert (cfg.optim.name, cfg.optim.lr, cfg.loss.w_xyz, cfg.loss.w_uv) == ("adam", 1e-4,
                                                                             1000.0, 10.0)
    mode = {"scratch": ("scratch", "none"), "imagenet": ("imagenet", "none"),
            "fixed": ("moco", "all"), "fixed-bn": ("moco", "conv"), "full": ("moco", "none")}
    assert (cfg.init.mode, cfg.init.freeze) == mode[row]
    assert cfg.data.seed is not None and cfg.data.versions == ("gs", "hom", "sample", "auto")


# ---------------------------------------------------------------------- transfer and freezes
def test_pretraining_backbone_arrives_exactly(moco_ckpt: Path) -> None:
    net = ManoNet("resnet18", dilate_last=False)
    report = initialise(net, InitConfig(mode="moco", weights=moco_ckpt, freeze="none"))
    src = load_checkpoint(moco_ckpt)["model"]
    mine = net.state_dict()
    backbone = [k for k in mine if is_backbone(k)]
    assert report.transferred == len(backbone) > 100
    for key in backbone:
        assert torch.equal(mine[key], src[f"module.encoder_q.{key}"]), key
    assert report.strategy == "multiview+temporal+background" and report.pretrain_run_id


def test_weights_that_match_nothing_are_refused_with_one_line(
        tmp_path: Path, synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pth"
    save_checkpoint({"encoder.weight": torch.zeros(3)}, bad)
    args = tiny(tmp_path / "run", synth_root / "freihand", **{"init.mode": "moco",
                                                             "init.weights": bad})
    assert finetune(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contra: error:") and str(bad) in err and "0 of" in err
    assert "\n" not in err


@pytest.mark.parametrize("freeze", ["all", "conv", "none"])
def test_freeze_modes_change_only_what_they_allow(freeze: str, tmp_path: Path, synth_root: Path,
                                                  moco_ckpt: Path) -> None:
    run_dir = tmp_path / "run"
    args = tiny(run_dir, synth_root / "freihand", **{"init.mode": "moco",
                                                     "init.weights": moco_ckpt,
                                                     "init.freeze": freeze})
    assert finetune(args) == 0
    after = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    before = {k.removeprefix("module.encoder_q."): v
              for k, v in load_checkpoint(moco_ckpt)["model"].items()
              if k.startswith("module.encoder_q.")}
    conv = [k for k in after if is_backbone(k) and k.endswith("weight") and after[k].ndim == 4]
    bn_affine = [k for k in after if is_backbone(k) and after[k].ndim == 1
                 and k.rsplit(".", 1)[1] in ("weight", "bias")]
    bn_stats = [k for k in after if is_backbone(k) and k.endswith(("running_mean", "running_var"))]
    same = {k: torch.equal(after[k], before[k]) for k in conv + bn_affine + bn_stats}
    if freeze == "all":
        assert all(same.values())
    elif freeze == "conv":
        assert all(same[k] for k in conv)
        assert not any(same[k] for k in bn_affine) and not any(same[k] for k in bn_stats)
    else:
        assert not any(same[k] for k in conv)
    head = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]["fc3.weight"]
    assert not torch.equal(head, ManoNet("resnet18", dilate_last=False).fc3.weight)


# ---------------------------------------------------------------------------------- learning
def _pa_mpjpe_on_training_samples(net: ManoNet, root: Path, size: int) -> float:
    """PA keypoint error (mm) of ``net`` on the training samples (gs images, no augmentation)."""
    cfg = SupervisedDataConfig(root=root, image_size=size, augment=False, versions=("gs",),
                               seed=0)
    data = SupervisedDataset(cfg, "training")
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    loss = HandShapeLoss(LossConfig(), freihand_layer(None))
    net.eval()
    with torch.no_grad():
        _, verts, kp = loss.predict(net(batch["image"]), batch["K"], size)
    gt = FreiHAND(root, "training")
    scores = evaluate_freihand(gt.xyz, gt.verts, kp.double().numpy(), verts.double().numpy())
    return 10 * scores["xyz_al_mean3d"]


def test_a_short_fine_tune_learns_the_training_hands(tmp_path: Path,
                                                     freihand_large: Path) -> None:
    """160 samples, 240 steps: the PA-MPJPE on them falls below 80 % of the untrained net's."""
    run_dir, size = tmp_path / "run", 48
    args = tiny(run_dir, freihand_large, max_steps=240, batch_size=16, threads=2,
                **{"data.image_size": size, "checkpoint.every_steps": 0, "log_every": 1,
                   "optim.lr": 0.001, "data.versions": "[gs]"})
    assert finetune(args) == 0
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    losses = state["history"]["loss"]
    first, last = float(np.mean(losses[:3])), float(np.mean(losses[-20:]))
    torch.manual_seed(0)  # the run's initial weights (seed 0)
    untrained = ManoNet("resnet18", dilate_last=False, dropout=0.0)
    trained = ManoNet("resnet18", dilate_last=False, dropout=0.0)
    trained.load_state_dict(state["model"])
    before = _pa_mpjpe_on_training_samples(untrained, freihand_large, size)
    after = _pa_mpjpe_on_training_samples(trained, freihand_large, size)
    print(f"PA-MPJPE on the 160 training samples: untrained {before:.2f} mm → {after:.2f} mm; "
          f"training loss (steps 1-3 → 221-240) {first:.1f} → {last:.1f}")
    assert last < 0.7 * first, losses
    assert after < 0.8 * before, (before, after)


# ------------------------------------------------------------- exact resume after a signal
def launch(overrides: list[str], world: int, port: int, log_dir: Path) -> list[subprocess.Popen]:
    return launch_ranks("contra.finetune", DEMO, overrides, world, port, log_dir)


def wait_all(procs: list[subprocess.Popen], log_dir: Path) -> list[int]:
    return wait_ranks(procs, log_dir, (0, EXIT_PREEMPTED))


def test_signal_checkpoint_resume_is_bitwise_equal_to_an_uninterrupted_run(
        tmp_path: Path, synth_root: Path) -> None:
    data = synth_root / "freihand"
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    extra = {"max_steps": 30, "workers": 1, "eval.every_steps": 10}
    logs = tmp_path / "logs"
    logs.mkdir()
    assert wait_all(launch(tiny(ref, data, **extra), 2, free_port(), logs), logs) == [0, 0]
    reference = load_checkpoint(ref / "checkpoints" / "last.pt")
    procs = launch(tiny(cut, data, **extra), 2, free_port(), logs)
    last = cut / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGUSR1)
    assert wait_all(procs, logs) == [EXIT_PREEMPTED, EXIT_PREEMPTED]
    stopped = load_checkpoint(last)
    assert 2 <= stopped["step"] < 30, "the signal came too late to test a resume"
    assert wait_all(launch(tiny(cut, data, **extra), 2, free_port(), logs), logs) == [0, 0]
    resumed = load_checkpoint(last)
    assert resumed["step"] == reference["step"] == 30
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for key, value in reference["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][key]["exp_avg"], value["exp_avg"])
    assert resumed["history"]["eval"] == reference["history"]["eval"]


# ----------------------------------------------------------- evaluation files and tracking
def test_evaluate_reproduces_the_logged_scores_and_lineage_is_tagged(
        tmp_path: Path, synth_root: Path, moco_ckpt: Path) -> None:
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    data = synth_root / "freihand"
    args = tiny(run_dir, data, **{"tracking.enabled": True, "init.mode": "moco",
                                  "init.weights": moco_ckpt, "init.freeze": "all",
                                  "eval.every_steps": 2, "seed": 7})
    assert finetune(args) == 0
    summary = json.loads((run_dir / "run.json").read_text())
    out = tmp_path / "again"
    assert cli_main(["evaluate", "--pred", str(run_dir / "eval" / "pred.json"), "--gt",
                     str(data), "--out", str(out)]) == 0
    again = json.loads((out / "scores.json").read_text())
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    for key in ("mesh_al_mean3d", "f_al_score_5", "f_al_score_15", "xyz_al_mean3d"):
        history = client.get_metric_history(run.info.run_id, eval_metric(key))
        assert [m.step for m in history] == [2, 4]
        assert history[-1].value == again[key], key  # exactly, not approximately
    assert json.loads((run_dir / "eval" / "scores.json").read_text()) == again
    pretrain = load_checkpoint(moco_ckpt)
    tags = run.data.tags
    assert tags["pretrain_run_id"] == pretrain["mlflow_run_id"]
    assert tags["strategy"] == "multiview+temporal+background"
    assert tags["init_mode"] == "moco" and tags["freeze"] == "all" and tags["seed"] == "7"
    assert tags["table1_row"] == "fixed" and tags["mano_model"] == "standin"
    from contra.initialisation import sha256

    assert tags["checkpoint_sha256"] == sha256(moco_ckpt)
    assert run.info.run_name == "finetune fixed multiview+temporal+background seed 7"
    assert run.info.experiment_id == client.get_experiment_by_name("contra-finetune").experiment_id
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "loss_curve.png", "eval_curve.png", "scores.json", "pred.json",
            "meshes.png"} <= artifacts
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["scores"]["mesh_al_mean3d"] == summary["best"]["mesh_al_mean3d"]


# --------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("override, needle", [
    ("init.mode=moco", "init.weights"),
    ("init.mode=pretrained", "init.mode"),
    ("init.freeze=all", "init.freeze"),
    ("loss.norm=l1", "loss.norm"),
    ("epochs=0 max_steps=0", "max_steps"),
])
def test_bad_configs_are_one_line_errors(override: str, needle: str, tmp_path: Path,
                                         synth_root: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = [*tiny(tmp_path / "run", synth_root / "freihand"), *override.split()]
    assert finetune(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contra: error:") and needle in err and "\n" not in err


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path: Path, synth_root: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert finetune(tiny(tmp_path / "run", synth_root / "freihand",
                         **{"init.mode": "imagenet"})) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "torch") in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_imagenet_mode_loads_a_local_torchvision_file(tmp_path: Path, synth_root: Path) -> None:
    import torchvision

    torch.manual_seed(5)
    weights = tmp_path / "resnet18.pth"
    reference = torchvision.models.resnet18().state_dict()
    save_checkpoint(reference, weights)
    net = ManoNet("resnet18", dilate_last=False)
    report = initialise(net, InitConfig(mode="imagenet", weights=weights))
    assert report.transferred == sum(1 for k in net.state_dict() if is_backbone(k))
    assert torch.equal(net.conv1.weight, reference["conv1.weight"])
    run_dir = tmp_path / "run"
    assert finetune(tiny(run_dir, synth_root / "freihand", max_steps=2, **{
        "init.mode": "imagenet", "init.weights": weights,
        "data.normalisation": "imagenet"})) == 0
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["init"]["table1_row"] == "imagenet"
    assert summary["init"]["transferred_tensors"] == str(report.transferred)


def test_mano_model_must_be_given_and_be_mano(tmp_path: Path, synth_root: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CONTRA_MANO_ROOT")
    assert finetune(tiny(tmp_path / "a", synth_root / "freihand", mano_root="null")) == 2
    assert "mano_root=standin" in capsys.readouterr().err
    fake = tmp_path / "mano"
    fake.mkdir()
    (fake / "MANO_RIGHT.pkl").write_bytes(b"\x80\x04K\x01.")  # a pickled int, not a model
    assert finetune(tiny(tmp_path / "b", synth_root / "freihand", mano_root=fake)) == 2
    err = capsys.readouterr().err.strip()
    assert str(fake / "MANO_RIGHT.pkl") in err and "\n" not in err


def test_load_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'init\.frozen'"):
        load(DEMO, ["init.frozen=all"])
