"""Fuzzing MANO pickles: damaged bytes, mutated model dicts and forbidden globals.

The inputs start from the session's stand-in (``contra.mano.standin.write_standin``): the plain
file and the chumpy layout (mano.md §1). :func:`contra.mano.io.load_mano` returns finite arrays of
MANO's shapes, or one line names the file (and the key, below the file level); a global outside
the allow-list is refused and never called.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzutil import (
    DANGEROUS,
    GLOBAL_NAMES,
    JUNK,
    Marker,
    count,
    fuzz,
    mutated,
    mutated_array,
    mutated_bytes,
    names_one_of,
    outcome,
    scratch,
    swap_global,
    user_error,
)
from hypothesis import given
from hypothesis import strategies as st
from test_mano_io import _fake_class, _fake_modules

from contra.mano.io import _REQUIRED, N_VERTS, ManoFileError, ManoModel, load_mano

KEYS = (*_REQUIRED, "shapedirs")
#: what an error names: the key, else what is wrong with the file as a whole
FIELDS = ("key '", "pickle", "refused", "expected a dict")
CH = _fake_class("chumpy.ch", "Ch")
SELECT = _fake_class("chumpy.reordering", "Select")
CSC = _fake_class("scipy.sparse._fuzz", "csc_matrix")


@cache
def plain_model(root: Path) -> dict[str, Any]:
    """The stand-in's model dict (our own file: a plain unpickler is fine here)."""
    return pickle.loads((root / "MANO_RIGHT.pkl").read_bytes())


def _stub(cls: type, state: dict[str, Any]) -> Any:
    obj = cls()
    obj.__dict__.update(state)
    return obj


def _dumps(model: dict[str, Any]) -> bytes:
    with _fake_modules(CH, SELECT, CSC):
        return pickle.dumps(model, protocol=2)


def _check_model(m: ManoModel) -> None:
    """A successful load: MANO's shapes, float64 finite arrays, faces inside the mesh."""
    for key, shape in _REQUIRED.items():
        got = m.faces if key == "f" else getattr(m, key)
        assert got.shape == shape, (key, got.shape)
    assert m.shapedirs.shape[:2] == (N_VERTS, 3)
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                "hands_components", "hands_mean"):
        arr = getattr(m, key)
        assert arr.dtype == np.float64 and np.isfinite(arr).all(), key
    assert m.faces.dtype == np.int64 and 0 <= m.faces.min() and m.faces.max() < N_VERTS


def _load(blob: bytes) -> None:
    with scratch() as d:
        path = d / "MANO_RIGHT.pkl"
        path.write_bytes(blob)
        ok, got = outcome(lambda: load_mano(path), path)
        if ok:
            _check_model(got)
        else:
            assert names_one_of(got, FIELDS), got


@cache
def _file(root: Path, name: str) -> bytes:
    return (root / name).read_bytes()


@pytest.mark.parametrize("name", ["MANO_RIGHT.pkl", "chumpy/MANO_RIGHT.pkl"])
@fuzz(150)
@given(data=st.data())
def test_damaged_bytes(standin_root: Path, name: str, data: st.DataObject) -> None:
    blob = data.draw(mutated_bytes(_file(standin_root, name)), label="pickle")
    count(f"mano bytes {name}")
    _load(blob)


# ------------------------------------------------------------------------ mutated model dicts
def _sparse_state(dense: np.ndarray) -> dict[str, Any]:
    """csc_matrix's pickled state (data, indices, indptr over columns, _shape)."""
    rows, cols = np.nonzero(dense.T)[::-1]
    order = np.lexsort((rows, cols))
    indptr = np.searchsorted(cols[order], np.arange(dense.shape[1] + 1))
    return {"data": dense[rows, cols][order], "indices": rows[order], "indptr": indptr,
            "_shape": dense.shape, "maxprint": 50}


@st.composite
def _state(draw: st.DrawFn, state: dict[str, Any]) -> dict[str, Any]:
    """A stub's state with one entry dropped, replaced or (for arrays) mutated."""
    key = draw(st.sampled_from(sorted(state)))
    value, out = state[key], dict(state)
    op = draw(st.sampled_from(["drop", "junk", "array", "nested"]))
    if op == "drop":
        del out[key]
    elif op == "array" and isinstance(value, np.ndarray):
        out[key] = draw(mutated_array(value))
    elif op == "nested":
        out[key] = draw(mutated(list(value) if isinstance(value, tuple) else value))
    else:
        out[key] = draw(JUNK)
    return out


@st.composite
def _chumpy_shapedirs(draw: st.DrawFn, sd: np.ndarray) -> Any:
    """``Select(a=Ch(x), idxs, preferred_shape)`` with a mutated state somewhere."""
    ch = {"x": sd, "_dirty_vars": set()}
    sel = {"idxs": np.arange(sd.size), "preferred_shape": sd.shape, "_dirty_vars": set()}
    if draw(st.booleans()):
        ch = draw(_state(ch))
    else:
        sel = draw(_state(sel))
    a = _stub(CH, ch) if draw(st.integers(0, 5)) else draw(JUNK)
    return _stub(SELECT, {**sel, "a": a})


