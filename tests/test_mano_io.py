"""The allow-listed MANO unpickler: what it refuses, what it decodes, and its error messages."""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mano_reference import random_model
from scipy import sparse

from contra.mano.io import ManoFileError, load_mano, read_mano_pickle


def _model_dict(seed: int = 0) -> dict[str, Any]:
    m = random_model(seed)
    return {
        "v_template": m.v_template, "shapedirs": m.shapedirs, "posedirs": m.posedirs,
        "J_regressor": sparse.csc_matrix(m.J_regressor), "weights": m.weights,
        "kintree_table": m.kintree_table, "f": m.faces.astype(np.uint32),
        "hands_components": m.hands_components, "hands_mean": m.hands_mean,
        "hands_coeffs": np.zeros((1554, 45)), "bs_style": "lbs", "bs_type": "lrotmin",
    }


def _write(tmp_path: Path, obj: Any, protocol: int = 2, name: str = "MANO_RIGHT.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch pwned",))


class _EvalEvil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("1+1",))


@pytest.mark.parametrize("payload", [_Evil(), _EvalEvil()])
def test_foreign_globals_are_refused_and_never_run(tmp_path: Path, payload: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = _model_dict()
    data["extra"] = payload
    path = _write(tmp_path, data)
    with pytest.raises(ManoFileError, match=r"MANO_RIGHT.pkl: refused: global '(posix|os|nt|"
                                            r"builtins|__builtin__)\.(system|eval)' is not "
                                            r"allowed"):
        load_mano(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_plain_file_round_trip_any_protocol(tmp_path: Path, protocol: int) -> None:
    data = _model_dict()
    model = load_mano(_write(tmp_path, data, protocol))
    np.testing.assert_array_equal(model.J_regressor, data["J_regressor"].toarray())
    np.testing.assert_array_equal(model.shapedirs, data["shapedirs"])
    assert model.faces.dtype == np.int64 and model.kintree_table[0, 0] == 2**32 - 1


@pytest.mark.parametrize("fmt", ["csr_matrix", "coo_matrix"])
def test_other_sparse_formats_decode(tmp_path: Path, fmt: str) -> None:
    data = _model_dict()
    dense = data["J_regressor"].toarray()
    data["J_regressor"] = getattr(sparse, fmt)(dense)
    np.testing.assert_array_equal(load_mano(_write(tmp_path, data)).J_regressor, dense)


def _fake_class(module: str, name: str) -> type:
    """A class that pickles under ``module.name`` (as chumpy's classes do)."""
    return type(name, (), {"__module__": module, "__qualname__": name})


@contextlib.contextmanager
def _fake_modules(*classes: type) -> Iterator[None]:
    """Register the classes' modules (and 'chumpy') in sys.modules only while dumping."""
    names = {"chumpy"} | {c.__module__ for c in classes}
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    for c in classes:
        setattr(sys.modules[c.__module__], c.__name__, c)
    try:
        yield
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def test_chumpy_select_over_ch_without_chumpy(tmp_path: Path) -> None:
    """A chumpy-layout shapedirs (Select over a 778×3×20 Ch) is decoded with stubs."""
    data = _model_dict()
    full = np.random.default_rng(1).normal(size=(778, 3, 20))
    idxs = np.arange(full.size).reshape(778, 3, 20)[:, :, :10].ravel()
    Ch, Select = _fake_class("chumpy.ch", "Ch"), _fake_class("chumpy.reordering", "Select")
    inner, sel = Ch(), Select()
    inner.__dict__.update(x=full, _dirty_vars=set(), _itr=None)
    sel.__dict__.update(a=inner, idxs=idxs, preferred_shape=(778, 3, 10), _dirty_vars={"a"})
    data["shapedirs"] = sel
    with _fake_modules(Ch, Select):
        path = _write(tmp_path, data, protocol=2)
    model = load_mano(path)
    np.testing.assert_array_equal(model.shapedirs, full[:, :, :10])
    assert "chumpy" not in sys.modules


def test_unsupported_chumpy_op_is_named(tmp_path: Path) -> None:
    data = _model_dict()
    add = _fake_class("chumpy.ch_ops", "add")
    data["posedirs"] = add()
    with _fake_modules(add):
        path = _write(tmp_path, data, name="m.pkl")
    with pytest.raises(ManoFileError, match=r"m.pkl: key 'posedirs': unsupported chumpy "
                                            r"operation chumpy.ch_ops.add"):
        load_mano(path)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("weights"), r"missing key 'weights'"),
    (lambda d: d.update(posedirs=np.zeros((778, 3, 10))), r"'posedirs' has shape \(778, 3, 10\)"),
    (lambda d: d.update(f=np.zeros((1000, 3), np.uint32)), r"key 'f' has shape"),
    (lambda d: d.update(v_template=np.full((778, 3), np.nan)), r"'v_template' contains NaN"),
    (lambda d: d.update(kintree_table=np.zeros((2, 16), np.int64)), r"'kintree_table' is not"),
])
def test_not_a_mano_model_names_the_key(tmp_path: Path, mutate: Any, message: str) -> None:
    data = _model_dict()
    mutate(data)
    with pytest.raises(ManoFileError, match=r"MANO_RIGHT.pkl: .*" + message):
        load_mano(_write(tmp_path, data))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ManoFileError, match=r"nope.pkl: cannot read"):
        load_mano(tmp_path / "nope.pkl")
    good = pickle.dumps(_model_dict(), protocol=2)
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    with pytest.raises(ManoFileError, match=r"cut.pkl: not a readable pickle"):
        load_mano(tmp_path / "cut.pkl")
    with pytest.raises(ManoFileError, match=r"list.pkl: expected a dict"):
        read_mano_pickle(_write(tmp_path, [1, 2], name="list.pkl"))
