"""Writing the stand-in: plain pickles, the chumpy-layout copy (without chumpy), atomically."""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from contra.atomic import write_bytes_atomic
from contra.mano.standin.blendshapes import _rbf_fields, _rng
from contra.mano.standin.build import build_standin, mirror_to_left

_CHUMPY_MODULES = ("chumpy", "chumpy.ch", "chumpy.reordering")


def _chumpy_bookkeeping() -> dict[str, Any]:
    """Fields real chumpy 0.70 keeps in every object's pickled state (mano.md §1.2)."""
    return {"_dirty_vars": set(), "_itr": None, "_make_dense": False, "_make_sparse": False,
            "_depends_on_deps": {}}


@contextlib.contextmanager
def _fake_chumpy() -> Iterator[tuple[type, type]]:
    """Registers stand-in ``chumpy.ch.Ch`` / ``chumpy.reordering.Select`` only while dumping, so
    pickle records those globals without chumpy installed; always restores ``sys.modules``."""
    saved = {name: sys.modules.get(name) for name in _CHUMPY_MODULES}
    modules = {name: types.ModuleType(name) for name in _CHUMPY_MODULES}
    ch_cls = type("Ch", (), {"__module__": "chumpy.ch"})
    select_cls = type("Select", (), {"__module__": "chumpy.reordering"})
    modules["chumpy.ch"].Ch = ch_cls
    modules["chumpy.reordering"].Select = select_cls
    modules["chumpy"].ch = modules["chumpy.ch"]
    modules["chumpy"].reordering = modules["chumpy.reordering"]
    sys.modules.update(modules)
    try:
        yield ch_cls, select_cls
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _with_state(cls: type, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


def _dumps_chumpy(model: dict[str, Any], seed: int) -> bytes:
    """Pickle with shapedirs as ``Select(a=Ch(x: 778x3x20), idxs, preferred_shape=(778,3,10))``.

    The 10 unused components of ``x`` are further random fields, so a loader that selects the
    wrong entries gets different numbers.
    """
    sd = model["shapedirs"]
    x = np.concatenate([sd, _rbf_fields(model["v_template"], _rng(seed, "chumpy_x"), 10)], axis=2)
    idxs = np.arange(x.size, dtype=np.int64).reshape(x.shape)[:, :, : sd.shape[2]].ravel()
    with _fake_chumpy() as (ch_cls, select_cls):
        inner = _with_state(ch_cls, {**_chumpy_bookkeeping(), "x": x})
        select = _with_state(select_cls, {**_chumpy_bookkeeping(), "a": inner, "idxs": idxs,
                                          "preferred_shape": sd.shape})
        return pickle.dumps({**model, "shapedirs": select}, protocol=2)


def write_standin(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Writes ``MANO_RIGHT.pkl``, ``MANO_LEFT.pkl`` (plain numpy + scipy csc, protocol 2, readable
    by plain ``pickle`` like manopth does) and ``chumpy/MANO_RIGHT.pkl`` (chumpy layout).

    Deterministic: the same seed gives byte-identical files.
    """
    out = Path(out_dir)
    right = build_standin(seed)
    left = mirror_to_left(right, seed)
    payloads = {
        "right": (out / "MANO_RIGHT.pkl", pickle.dumps(right, protocol=2)),
        "left": (out / "MANO_LEFT.pkl", pickle.dumps(left, protocol=2)),
        "right_chumpy": (out / "chumpy" / "MANO_RIGHT.pkl", _dumps_chumpy(right, seed)),
    }
    for path, payload in payloads.values():
        write_bytes_atomic(path, payload)
    return {key: path for key, (path, _) in payloads.items()}
