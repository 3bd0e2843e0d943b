"""Tests for contra.nets: shapes, BN momentum, contra-hand key layout, heads, exports, transfer."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from contra.nets import (
    EmbedNet,
    ManoNet,
    build_backbone,
    export_contra_hand,
    export_torchvision,
    transfer_backbone,
)


@pytest.fixture(scope="module")
def embed50() -> EmbedNet:
    """The one resnet50 EmbedNet of the module (construction is the slow part)."""
    torch.manual_seed(0)
    return EmbedNet("resnet50").eval()


@pytest.fixture(scope="module")
def embed18() -> EmbedNet:
    torch.manual_seed(1)
    return EmbedNet("resnet18").eval()


def _contra_hand_keys() -> list[str]:
    """model_moco.pth's keys, written out from hanco-freihand.md §3.5 (not from torchvision)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", *(f"bn1.{s}" for s in bn)]
    for li, n in enumerate((3, 4, 6, 3), start=1):
        for i in range(n):
            p = f"layer{li}.{i}"
            for c in (1, 2, 3):
                keys.append(f"{p}.conv{c}.weight")
                keys += [f"{p}.bn{c}.{s}" for s in bn]
            if i == 0:
                keys.append(f"{p}.downsample.0.weight")
                keys += [f"{p}.downsample.1.{s}" for s in bn]
    return [*keys, "fc.weight", "fc.bias", "fc2.weight", "fc2.bias"]


def _layer4_hw(net: nn.Module, size: int) -> tuple[tuple[int, int], torch.Tensor]:
    seen = {}

    def hook(module, inputs, output):
        seen["hw"] = output.shape[-2:]  # returns None: the output is left unchanged

    handle = net.layer4.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = net(torch.rand(1, 3, size, size) - 0.5)
    finally:
        handle.remove()
    return tuple(seen["hw"]), out


# --- backbone -------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "hw"), [(224, (14, 14)), (112, (7, 7))])
def test_resnet50_dilated_layer4_output_stride_16(embed50, size, hw):
    got, out = _layer4_hw(embed50, size)
    assert got == hw
    assert out.shape == (1, 128)


def test_resnet50_dilation_config():
    net, dim = build_backbone("resnet50")
    assert dim == 2048
    assert isinstance(net.fc, nn.Identity)
    b0, b1 = net.layer4[0], net.layer4[1]
    assert b0.conv2.stride == (1, 1) and b0.conv2.dilation == (1, 1)
    assert b0.downsample[0].stride == (1, 1)
    assert b1.conv2.dilation == (2, 2) and b1.conv2.padding == (2, 2)
    assert net.layer3[0].conv2.stride == (2, 2)  # layers 1-3 unchanged
    plain, _ = build_backbone("resnet50", dilate_last=False)
    assert plain.layer4[0].conv2.stride == (2, 2)


def test_backbone_outputs_pooled_feature():
    net, dim = build_backbone("resnet18")
    assert dim == 512
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_resnet18_falls_back_to_stride_2(embed18):
    # BasicBlock cannot dilate in torchvision: layer4 keeps stride 2 (112 → 4×4, 224 → 7×7).
    assert _layer4_hw(embed18, 112)[0] == (4, 4)
    assert _layer4_hw(embed18, 224)[0] == (7, 7)


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="unknown arch"):
        build_backbone("vgg16")


@pytest.mark.parametrize(
    "make", [lambda: build_backbone("resnet18")[0], lambda: ManoNet("resnet18")]
)
def test_bn_momentum_everywhere(make, embed50):
    for net in (make(), embed50):
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(bns) > 10
        assert all(m.momentum == 0.05 for m in bns)
    custom, _ = build_backbone("resnet18", bn_momentum=0.2)
    assert all(m.momentum == 0.2 for m in custom.modules() if isinstance(m, nn.BatchNorm2d))


# --- key layout -----------------------------------------------------------------------------


