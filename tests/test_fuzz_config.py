"""Fuzzing configs: mutated YAML files and random ``key=value`` overrides of the shipped configs.

Each stage's own loader runs (``contra.pretrain.load``, ``contra.finetune.load``: load_config plus
the stage's checks; ``load_config(DemoConfig)`` as ``contra demo`` does): it returns a config whose
floats are finite and ints fit in 64 bits, or one line names the file or the override (for a file
that ``extends`` a base: the file the bad key came from).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzzutil import JUNK, count, fuzz, mutated, mutated_text, names_one_of, outcome, scratch
from hypothesis import given
from hypothesis import strategies as st

from contra import finetune, pretrain
from contra.config import EXTENDS, load_config, read_tree
from contra.demo import DemoConfig

ROOT = Path(__file__).resolve().parents[1]


def _demo(path: Path | None, overrides: list[str]) -> DemoConfig:
    return load_config(DemoConfig, path, overrides)


# config file -> (its dataclass, the loader the command uses)
LOADERS: dict[str, tuple[type, Callable[[Path | None, list[str]], Any]]] = {
    "configs/pretrain/demo.yaml": (pretrain.PretrainConfig, pretrain.load),
    "configs/finetune/fixed.yaml": (finetune.FinetuneConfig, finetune.load),
    "configs/demo.yaml": (DemoConfig, _demo),
}
# the files' trees with their extends chains merged: a scratch copy has no base beside it
TREES = {name: read_tree(ROOT / name) for name in LOADERS}
# a config that extends a base -> that base (test_extended_file mutates both)
EXTENDED = {"configs/finetune/fixed.yaml": "configs/finetune/base.yaml"}


def dotted_keys(cls: type, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config dataclass, sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from dotted_keys(hints[f.name], f"{prefix}{f.name}.")


def sane(value: Any) -> None:
    """Every float in a loaded config is finite and every int fits in 64 bits."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            sane(getattr(value, f.name))
    elif isinstance(value, list | tuple):
        for v in value:
            sane(v)
    elif isinstance(value, dict):
        for v in value.values():
            sane(v)
    elif isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, int) and not isinstance(value, bool):
        assert -(2**63) <= value < 2**63, value


_VALUES = ["nan", ".nan", "NaN", "inf", "-inf", ".inf", "-.Inf", "1e999", "-1e999", "1.0e400",
           str(10**30), "9" * 5000, "-" + "9" * 19, "2001-13-45", "2001-01-01", "[1, 2]",
           "[0.5, nan]", "{a: 1}", "[", "{", "]", "null", "~", "", "=", "true", "no", "0x1F",
           "0o17", "1e-3", "-1", "0", "1_000", "!!python/name:os.system", "!!binary AAAA",
           "*x", "&x [*x]", "a: b", "- a", "'unterminated", "\t", "\x00", "a\nb"]


