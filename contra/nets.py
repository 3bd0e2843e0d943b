"""Networks: ResNet backbone, the MoCo ``embed`` net and the ``mano`` regressor, checkpoint I/O.

Spec: ``hanco-freihand.md`` §3, spec README decision 4, ``moco.md`` §5.2.

Backbone
    torchvision's ResNet builder with ``replace_stride_with_dilation=[False, False, dilate_last]``
    (layer4 stride 1, dilation 2, output stride 16: 224 px → 14×14, 112 px → 7×7), BatchNorm
    momentum 0.05 on every BatchNorm, ``fc`` replaced by ``Identity`` so the module returns the
    globally pooled feature (2048-d for resnet50/101/152, 512-d for resnet18/34). torchvision's
    init (Kaiming-normal fan-out convs, BN weight 1 / bias 0) is contra-hand's
    N(0, √(2/(k·k·C_out))).
    **resnet18/34 (BasicBlock) cannot dilate in torchvision**, so for them ``dilate_last`` is
    ignored and layer4 keeps its stride 2 (output stride 32: 224 px → 7×7, 112 px → 4×4). These
    small backbones are for CPU tests and demos only.

Key layout
    :class:`EmbedNet` and :class:`ManoNet` hold the backbone modules at top level, so their
    ``state_dict`` keys are contra-hand's: ``conv1.weight``, ``bn1.*``, ``layer1..4.*`` then the
    head (``fc``/``fc2`` for embed, ``fc1``/``fc2``/``fc3`` for mano). An EmbedNet state dict is
    strictly loadable from ``ckpt/model_moco.pth``.

Conversions
    :func:`export_torchvision` → a torchvision ResNet state dict without ``fc`` (``moco.md`` §5.2),
    :func:`export_contra_hand` → the contra-hand embed layout, :func:`transfer_backbone` → the
    MoCo → MANO transfer (every key whose name and shape match; raises if none match, pitfall 20).
    All three accept ``module.``-, ``encoder_q.``-, ``module.encoder_q.``- or ``model.``-prefixed
    state dicts (DDP/MoCo checkpoints, contra-hand's MANO wrapper); MoCo's ``encoder_k`` and
    ``queue`` entries are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchvision
from torch import Tensor, nn

#: Top-level module names of a torchvision ResNet that carry parameters, ``fc`` excluded.
BACKBONE_KEYS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
#: Parameter-free modules of the backbone, in forward order around the layers.
_STEM = ("conv1", "bn1", "relu", "maxpool")
_LAYERS = ("layer1", "layer2", "layer3", "layer4")

_ARCHS = {
    "resnet18": (torchvision.models.resnet18, False),
    "resnet34": (torchvision.models.resnet34, False),
    "resnet50": (torchvision.models.resnet50, True),
    "resnet101": (torchvision.models.resnet101, True),
    "resnet152": (torchvision.models.resnet152, True),
}

MANO_DIM = 61
#: ``imagenet``: torchvision's 7×7 stride-2 conv + max-pool (the paper's); ``small``: MoCo's
#: CIFAR-demo stem, a 3×3 stride-1 conv and no max-pool, for images of 32–64 px. A ``small``
#: backbone is not a standard torchvision ResNet (conv1 is 3×3): its exports say so.
STEMS = ("imagenet", "small")


def build_backbone(
    arch: str = "resnet50", dilate_last: bool = True, bn_momentum: float = 0.05,
    stem: str = "imagenet",
) -> tuple[nn.Module, int]:
    """A torchvision ResNet with ``fc = Identity`` and its pooled feature size.

    ``dilate_last`` makes layer4 stride 1 / dilation 2 for Bottleneck nets (resnet50/101/152); for
    resnet18/34 it is ignored (torchvision's BasicBlock does not support dilation) and layer4 keeps
    stride 2. ``bn_momentum`` is set on every BatchNorm (PyTorch convention: 0.05 = contra-hand).
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(_ARCHS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
    builder, can_dilate = _ARCHS[arch]
    net = builder(
        weights=None, replace_stride_with_dilation=[False, False, dilate_last and can_dilate]
    )
    if stem == "small":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = bn_momentum
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feat_dim


class _Backbone(nn.Module):
    """Base: the ResNet's modules as direct attributes (keys without prefix), ``features(x)``."""

    def __init__(self, arch: str, dilate_last: bool, bn_momentum: float,
                 stem: str = "imagenet") -> None:
        super().__init__()
        resnet, self.feat_dim = build_backbone(arch, dilate_last, bn_momentum, stem)
        self.arch, self.stem = arch, stem
        for name in (*_STEM, *_LAYERS, "avgpool"):
            setattr(self, name, getattr(resnet, name))

    def features(self, x: Tensor) -> Tensor:
        """Globally average-pooled layer4 feature, shape (B, feat_dim)."""
        for name in (*_STEM, *_LAYERS):
            x = getattr(self, name)(x)
        return torch.flatten(self.avgpool(x), 1)


class EmbedNet(_Backbone):
    """MoCo encoder (contra-hand ``head_type='embed'``): fc → Dropout(0.5) → ReLU → fc2 (``dim``).

    No L2 normalisation inside (MoCo normalises outside). With resnet50, ``state_dict`` keys and
    shapes are exactly those of contra-hand's ``model_moco.pth`` (``fc`` [2048, 2048], ``fc2``
    [128, 2048]).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        dim: int = 128,
        dilate_last: bool = True,
        bn_momentum: float = 0.05,
        dropout: float = 0.5,
        stem: str = "imagenet",
        head_bn: bool = False,
    ) -> None:
        super().__init__(arch, dilate_last, bn_momentum, stem)
        self.fc = nn.Linear(self.feat_dim, self.feat_dim)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(self.feat_dim, dim)
        self.head_bn = head_bn
        if head_bn:  # MoCo v3 / SimCLR: BN after each fc, the last one without affine
            self.fc_bn = nn.BatchNorm1d(self.feat_dim, momentum=bn_momentum)
            self.out_bn = nn.BatchNorm1d(dim, affine=False, momentum=bn_momentum)

    def head(self, feat: Tensor) -> Tensor:
        if not self.head_bn:
            return self.fc2(torch.relu(self.drop(self.fc(feat))))
        return self.out_bn(self.fc2(torch.relu(self.drop(self.fc_bn(self.fc(feat))))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ManoNet(_Backbone):
    """MANO regressor (contra-hand ``head_type='mano'``): raw 61-d output before ``apply_scaling``.

    fc1 → ReLU → Dropout(0.5) → fc2 → ReLU → Dropout(0.5) → fc3 (61). fc3 is Xavier-normal with
    gain 0.01 and bias U(−0.01, 0.01), so the initial output is ≈ 0 (the mean hand after scaling).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        out_dim: int = MANO_DIM,
        dilate_last: bool = True,
        bn_momentum: float = 0.05,
        dropout: float = 0.5,
        stem: str = "imagenet",
    ) -> None:
        super().__init__(arch, dilate_last, bn_momentum, stem)
        d = self.feat_dim
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)
        self.fc3 = nn.Linear(d, out_dim)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_normal_(self.fc3.weight, gain=0.01)
        nn.init.uniform_(self.fc3.bias, -0.01, 0.01)

    def head(self, feat: Tensor) -> Tensor:
        h = self.drop(torch.relu(self.fc1(feat)))
        h = self.drop(torch.relu(self.fc2(h)))
        return self.fc3(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _strip_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop an optional ``module.``, then keep ``encoder_q.*`` (if any) or strip ``model.``."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("encoder_q.") for k in sd):
        return {
            k.removeprefix("encoder_q."): v for k, v in sd.items() if k.startswith("encoder_q.")
        }
    if sd and all(k.startswith("model.") for k in sd if not k.startswith("mano.")):
        return {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    return sd


def is_backbone(key: str) -> bool:
    return key.split(".", 1)[0] in BACKBONE_KEYS


def export_torchvision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Backbone-only torchvision ResNet state dict (no ``fc``), as ``moco.md`` §5.2.

    Loading it into the matching ``torchvision.models.resnetXX()`` with ``strict=False`` leaves
    exactly ``fc.weight`` and ``fc.bias`` missing and nothing unexpected.
    """
    out = {k: v for k, v in _strip_prefix(state_dict).items() if is_backbone(k)}
    if not out:
        raise ValueError("no backbone keys (conv1/bn1/layer1-4) found in the state dict")
    return out


def export_contra_hand(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """contra-hand ``model_moco.pth`` layout: backbone + ``fc.*`` + ``fc2.*``, no prefix.

    Accepts an EmbedNet state dict, its MoCo-prefixed form, or a MoCo v2 MLP head stored as
    ``fc.0.*`` / ``fc.2.*`` (renamed to ``fc.*`` / ``fc2.*``). The result loads strictly into
    :class:`EmbedNet`.
    """
    sd = _strip_prefix(state_dict)
    renamed = {}
    for k, v in sd.items():
        if k.startswith("fc.0."):
            k = "fc." + k.removeprefix("fc.0.")
        elif k.startswith("fc.2."):
            k = "fc2." + k.removeprefix("fc.2.")
        renamed[k] = v
    out = {k: v for k, v in renamed.items() if is_backbone(k)}
    for name in ("fc.weight", "fc.bias", "fc2.weight", "fc2.bias"):
        if name not in renamed:
            raise ValueError(f"embed head key {name!r} missing from the state dict")
        out[name] = renamed[name]
    return out


#: ``contra export --format`` name → conversion of a (MoCo) state dict.
EXPORTS = {"torchvision": export_torchvision, "contra-hand": export_contra_hand}


def transfer_backbone(src_state: Mapping[str, Tensor], dst_model: nn.Module) -> int:
    """Copy every ``src_state`` entry whose name and shape match one of ``dst_model``'s.

    The MoCo → MANO transfer (``hanco-freihand.md`` §3.5): only the backbone matches (embed ``fc2``
    [128, 2048] ≠ mano ``fc2`` [2048, 2048]; embed ``fc`` has no mano counterpart). Prefixes are
    stripped as in :func:`export_torchvision`. Returns the number of copied entries and raises
    ``ValueError`` if none matched (a non-strict load can silently load nothing, pitfall 20).
    """
    src = _strip_prefix(src_state)
    dst = dst_model.state_dict()
    clash = [k for k in src if is_backbone(k) and k in dst and dst[k].shape != src[k].shape]
    if clash:  # e.g. a small-stem encoder into an imagenet-stem regressor: never half a backbone
        raise ValueError(f"transfer_backbone: backbone key {clash[0]!r} has shape "
                         f"{tuple(src[clash[0]].shape)} in the source but "
                         f"{tuple(dst[clash[0]].shape)} in {type(dst_model).__name__} "
                         f"(a different arch or model.stem?)")
    matched = {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}
    if not matched:
        raise ValueError(
            f"transfer_backbone: no key of the source ({len(src)} keys) matches "
            f"{type(dst_model).__name__} by name and shape"
        )
    result = dst_model.load_state_dict(matched, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return len(matched)