def test_embed_keys_equal_contra_hand(embed50):
    sd = embed50.state_dict()
    assert list(sd) == _contra_hand_keys()
    assert sd["fc.weight"].shape == (2048, 2048)
    assert sd["fc.bias"].shape == (2048,)
    assert sd["fc2.weight"].shape == (128, 2048)
    assert sd["fc2.bias"].shape == (128,)


def test_mano_keys():
    sd = ManoNet("resnet18").state_dict()
    head = [k for k in sd if k.startswith("fc")]
    assert head == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert sd["fc1.weight"].shape == (512, 512)
    assert sd["fc3.weight"].shape == (61, 512)
    tv = torchvision.models.resnet18().state_dict()
    assert [k for k in sd if not k.startswith("fc")] == [k for k in tv if not k.startswith("fc")]


# --- heads ----------------------------------------------------------------------------------


def test_fc3_init_gives_near_zero_output():
    torch.manual_seed(0)
    net = ManoNet("resnet18").eval()
    fan_in, fan_out = 512, 61
    assert net.fc3.weight.std().item() == pytest.approx(
        0.01 * (2 / (fan_in + fan_out)) ** 0.5, rel=0.1
    )
    assert net.fc3.bias.abs().max().item() <= 0.01
    with torch.no_grad():
        out = net(torch.rand(4, 3, 112, 112) - 0.5)
        feat = torch.relu(torch.randn(64, 512)) * 3  # a generous feature scale
        out_feat = net.head(feat)
        # the same head with PyTorch's default fc3 init is not near zero: the test discriminates
        default = nn.Linear(512, 61)
        out_default = default(net.drop(torch.relu(net.fc2(net.drop(torch.relu(net.fc1(feat)))))))
    assert out.shape == (4, 61)
    assert out.abs().max().item() < 0.05
    assert out_feat.abs().max().item() < 0.05
    assert out_default.abs().max().item() > 0.05


def test_embed_dropout_active_only_in_train(embed18):
    x = torch.rand(2, 3, 64, 64) - 0.5
    with torch.no_grad():
        feat = embed18.features(x)
        embed18.train()
        try:
            a, b = embed18.head(feat), embed18.head(feat)
        finally:
            embed18.eval()
        c, d = embed18.head(feat), embed18.head(feat)
    assert not torch.equal(a, b)
    assert torch.equal(c, d)
    assert embed18.drop.p == 0.5


def test_resnet18_end_to_end(embed18):
    torch.manual_seed(2)
    mano = ManoNet("resnet18")
    n = transfer_backbone(embed18.state_dict(), mano)
    x = torch.rand(3, 3, 112, 112) - 0.5
    mano.train()
    out = mano(x)
    out.square().sum().backward()
    assert out.shape == (3, 61)
    assert mano.conv1.weight.grad is not None and mano.fc3.weight.grad is not None
    with torch.no_grad():
        z = nn.functional.normalize(embed18(x), dim=1)
    assert z.shape == (3, 128)
    assert n > 0


# --- exports --------------------------------------------------------------------------------


def _check_torchvision_load(tv: nn.Module, exported: dict, source: dict) -> None:
    res = tv.load_state_dict(exported, strict=False)
    assert res.unexpected_keys == []
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"]
    tv_sd = tv.state_dict()
    for k in exported:
        assert torch.equal(tv_sd[k], source[k]), k


def test_export_torchvision_resnet50(embed50):
    sd = embed50.state_dict()
    exported = export_torchvision(sd)
    assert not any(k.startswith("fc") for k in exported)
    _check_torchvision_load(torchvision.models.resnet50(), exported, sd)


def test_export_torchvision_moco_prefixed_resnet18(embed18):
    sd = embed18.state_dict()
    moco = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    moco |= {f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in sd.items()}
    moco |= {"module.queue": torch.zeros(128, 16), "module.queue_ptr": torch.zeros(1)}
    exported = export_torchvision(moco)
    assert set(exported) == {k for k in sd if not k.startswith("fc")}
    _check_torchvision_load(torchvision.models.resnet18(), exported, sd)  # encoder_q, not _k
    # without DDP: encoder_q.* only (moco#84)
    assert set(export_torchvision({f"encoder_q.{k}": v for k, v in sd.items()})) == set(exported)