def overrides(cls: type) -> st.SearchStrategy[list[str]]:
    """Lists of override strings: real, extended and random keys; hostile YAML values."""
    keys = sorted(dotted_keys(cls))
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys).map(lambda k: f"{k}.x"),
                    st.text(max_size=10), st.sampled_from(["", ".", "a..b", " ", "x.", "=a"]))
    value = st.one_of(st.sampled_from(_VALUES), st.text(max_size=12),
                      JUNK.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
    sep = st.sampled_from(["=", "=", "=", "==", "", " = "])
    item = st.builds(lambda k, s, v: f"{k}{s}{v}", key, sep, value)
    return st.lists(item, min_size=1, max_size=4)


def _yaml_bytes(tree: Any) -> st.SearchStrategy[bytes]:
    """A mutated config tree dumped as YAML (3 in 4), or damaged YAML text."""
    text = yaml.safe_dump(tree, sort_keys=False).encode()
    dumped = mutated(tree).map(lambda t: yaml.safe_dump(t, sort_keys=False).encode())
    return st.one_of(dumped, dumped, dumped, mutated_text(text, max_nesting=600))


#: errors about the file or an override as a whole; every other error names a key
FILE_LEVEL = ("malformed YAML", "top level", "not of the form", "UTF-8", "cannot read",
              f"'{EXTENDS}'")


def _check(name: str, path: Path, extra: list[str], files: tuple[Path, ...] = ()) -> None:
    """``files``: those besides ``path`` an error may name (its bases)."""
    cls, load = LOADERS[name]
    ok, got = outcome(lambda: load(path, extra), (path, *files, "command line"))
    if ok:
        sane(got)
    else:
        assert names_one_of(got, (*_fields(cls), *FILE_LEVEL)), got


@cache
def _fields(cls: type) -> tuple[str, ...]:
    """The config's key names (last dotted component), what an error message names."""
    return tuple({k.rsplit(".", 1)[-1] for k in dotted_keys(cls)})


@pytest.mark.parametrize("name", list(LOADERS))
@fuzz(150)
@given(data=st.data())
def test_yaml_file(name: str, data: st.DataObject) -> None:
    blob = data.draw(_yaml_bytes(TREES[name]), label="yaml")
    count(f"config file {name}")
    with scratch() as d:
        path = d / "config.yaml"
        path.write_bytes(blob)
        _check(name, path, [])


@pytest.mark.parametrize("name", list(LOADERS))
@fuzz(150)
@given(data=st.data())
def test_overrides(name: str, data: st.DataObject) -> None:
    extra = data.draw(overrides(LOADERS[name][0]), label="overrides")
    count(f"config overrides {name}")
    _check(name, ROOT / name, extra)


@pytest.mark.parametrize("name", list(EXTENDED))
@fuzz(100)
@given(data=st.data())
def test_extended_file(name: str, data: st.DataObject) -> None:
    """A mutated base under the shipped file, or the file itself mutated (its ``extends`` too)."""
    own = yaml.safe_load((ROOT / name).read_text())
    base = yaml.safe_load((ROOT / EXTENDED[name]).read_text())
    child_blob = data.draw(st.one_of(st.just(yaml.safe_dump(own).encode()), _yaml_bytes(own)),
                           label="yaml")
    base_blob = data.draw(_yaml_bytes(base), label="base")
    count(f"extended config file {name}")
    with scratch() as d:
        path, base_path = d / "config.yaml", d / Path(EXTENDED[name]).name
        path.write_bytes(child_blob)
        base_path.write_bytes(base_blob)
        _check(name, path, [], (base_path,))


# inputs the fuzzing found tracebacks, multi-line messages or unchecked values for (now fixed)
FOUND_FILES = [b"\xff\xfeseed: 1\n", b"seed: 2001-13-45\n", b"seed: " + b"9" * 5000 + b"\n",
               b"[" * 600 + b"]" * 600, b"seed: 1000000000000000000000000000000\n",
               b"hands:\n  pose_std: .nan\n"]
FOUND_OVERRIDES = [["amp\r"], ["\x85=nan"], ["0\x850=1"], ["hands.pose_std=nan"],
                   ["hands.pose_std=1e999"], ["seed=" + "9" * 30], ["seed=2001-13-45"],
                   ["seed=" + "9" * 5000]]


@pytest.mark.parametrize("blob", FOUND_FILES, ids=["not-utf8", "bad-date", "5000-digits",
                                                  "nested-600", "int-2^100", "nan"])
def test_found_files(blob: bytes, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(blob)
    _check("configs/demo.yaml", path, [])


@pytest.mark.parametrize("extra", FOUND_OVERRIDES, ids=["cr", "nel", "nel-key", "nan", "1e999",
                                                       "int-2^100", "bad-date", "5000-digits"])
def test_found_overrides(extra: list[str]) -> None:
    _check("configs/demo.yaml", ROOT / "configs/demo.yaml", extra)