@st.composite
def mutated_model(draw: st.DrawFn, model: dict[str, Any]) -> dict[str, Any]:
    """The model dict with 1-3 keys dropped, added or given a mutated value."""
    out = dict(model)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*KEYS, "extra", 7]))
        op = draw(st.sampled_from(["drop", "array", "array", "junk", "sparse", "chumpy"]))
        if op == "drop":
            out.pop(key, None)
        elif op == "sparse":
            out["J_regressor"] = _stub(CSC, draw(_state(_sparse_state(_dense(model)))))
        elif op == "chumpy":
            out["shapedirs"] = draw(_chumpy_shapedirs(model["shapedirs"]))
        elif op == "array" and isinstance(out.get(key), np.ndarray):
            out[key] = draw(mutated_array(out[key]))
        else:
            out[key] = draw(JUNK)
    return out


def _dense(model: dict[str, Any]) -> np.ndarray:
    return model["J_regressor"].toarray()


@fuzz(200)
@given(data=st.data())
def test_mutated_model(standin_root: Path, data: st.DataObject) -> None:
    model = data.draw(mutated_model(plain_model(standin_root)), label="model")
    count("mano model dict")
    _load(_dumps(model))


# ------------------------------------------------------------------------- forbidden globals
def _global_bytes(module: str, name: str, arg: str, protocol: int) -> bytes:
    """A pickle that calls ``module.name(arg)``: GLOBAL (protocol 0-2) or STACK_GLOBAL (4)."""
    if protocol < 4:
        return f"c{module}\n{name}\n(V{arg}\ntR.".encode()
    parts = [s.encode() for s in (module, name, arg)]
    short = [b"\x8c" + bytes([len(p)]) + p for p in parts]
    return b"\x80\x04" + short[0] + short[1] + b"\x93" + short[2] + b"\x85R."


@fuzz(150)
@given(where=st.sampled_from(["top", "value", "state"]),
       target=st.one_of(st.sampled_from(DANGEROUS), st.tuples(GLOBAL_NAMES, GLOBAL_NAMES)),
       protocol=st.sampled_from([2, 4]))
def test_forbidden_globals(standin_root: Path, where: str, target: tuple[str, str],
                           protocol: int) -> None:
    count("mano forbidden globals")
    with scratch() as d:
        canary = d / "canary"
        canary.write_text("still here")
        arg = f"rm -f {canary}" if target[1] == "system" else str(canary)
        if where == "top":
            payload = _global_bytes(*target, arg, protocol)
        else:
            payload = _embedded(plain_model(standin_root), target, arg, where == "state")
        path = d / "MANO_RIGHT.pkl"
        path.write_bytes(payload)
        ok, got = outcome(lambda: load_mano(path), path)
        assert canary.read_text() == "still here", f"{target} ran"
        assert not ok, "a pickle calling a global loaded"
        if target in DANGEROUS and "\r" not in target[1]:
            assert "refused" in got, got


def _embedded(model: dict[str, Any], target: tuple[str, str], arg: str, in_state: bool) -> bytes:
    """The model pickle with one value (or a chumpy stub's state entry) calling ``target``."""
    out = dict(model)
    if in_state:
        out["shapedirs"] = _stub(SELECT, {"a": Marker(arg), "idxs": np.arange(3)})
    else:
        out["hands_mean"] = Marker(arg)
    return swap_global(_dumps(out), target)


def _found(model: dict[str, Any], change: str) -> dict[str, Any]:
    """The damaged model dicts the fuzzing found tracebacks for (now one-line errors)."""
    out, sd = dict(model), model["shapedirs"]
    csc = _sparse_state(_dense(model))
    changes = {
        "Ch without x": {"shapedirs": _stub(SELECT, {"a": _stub(CH, {}), "idxs": [0]})},
        "Select without idxs": {"shapedirs": _stub(SELECT, {"a": _stub(CH, {"x": sd})})},
        "idxs out of range": {"shapedirs": _stub(SELECT, {"a": _stub(CH, {"x": sd[:1]}),
                                                          "idxs": np.arange(sd.size)})},
        "bad preferred_shape": {"shapedirs": _stub(SELECT, {"a": _stub(CH, {"x": sd}),
                                                            "idxs": np.arange(sd.size),
                                                            "preferred_shape": ()})},
        "csc without indptr": {"J_regressor": _stub(CSC, {k: v for k, v in csc.items()
                                                          if k != "indptr"})},
        "csc float indices": {"J_regressor": _stub(CSC, {**csc, "indices": csc["indices"] * 1.0})},
        "csc without shape": {"J_regressor": _stub(CSC, {**csc, "_shape": None})},
        "ragged weights": {"weights": [[0.0] * 16, [0.0]]},
        "string faces": {"f": model["f"].astype(str)},
        "NaN hands_mean": {"hands_mean": np.full(45, np.nan)},
    }
    out.update(changes[change])
    return out


@pytest.mark.parametrize("change", ["Ch without x", "Select without idxs", "idxs out of range",
                                    "bad preferred_shape", "csc without indptr",
                                    "csc float indices", "csc without shape", "ragged weights",
                                    "string faces", "NaN hands_mean"])
def test_found(standin_root: Path, change: str) -> None:
    with pytest.raises(ManoFileError, match=r"MANO_RIGHT.pkl: key '\w+'"):
        _load_strict(_dumps(_found(plain_model(standin_root), change)))


def test_found_line_break_in_a_refused_global(standin_root: Path) -> None:
    with pytest.raises(ManoFileError, match=r"refused: global '0\.\\x1e'"):
        _load_strict(_global_bytes("0", "\x1e", "x", 2))


def _load_strict(blob: bytes) -> None:
    """``load_mano`` of ``blob``; its error must also pass the fuzz property."""
    with scratch() as d:
        path = d / "MANO_RIGHT.pkl"
        path.write_bytes(blob)
        try:
            load_mano(path)
        except ManoFileError as exc:
            assert user_error(exc, path)
            raise