def test_export_torchvision_rejects_foreign_dict():
    with pytest.raises(ValueError, match="no backbone keys"):
        export_torchvision({"foo.weight": torch.zeros(1)})


def test_export_contra_hand_round_trip(embed18):
    sd = embed18.state_dict()
    moco = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    moco |= {f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in sd.items()}
    exported = export_contra_hand(moco)
    assert list(exported) == list(sd)
    fresh = EmbedNet("resnet18")
    fresh.load_state_dict(exported, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_export_contra_hand_from_mocov2_mlp_names(embed18):
    sd = embed18.state_dict()
    mlp = {k: v for k, v in sd.items() if not k.startswith("fc")}
    mlp |= {"fc.0.weight": sd["fc.weight"], "fc.0.bias": sd["fc.bias"]}
    mlp |= {"fc.2.weight": sd["fc2.weight"], "fc.2.bias": sd["fc2.bias"]}
    exported = export_contra_hand({f"encoder_q.{k}": v for k, v in mlp.items()})
    EmbedNet("resnet18").load_state_dict(exported, strict=True)
    assert torch.equal(exported["fc2.weight"], sd["fc2.weight"])
    with pytest.raises(ValueError, match=r"fc2\.weight"):
        export_contra_hand({k: v for k, v in sd.items() if k != "fc2.weight"})


# --- transfer -------------------------------------------------------------------------------


def test_transfer_copies_backbone_only(embed18):
    torch.manual_seed(3)
    mano = ManoNet("resnet18")
    before = {k: v.clone() for k, v in mano.state_dict().items()}
    src = embed18.state_dict()
    n = transfer_backbone({f"module.encoder_q.{k}": v for k, v in src.items()}, mano)
    backbone = [k for k in src if not k.startswith("fc")]
    assert n == len(backbone)  # embed fc2 [128, 512] does not match mano fc2 [512, 512]
    after = mano.state_dict()
    for k in backbone:
        assert torch.equal(after[k], src[k]), k
    for k in ("fc1.weight", "fc2.weight", "fc3.weight", "fc3.bias"):
        assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])


def test_transfer_skips_shape_mismatch(embed18):
    mano = ManoNet("resnet18")
    src = {"conv1.weight": torch.ones(64, 3, 7, 7), "fc2.weight": torch.ones(128, 512)}
    assert transfer_backbone(src, mano) == 1
    assert torch.equal(mano.conv1.weight, torch.ones(64, 3, 7, 7))
    assert not torch.equal(mano.fc2.weight[:128], torch.ones(128, 512))


def test_transfer_raises_on_zero_matches():
    mano = ManoNet("resnet18")
    with pytest.raises(ValueError, match="no key"):
        transfer_backbone({"encoder.conv1.weight": torch.zeros(64, 3, 7, 7)}, mano)
    with pytest.raises(ValueError, match="has shape"):  # a clash is named, not skipped
        transfer_backbone({"conv1.weight": torch.zeros(64, 3, 5, 5)}, mano)


def test_small_stem_keeps_resolution_and_refuses_a_mismatched_transfer() -> None:
    small = EmbedNet("resnet18", 16, dilate_last=False, dropout=0.0, stem="small")
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    trunk = small.layer1(small.maxpool(small.relu(small.bn1(small.conv1(x)))))
    assert trunk.shape[-1] == 32  # the imagenet stem would give 8
    assert small.features(x).shape == (2, 512)
    with pytest.raises(ValueError, match=r"conv1\.weight"):
        transfer_backbone(small.state_dict(), ManoNet("resnet18", dilate_last=False))
    assert transfer_backbone(small.state_dict(), ManoNet("resnet18", dilate_last=False,
                                                         stem="small")) > 0
    with pytest.raises(ValueError, match="unknown stem"):
        EmbedNet("resnet18", stem="cifar")
