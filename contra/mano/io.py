"""Safe loading of MANO model pickles (official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``).

The official files are Python-2 pickles whose ``shapedirs`` is a chumpy ``Select`` over a ``Ch`` and
whose ``J_regressor`` is an old-scipy ``csc_matrix``.  We never import chumpy or scipy to read them
and never run a plain unpickler: an allow-listed ``find_class`` maps the few globals such a file
references to inert stubs and refuses everything else (which also removes pickle's code-execution
risk).  The stubs are then materialised into plain numpy arrays and validated against MANO's shapes.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_VERTS = 778
N_FACES = 1538
N_JOINTS = 16
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

# key -> (required shape, or None for "any"); shapedirs may carry more than 10 components.
_REQUIRED: dict[str, tuple[int, ...]] = {
    "v_template": (N_VERTS, 3),
    "posedirs": (N_VERTS, 3, 135),
    "J_regressor": (N_JOINTS, N_VERTS),
    "weights": (N_VERTS, N_JOINTS),
    "kintree_table": (2, N_JOINTS),
    "f": (N_FACES, 3),
    "hands_components": (45, 45),
    "hands_mean": (45,),
}


class ManoFileError(ValueError):
    """A MANO pickle is unsafe, unreadable or not a MANO model; the message names file and key."""


# --------------------------------------------------------------------------------------------
# Stubs standing in for chumpy / scipy classes while unpickling.
# --------------------------------------------------------------------------------------------
class _StateStub:
    """Accepts any constructor args and keeps the pickled state dict for later materialisation."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StateStub:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"_raw": state}


class ChStub(_StateStub):
    """``chumpy.ch.Ch``: its value is ``state['x']``."""


class SelectStub(_StateStub):
    """``chumpy.reordering.Select``: ``a.ravel()[idxs]`` reshaped to ``preferred_shape``."""


class UnsupportedChumpyStub(_StateStub):
    """Any other chumpy class: loadable, but evaluating it is an error."""

    qualname = "chumpy.?"


class SparseStub(_StateStub):
    """``scipy.sparse`` csc/csr/coo matrices, decoded without scipy."""

    fmt = "csc"


class _CsrStub(SparseStub):
    fmt = "csr"


class _CooStub(SparseStub):
    fmt = "coo"


_SPARSE = {"csc_matrix": SparseStub, "csr_matrix": _CsrStub, "coo_matrix": _CooStub}
_PASS_BUILTINS = {"set": set, "frozenset": frozenset, "object": object}


def _numpy_global(module: str, name: str) -> Any:
    from numpy import dtype, ndarray

    if name == "ndarray":
        return ndarray
    if name == "dtype":
        return dtype
    if module.endswith("multiarray") and name in ("_reconstruct", "scalar"):
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray
        return getattr(multiarray, name)
    return None


