"""Typed configs: strict keys, types, required fields, dotted overrides, saved resolved config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from contra.config import (
    ConfigError,
    load_config,
    parse_overrides,
    read_tree,
    save_config,
    to_dict,
)


@dataclass
class Optim:
    lr: float = 0.015
    schedule: Literal["cosine", "step"] = "cosine"
    milestones: list[int] = field(default_factory=lambda: [120, 160])


@dataclass
class Run:
    name: str  # required
    epochs: int = 100
    amp: bool = False
    data_root: Path | None = None
    crop: tuple[int, int] = (112, 112)
    optim: Optim = field(default_factory=Optim)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_loads_nested_values_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(Run, _yaml(tmp_path, "name: a\noptim:\n  lr: 1\n  schedule: step\n"))
    assert cfg == Run(name="a", optim=Optim(lr=1.0, schedule="step"))
    assert isinstance(cfg.optim.lr, float)


def test_overrides_take_precedence_and_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "name: a\nepochs: 5\n")
    cfg = load_config(Run, path, ["epochs=7", "optim.lr=0.5", "optim.milestones=[1, 2]",
                                  "amp=true", "data_root=/data/hanco", "crop=[64, 80]"])
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.milestones, cfg.amp) == (7, 0.5, [1, 2], True)
    assert cfg.data_root == Path("/data/hanco") and cfg.crop == (64, 80)
    assert load_config(Run, None, ["name=x"]).name == "x"


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("name: a\noptim:\n  lrr: 1\n", [], r"run.yaml: unknown key 'optim.lrr'"),
    ("name: a\nepochs: ten\n", [], r"run.yaml: 'epochs': expected int, got str"),
    ("name: a\nepochs: 1.5\n", [], r"'epochs': expected int, got float"),
    ("name: a\namp: 1\n", [], r"'amp': expected bool, got int"),
    ("name: a\noptim:\n  schedule: linear\n", [], r"'optim.schedule': expected one of"),
    ("name: a\noptim:\n  milestones: [1, x]\n", [], r"'optim.milestones\[1\]': expected int"),
    ("name: a\noptim: 3\n", [], r"optim: expected a mapping"),
    ("name: a\ncrop: [1, 2, 3]\n", [], r"'crop': expected tuple"),
    ("epochs: 3\n", [], r"run.yaml: missing required key 'name'"),
    ("name: a\n", ["optim.momentum=0.9"], r"command line override 'optim.momentum': unknown key"),
    ("name: a\n", ["epochs=abc"], r"command line override 'epochs': 'epochs': expected int"),
    ("name: a\noptim:\n  milestones: [1]\n", ["optim.milestones=[1, x]"],
     r"^command line override 'optim.milestones': 'optim.milestones\[1\]': expected int"),
    ("name: a\n", ["epochs"], r"override 'epochs' is not of the form key.sub=value"),
    ("name: [a\n", [], r"run.yaml: malformed YAML at line 2"),
    ("- a\n- b\n", [], r"run.yaml: top level must be a mapping"),
])
def test_errors_are_one_line_and_name_file_and_key(tmp_path: Path, text: str,
                                                   overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Run, _yaml(tmp_path, text), overrides)
    assert "\n" not in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read config"):
        load_config(Run, tmp_path / "nope.yaml")


def test_save_round_trip(tmp_path: Path) -> None:
    cfg = load_config(Run, None, ["name=r", "data_root=/x", "optim.lr=0.1"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert yaml.safe_load(path.read_text()) == to_dict(cfg)
    assert load_config(Run, path) == cfg
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_parse_overrides_keeps_plain_strings() -> None:
    assert parse_overrides(["a=hello world", "b=", "c=0.5", "d=null"]) == {
        "a": "hello world", "b": "", "c": 0.5, "d": None}


def test_exponent_floats_without_dot(tmp_path: Path) -> None:
    """YAML 1.1 reads '1e-3' as a string; float fields still accept it, int fields do not."""
    cfg = load_config(Run, _yaml(tmp_path, "name: a\noptim:\n  lr: 1e-4\n"), ["optim.lr=1e-3"])
    assert cfg.optim.lr == 1e-3
    with pytest.raises(ConfigError, match="expected int"):
        load_config(Run, _yaml(tmp_path, "name: a\nepochs: 1e3\n"))


def test_shipped_configs_load() -> None:
    """Every YAML under configs/ loads into the dataclass it is written for."""
    from contra.demo import DemoConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    assert load_config(DemoConfig, root / "demo.yaml") == DemoConfig()  # file documents defaults
    from contra.data.synth.generate import SynthConfig
    from contra.pairs import PairConfig

    assert load_config(SynthConfig, root / "synth.yaml") == SynthConfig()
    for name in ("augmentation", "background", "temporal", "multiview"):
        assert load_config(PairConfig, root / "pairs" / f"{name}.yaml").strategies in (
            [name], (name,))
    assert set(load_config(PairConfig, root / "pairs" / "all.yaml").strategies) == {
        "multiview", "temporal", "background"}


# ---------------------------------------------------------------------------------- extends
def _files(tmp_path: Path, **texts: str) -> Path:
    """Write ``name=text`` files (``__`` in a name: a folder, ``_`` before ``yaml``: a dot)."""
    for name, text in texts.items():
        path = tmp_path / name.replace("__", "/").replace("_yaml", ".yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


BASE = "name: base\nepochs: 5\ncrop: [64, 64]\noptim:\n  lr: 0.1\n  milestones: [1, 2, 3]\n"


def test_extends_deep_merges_over_the_base(tmp_path: Path) -> None:
    _files(tmp_path, base_yaml=BASE,
           run_yaml="extends: base.yaml\nname: run\noptim:\n  schedule: step\n  milestones: [9]\n")
    cfg = load_config(Run, tmp_path / "run.yaml")
    # mappings merge key by key (optim.lr kept); lists and scalars replace (milestones, name)
    assert cfg == Run(name="run", epochs=5, crop=(64, 64),
                      optim=Optim(lr=0.1, schedule="step", milestones=[9]))
    assert not hasattr(cfg, "extends")


def test_extends_chains_and_paths_are_relative_to_the_naming_file(tmp_path: Path) -> None:
    _files(tmp_path, root_yaml="name: root\namp: true\n",
           shared__base_yaml="extends: ../root.yaml\nepochs: 7\noptim:\n  lr: 0.5\n",
           shared__runs__run_yaml="extends: ../base.yaml\nname: run\n")
    cfg = load_config(Run, tmp_path / "shared" / "runs" / "run.yaml")
    assert (cfg.name, cfg.amp, cfg.epochs, cfg.optim.lr) == ("run", True, 7, 0.5)
    absolute = _files(tmp_path, abs_yaml=f"extends: {tmp_path / 'root.yaml'}\nepochs: 2\n")
    assert load_config(Run, absolute / "abs.yaml") == Run(name="root", amp=True, epochs=2)


def test_overrides_apply_over_the_merged_files(tmp_path: Path) -> None:
    _files(tmp_path, base_yaml=BASE, run_yaml="extends: base.yaml\nepochs: 6\n")
    cfg = load_config(Run, tmp_path / "run.yaml", ["epochs=8", "optim.lr=0.25"])
    assert (cfg.name, cfg.epochs, cfg.optim.lr, cfg.optim.milestones) == ("base", 8, 0.25,
                                                                        [1, 2, 3])
    with pytest.raises(ConfigError, match=r"^command line override 'extends': unknown key"):
        load_config(Run, tmp_path / "run.yaml", ["extends=other.yaml"])  # files only


def _one_line_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(Run, path, overrides or [])
    assert "\n" not in str(info.value)
    return str(info.value)


def test_extends_cycles_are_one_line_naming_the_file_and_key(tmp_path: Path) -> None:
    _files(tmp_path, a_yaml="extends: b.yaml\nname: a\n", b_yaml="extends: sub/../a.yaml\n",
           self_yaml="extends: self.yaml\nname: s\n")
    (tmp_path / "sub").mkdir()  # the spelling differs, the file is the same
    msg = _one_line_error(tmp_path / "a.yaml")
    assert msg.startswith(f"{tmp_path / 'b.yaml'}: 'extends': cycle of extended files (")
    assert msg.endswith(f"a.yaml -> {tmp_path / 'b.yaml'} -> {tmp_path / 'sub/../a.yaml'})")
    assert _one_line_error(tmp_path / "self.yaml").startswith(
        f"{tmp_path / 'self.yaml'}: 'extends': cycle")


@pytest.mark.parametrize(("value", "needle"), [
    ("missing.yaml", "cannot read base config {dir}/missing.yaml (no such file)"),
    ("sub", "cannot read base config {dir}/sub (not a file)"),
    ("x" * 300 + ".yaml", "cannot read base config {dir}/" + "x" * 300),
    ("'a\\0b'", "cannot read base config"),
    ("3", "expected a base config's path (a non-empty str), got int (3)"),
    ("''", "got str ('')"), ("null", "got NoneType (None)"), ("[a.yaml]", "got list"),
])
def test_bad_extends_is_one_line_naming_the_file_and_key(tmp_path: Path, value: str,
                                                        needle: str) -> None:
    (tmp_path / "sub").mkdir()
    run = _files(tmp_path, run_yaml=f"name: a\nextends: {value}\n") / "run.yaml"
    msg = _one_line_error(run)
    assert msg.startswith(f"{run}: 'extends': ") and needle.format(dir=tmp_path) in msg, msg


def test_errors_from_a_base_name_the_base_file(tmp_path: Path) -> None:
    _files(tmp_path, base_yaml="name: b\noptim:\n  lrr: 1\n", run_yaml="extends: base.yaml\n",
           typed_yaml="name: b\nepochs: ten\noptim:\n  milestones: [1, x]\n",
           mid_yaml="extends: typed.yaml\ncrop: [1, 2]\n",
           top_yaml="extends: mid.yaml\nepochs: 3\namp: 1\n",
           broken_yaml="name: [a\n", uses_broken_yaml="extends: broken.yaml\n")
    base, top = tmp_path / "base.yaml", tmp_path / "top.yaml"
    assert _one_line_error(tmp_path / "run.yaml").startswith(f"{base}: unknown key 'optim.lrr'")
    # the key's own file: top sets amp, typed sets milestones (epochs: top's 3 replaced 'ten')
    assert _one_line_error(top).startswith(f"{top}: 'amp': expected bool")
    msg = _one_line_error(top, ["amp=true"])
    assert msg.startswith(f"{tmp_path / 'typed.yaml'}: 'optim.milestones[1]': expected int"), msg
    assert _one_line_error(top, ["amp=true", "optim.milestones=[1, y]"]).startswith(
        "command line override 'optim.milestones'")  # an override is still named as one
    assert _one_line_error(tmp_path / "uses_broken.yaml").startswith(
        f"{tmp_path / 'broken.yaml'}: malformed YAML at line 2")
    missing = _files(tmp_path, noname_yaml="epochs: 1\n", kid_yaml="extends: noname.yaml\n")
    assert _one_line_error(missing / "kid.yaml").startswith(
        f"{missing / 'kid.yaml'}: missing required key 'name'")  # the file that was loaded


def test_saved_config_is_the_merged_one_without_extends(tmp_path: Path) -> None:
    _files(tmp_path, base_yaml=BASE, run_yaml="extends: base.yaml\nname: run\n")
    cfg = load_config(Run, tmp_path / "run.yaml", ["amp=true"])
    saved = yaml.safe_load(save_config(cfg, tmp_path / "out" / "config.yaml").read_text())
    assert "extends" not in saved and saved["optim"]["milestones"] == [1, 2, 3]
    assert saved["name"] == "run" and saved["amp"] is True
    assert load_config(Run, tmp_path / "out" / "config.yaml") == cfg  # self-contained
    assert read_tree(tmp_path / "run.yaml") == {**yaml.safe_load(BASE), "name": "run"}


CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# what every paper config resolved to before they extended base.yaml (issue 14), key by key
PRETRAIN_RECIPE = {
    "data_root": "data/HanCo", "epochs": 100, "batch_size": 128, "workers": 8, "seed": 0,
    "pairs.augmentation": "mocov2", "model.arch": "resnet50", "model.dim": 128,
    "model.dilate_last": True, "model.key_bn_splits": 0, "moco.queue_size": 65536,
    "moco.momentum": 0.999, "moco.temperature": 0.2, "optim.lr": 0.015,
    "optim.reference_batch": 128, "optim.momentum": 0.9, "optim.weight_decay": 0.0001,
    "optim.schedule": "cosine-epoch", "checkpoint.every_steps": 500,
    "checkpoint.keep_every": 5000, "tracking.tracking_uri": None,
    "tracking.experiment": "contra-pretrain", "monitor.every_epochs": 5, "monitor.frames": 512}
FINETUNE_RECIPE = {
    "epochs": 0, "max_steps": 500000, "batch_size": 16, "workers": 8, "seed": 0,
    "mano_root": None, "data.source": "freihand", "data.root": "data/FreiHAND_pub_v2",
    "data.versions": ["gs", "hom", "sample", "auto"], "data.image_size": 224,
    "data.augment": True, "data.zoom": [0.8, 1.0], "data.translate": 0.05,
    "data.color_jitter": 0.0, "model.arch": "resnet50", "model.dilate_last": True,
    "model.dropout": 0.5, "loss.w_xyz": 1000.0, "loss.w_uv": 10.0, "loss.w_theta": 1.0,
    "loss.norm": "l2", "loss.root_relative": True, "optim.name": "adam", "optim.lr": 0.0001,
    "optim.milestones": [0.44, 0.68], "optim.gamma": 0.5, "eval.every_steps": 10000,
    "eval.batch_size": 64, "checkpoint.every_steps": 5000, "checkpoint.at_epoch_end": False,
    "tracking.tracking_uri": None, "tracking.experiment": "contra-finetune"}
MOCO = "runs/pretrain-multiview/checkpoints/last.pt"
FINETUNE_ROWS = {  # row -> (data.normalisation, init.mode, init.weights, init.freeze)
    "scratch": ("contra", "scratch", None, "none"), "imagenet": ("imagenet", "imagenet", None,
                                                                 "none"),
    "fixed": ("contra", "moco", MOCO, "all"), "fixed-bn": ("contra", "moco", MOCO, "conv"),
    "full": ("contra", "moco", MOCO, "none")}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _differs_only_in(got: dict, recipe: dict, own: dict) -> None:
    flat = _flat(got)
    assert {k: flat[k] for k in recipe} == recipe
    assert {k: flat[k] for k in own} == own


@pytest.mark.parametrize("name", ["augmentation", "background", "temporal", "multiview"])
def test_paper_pretrain_configs_resolve_as_before(name: str) -> None:
    from contra.pretrain import PretrainConfig

    path = CONFIGS / "pretrain" / f"{name}.yaml"
    assert set(yaml.safe_load(path.read_text())) == {"extends", "run_dir", "pairs"}
    cfg = to_dict(load_config(PretrainConfig, path))
    _differs_only_in(cfg, PRETRAIN_RECIPE, {"run_dir": f"runs/pretrain-{name}",
                                            "pairs.strategies": [name]})
    default = to_dict(PretrainConfig())  # what the base leaves alone stays at the defaults
    flat, flat_default = _flat(cfg), _flat(default)
    assert {k for k in flat if flat[k] != flat_default[k]} <= {
        *PRETRAIN_RECIPE, "run_dir", "pairs.strategies"}


@pytest.mark.parametrize("row", list(FINETUNE_ROWS))
def test_paper_finetune_configs_resolve_as_before(row: str) -> None:
    from contra.finetune import FinetuneConfig

    norm, mode, weights, freeze = FINETUNE_ROWS[row]
    cfg = to_dict(load_config(FinetuneConfig, CONFIGS / "finetune" / f"{row}.yaml"))
    own = {"run_dir": f"runs/finetune-{row}", "data.normalisation": norm, "init.mode": mode,
           "init.weights": weights, "init.freeze": freeze}
    _differs_only_in(cfg, FINETUNE_RECIPE, own)
    flat, flat_default = _flat(cfg), _flat(to_dict(FinetuneConfig()))
    assert {k for k in flat if flat[k] != flat_default[k]} <= {*FINETUNE_RECIPE, *own}
