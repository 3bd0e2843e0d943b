"""Typed configs: strict keys, types, required fields, dotted overrides, saved resolved config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from contra.config import ConfigError, load_config, parse_overrides, save_config, to_dict


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