class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list (as opposed to a damaged pickle)."""


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the globals a MANO pickle legitimately needs."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy.ch" and name == "Ch":
            return ChStub
        if module == "chumpy.reordering" and name == "Select":
            return SelectStub
        if module == "chumpy" or module.startswith("chumpy."):
            return type(name, (UnsupportedChumpyStub,), {"qualname": f"{module}.{name}"})
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE:
            return _SPARSE[name]
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
            found = _numpy_global(module, name)
            if found is not None:
                return found
        if module in ("builtins", "__builtin__") and name in _PASS_BUILTINS:
            return _PASS_BUILTINS[name]
        if (module, name) in (("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor")):
            import copyreg

            return copyreg._reconstructor
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise _Refused(f"global '{module}.{name}' is not allowed in a MANO model file")


def _materialise(value: Any, key: str) -> Any:
    """Turn stubs into numpy arrays (recursively for chumpy's nested objects)."""
    if isinstance(value, ChStub):
        return np.asarray(value.state["x"])
    if isinstance(value, SelectStub):
        inner = np.asarray(_materialise(value.state["a"], key))
        out = inner.ravel()[np.asarray(value.state["idxs"]).ravel()]
        shape = value.state.get("preferred_shape")
        return out.reshape(shape) if shape is not None else out
    if isinstance(value, UnsupportedChumpyStub):
        raise ManoFileError(f"key '{key}': unsupported chumpy operation {value.qualname}")
    if isinstance(value, SparseStub):
        return _decode_sparse(value)
    return value


def _decode_sparse(stub: SparseStub) -> np.ndarray:
    s = stub.state
    shape = tuple(int(v) for v in s.get("_shape", s.get("shape")))
    data = np.asarray(s["data"], dtype=np.float64)
    dense = np.zeros(shape, dtype=np.float64)
    if stub.fmt == "coo":  # scipy >= 1.13 stores (row, col) as 'coords'
        row, col = s["coords"] if "coords" in s else (s["row"], s["col"])
        np.add.at(dense, (np.asarray(row), np.asarray(col)), data)
        return dense
    indices, indptr = np.asarray(s["indices"]), np.asarray(s["indptr"])
    outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if stub.fmt == "csc":  # indptr runs over columns
        np.add.at(dense, (indices, outer), data)
    else:
        np.add.at(dense, (outer, indices), data)
    return dense


@dataclass(frozen=True)
class ManoModel:
    """Plain float64/int64 arrays of a MANO model, as named in the official file."""

    v_template: np.ndarray  # (778, 3) metres
    shapedirs: np.ndarray  # (778, 3, n_betas)
    posedirs: np.ndarray  # (778, 3, 135)
    J_regressor: np.ndarray  # (16, 778) dense
    weights: np.ndarray  # (778, 16)
    kintree_table: np.ndarray  # (2, 16)
    faces: np.ndarray  # (1538, 3) int64
    hands_components: np.ndarray  # (45, 45), rows = PCA directions
    hands_mean: np.ndarray  # (45,)
    path: str = ""


def read_mano_pickle(source: str | Path | bytes) -> dict[str, Any]:
    """Unpickle a MANO file with the allow-list and materialise every value (no validation)."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise ManoFileError(f"{name}: cannot read MANO model file ({exc.strerror})") from None
    try:
        obj = _AllowListUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as exc:
        raise ManoFileError(f"{name}: refused: {exc}") from None
    except Exception as exc:  # truncated or garbage files raise many different errors
        reason = f"{type(exc).__name__}: {exc}"
        raise ManoFileError(f"{name}: not a readable pickle ({reason})") from None
    if not isinstance(obj, dict):
        raise ManoFileError(f"{name}: expected a dict of model arrays, got {type(obj).__name__}")
    try:
        return {str(k): _materialise(v, str(k)) for k, v in obj.items()}
    except ManoFileError as exc:
        raise ManoFileError(f"{name}: {exc}") from None


def _check(arrays: dict[str, Any], name: str) -> None:
    for key, shape in _REQUIRED.items():
        if key not in arrays:
            raise ManoFileError(f"{name}: not a MANO model: missing key '{key}'")
        got = np.shape(arrays[key])
        if got != shape:
            raise ManoFileError(f"{name}: key '{key}' has shape {got}, expected {shape}")
    sd = np.shape(arrays.get("shapedirs", None))
    if "shapedirs" not in arrays:
        raise ManoFileError(f"{name}: not a MANO model: missing key 'shapedirs'")
    if len(sd) != 3 or sd[:2] != (N_VERTS, 3) or sd[2] < 1:
        raise ManoFileError(f"{name}: key 'shapedirs' has shape {sd}, expected (778, 3, >=1)")
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        if not np.all(np.isfinite(np.asarray(arrays[key], dtype=np.float64))):
            raise ManoFileError(f"{name}: key '{key}' contains NaN or infinite values")
    parents = np.asarray(arrays["kintree_table"]).astype(np.int64)[0]
    parents = np.where(parents >= 2**31, -1, parents)  # the root's parent is uint32(-1)
    if tuple(parents.tolist()) != MANO_PARENTS:
        raise ManoFileError(f"{name}: key 'kintree_table' is not MANO's kinematic tree "
                            f"(parents {parents.tolist()})")
    faces = np.asarray(arrays["f"])
    if faces.min() < 0 or faces.max() >= N_VERTS:
        raise ManoFileError(f"{name}: key 'f' has vertex ids outside [0, {N_VERTS})")


def load_mano(path: str | Path) -> ManoModel:
    """Load and validate an official or stand-in MANO pickle without chumpy or scipy."""
    arrays = read_mano_pickle(path)
    _check(arrays, str(path))
    f64 = {k: np.asarray(arrays[k], dtype=np.float64) for k in
           ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
            "hands_components", "hands_mean")}
    kintree = np.asarray(arrays["kintree_table"]).astype(np.int64)
    return ManoModel(
        **f64,
        kintree_table=kintree,
        faces=np.asarray(arrays["f"]).astype(np.int64),
        path=str(path),
    )


def model_path(root: str | Path, side: str = "right") -> Path:
    """``root`` may be a model file or a folder holding ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    root = Path(root)
    if root.is_dir():
        return root / f"MANO_{side.upper()}.pkl"
    return root
