"""Table 1's initialisations of the hand-shape network, and what fine-tuning may change.

=================  ===============  ==========  ===========================================
Table 1 row        ``init.mode``    ``freeze``  backbone
=================  ===============  ==========  ===========================================
Scratch            scratch          none        random (torchvision's init)
ImageNet           imagenet         none        torchvision ImageNet weights, a local file
Ours-Fixed         moco             all         MoCo weights; frozen, BN in eval mode
Ours-Fixed-BN      moco             conv        MoCo weights; convs frozen, BN trains
Ours (full)        moco             none        MoCo weights, everything trains
=================  ===============  ==========  ===========================================

MoCo weights come from a contra pretraining checkpoint (``last.pt``), an exported torchvision
file or contra-hand's released ``model_moco.pth``; only the backbone transfers (the heads are new,
hanco-freihand.md §3.5). Every backbone tensor must arrive: a file whose keys do not match
(pitfall 20) or match only partly (another architecture) is refused with one line.
Weights are never downloaded at run time; files are read with ``weights_only`` loads.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from contra.checkpoint import CheckpointError, load_checkpoint
from contra.config import ConfigError
from contra.nets import ManoNet, is_backbone, transfer_backbone

log = logging.getLogger(__name__)

Mode = Literal["scratch", "imagenet", "moco"]
Freeze = Literal["none", "conv", "all"]
ROWS = {("scratch", "none"): "scratch", ("imagenet", "none"): "imagenet",
        ("moco", "all"): "fixed", ("moco", "conv"): "fixed-bn", ("moco", "none"): "full"}


@dataclass(frozen=True)
class InitConfig:
    """The ``init:`` section of a fine-tune config."""

    mode: Mode = "scratch"
    #: imagenet: a torchvision state-dict file (None: torchvision's cache file for the arch);
    #: moco: a contra ``last.pt``, an exported torchvision file or ``model_moco.pth``.
    weights: Path | None = None
    freeze: Freeze = "none"

    def __post_init__(self) -> None:
        if (self.mode, self.freeze) not in ROWS:
            raise ValueError(f"init.freeze={self.freeze!r} is for init.mode=moco only "
                             f"(Table 1 has no {self.mode} row with a frozen backbone)")
        if self.mode == "moco" and self.weights is None:
            raise ValueError("init.weights: init.mode=moco needs a pretraining checkpoint "
                             "(runs/.../checkpoints/last.pt or an exported backbone)")


@dataclass
class InitReport:
    """What the network was initialised from, for the run's lineage tags."""

    row: str  # Table 1's row name
    mode: str
    freeze: str
    weights: str = ""
    sha256: str = ""
    transferred: int = 0
    pretrain_run_id: str = ""
    strategy: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        return {"table1_row": self.row, "init_mode": self.mode, "freeze": self.freeze,
                "checkpoint": self.weights, "checkpoint_sha256": self.sha256,
                "pretrain_run_id": self.pretrain_run_id, "strategy": self.strategy or "none",
                "transferred_tensors": str(self.transferred)}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imagenet_file(arch: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``arch`` (``torch.hub`` cache)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _source(cfg: InitConfig, arch: str) -> Path:
    if cfg.mode == "imagenet" and cfg.weights is None:
        path = imagenet_file(arch)
        if not path.is_file():
            import torchvision

            url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
            raise ConfigError(f"init.weights: no ImageNet weights for {arch} at {path}; contra "
                              f"never downloads at run time: fetch {url} into that folder on a "
                              f"machine with internet, or set init.weights=FILE")
        return path
    assert cfg.weights is not None
    if not Path(cfg.weights).is_file():
        raise ConfigError(f"init.weights: {cfg.weights} does not exist")
    return Path(cfg.weights)


def initialise(net: ManoNet, cfg: InitConfig) -> InitReport:
    """Load the backbone ``cfg`` names into ``net`` (nothing for scratch) and freeze it."""
    report = InitReport(ROWS[(cfg.mode, cfg.freeze)], cfg.mode, cfg.freeze)
    if cfg.mode != "scratch":
        path = _source(cfg, net.arch)
        report.weights, report.sha256 = str(path.resolve()), sha256(path)
        transfer_pretrained(net, load_checkpoint(path), path, report)
        log.info("init %s: %d backbone tensors from %s", report.row, report.transferred, path)
    apply_freeze(net, cfg.freeze)
    return report


def transfer_pretrained(net: ManoNet, state: dict[str, Any], path: Path,
                        report: InitReport) -> None:
    """Copy the backbone of the loaded file ``state`` into ``net``; its lineage into ``report``.

    Whatever the file holds, a mismatch ends in a one-line :class:`CheckpointError` naming it.
    """
    model = state.get("model")
    report.transferred = _transfer(model if isinstance(model, dict) else state, net, path)
    run_id = state.get("mlflow_run_id")
    report.pretrain_run_id = run_id if isinstance(run_id, str) else ""
    report.strategy = pretraining_strategy(state.get("config"))


def pretraining_strategy(config: Any) -> str:
    """``pairs.strategies`` of a pretraining config saved in the checkpoint, joined by ``+``."""
    pairs = config.get("pairs") if isinstance(config, dict) else None
    names = pairs.get("strategies") if isinstance(pairs, dict) else None
    ok = isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)
    return "+".join(names) if ok else ""


def _is_weight(value: Any) -> bool:
    """A dense real tensor that ``load_state_dict`` can copy (not sparse, complex or quantized)."""
    return (isinstance(value, torch.Tensor) and value.layout == torch.strided
            and not value.is_complex() and not value.is_quantized and not value.is_meta)


def _transfer(weights: dict[Any, Any], net: ManoNet, path: Path) -> int:
    weights = {k: v for k, v in weights.items() if isinstance(k, str) and _is_weight(v)}
    expected = sum(1 for k in net.state_dict() if is_backbone(k))
    try:
        n = transfer_backbone(weights, net)
    except ValueError:
        raise CheckpointError(f"{path}: no tensor matches the {net.arch} backbone by name and "
                              f"shape (0 of {expected} transferred): not a backbone of this "
                              f"architecture") from None
    if n < expected:
        raise CheckpointError(f"{path}: only {n} of {expected} {net.arch} backbone tensors match "
                              f"by name and shape (another architecture? set model.arch)")
    bad = next((k for k, v in net.state_dict().items() if is_backbone(k)
                and v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{path}: backbone tensor '{bad}' has NaN or infinite values")
    return n


def backbone_modules(net: ManoNet) -> list[nn.Module]:
    return [getattr(net, name) for name in ("conv1", "bn1", "layer1", "layer2", "layer3",
                                            "layer4")]


def apply_freeze(net: ManoNet, freeze: Freeze) -> None:
    """``all``: no backbone parameter trains; ``conv``: conv weights do not, BN affine does."""
    if freeze == "none":
        return
    for module in backbone_modules(net):
        for m in module.modules():
            frozen = freeze == "all" or isinstance(m, nn.Conv2d)
            for p in m.parameters(recurse=False):
                p.requires_grad_(not frozen)


def set_training(net: ManoNet, freeze: Freeze, training: bool = True) -> None:
    """``net.train(training)``, except that a fully frozen backbone keeps BN in eval mode, so its
    running statistics never change (Ours-Fixed)."""
    net.train(training)
    if freeze == "all":
        for module in backbone_modules(net):
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
