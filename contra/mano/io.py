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

    def __init__(self, message: str) -> None:
        super().__init__(message.translate(_LINE_BREAKS))  # globals and keys come from the file


# what str.splitlines() splits on, written as escapes so that a message stays one line
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
# what decoding a damaged stub raises (a missing state entry, indices out of range, a bad shape)
_DECODE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError,
                  MemoryError)
_MAX_SPARSE_ENTRIES = 10**8  # a declared sparse shape beyond this is damage, not a regressor
_FLOAT_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
               "hands_components", "hands_mean")
_INT_KEYS = ("kintree_table", "f")


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
    if len(shape) != 2 or min(shape) < 0 or shape[0] * shape[1] > _MAX_SPARSE_ENTRIES:
        raise ValueError(f"declared shape {shape}")
    data = np.asarray(s["data"], dtype=np.float64)
    dense = np.zeros(shape, dtype=np.float64)
    if stub.fmt == "coo":  # scipy >= 1.13 stores (row, col) as 'coords'
        row, col = s["coords"] if "coords" in s else (s["row"], s["col"])
        np.add.at(dense, (_index(row), _index(col)), data)
        return dense
    indices, indptr = _index(s["indices"]), np.asarray(s["indptr"])
    outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if stub.fmt == "csc":  # indptr runs over columns
        np.add.at(dense, (indices, outer), data)
    else:
        np.add.at(dense, (outer, indices), data)
    return dense


def _index(value: Any) -> np.ndarray:
    """Sparse indices; negative ones would wrap around silently in ``np.add.at``."""
    idx = np.asarray(value)
    if idx.size and idx.dtype.kind in "iu" and idx.min() < 0:
        raise IndexError(f"negative index {idx.min()}")
    return idx


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
    return {str(k): _materialised(v, str(k), name) for k, v in obj.items()}


def _materialised(value: Any, key: str, name: str) -> Any:
    """:func:`_materialise` with every failure as a one-line error naming file and key."""
    try:
        return _materialise(value, key)
    except ManoFileError as exc:
        raise ManoFileError(f"{name}: {exc}") from None
    except _DECODE_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"[:160]
        raise ManoFileError(f"{name}: key '{key}': cannot decode the {_what(value)} "
                            f"({reason})") from None


def _what(value: Any) -> str:
    """The pickled class a stub stands for, for messages."""
    if isinstance(value, SparseStub):
        return f"scipy {value.fmt}_matrix"
    return "chumpy Select" if isinstance(value, SelectStub) else "chumpy Ch"


def _numeric(arrays: dict[str, Any], key: str, name: str) -> np.ndarray:
    """``arrays[key]`` as float64 (int64 for the index keys); else a one-line error."""
    if key not in arrays:
        raise ManoFileError(f"{name}: not a MANO model: missing key '{key}'")
    try:
        arr = np.asarray(arrays[key])
    except (ValueError, TypeError):  # ragged nested lists
        raise ManoFileError(f"{name}: key '{key}' is not a regular array") from None
    integer = key in _INT_KEYS
    if arr.dtype.kind not in ("iu" if integer else "iuf"):
        raise ManoFileError(f"{name}: key '{key}' has dtype {arr.dtype}, expected "
                            f"{'integers' if integer else 'real numbers'}")
    return arr.astype(np.int64 if integer else np.float64)


def _check(arrays: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    """The model's arrays, float64 / int64, validated against MANO's shapes and tree."""
    out = {key: _numeric(arrays, key, name) for key in (*_REQUIRED, "shapedirs")}
    for key, shape in _REQUIRED.items():
        if out[key].shape != shape:
            raise ManoFileError(f"{name}: key '{key}' has shape {out[key].shape}, expected {shape}")
    sd = out["shapedirs"].shape
    if len(sd) != 3 or sd[:2] != (N_VERTS, 3) or sd[2] < 1:
        raise ManoFileError(f"{name}: key 'shapedirs' has shape {sd}, expected (778, 3, >=1)")
    for key in _FLOAT_KEYS:
        if not np.all(np.isfinite(out[key])):
            raise ManoFileError(f"{name}: key '{key}' contains NaN or infinite values")
    parents = out["kintree_table"][0]
    parents = np.where(parents >= 2**31, -1, parents)  # the root's parent is uint32(-1)
    if tuple(parents.tolist()) != MANO_PARENTS:
        raise ManoFileError(f"{name}: key 'kintree_table' is not MANO's kinematic tree "
                            f"(parents {parents.tolist()})")
    if out["f"].min() < 0 or out["f"].max() >= N_VERTS:
        raise ManoFileError(f"{name}: key 'f' has vertex ids outside [0, {N_VERTS})")
    return out


def load_mano(path: str | Path) -> ManoModel:
    """Load and validate an official or stand-in MANO pickle without chumpy or scipy."""
    arrays = _check(read_mano_pickle(path), str(path))
    return ManoModel(**{k: arrays[k] for k in _FLOAT_KEYS}, kintree_table=arrays["kintree_table"],
                     faces=arrays["f"], path=str(path))


def model_path(root: str | Path, side: str = "right") -> Path:
    """``root`` may be a model file or a folder holding ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    root = Path(root)
    if root.is_dir():
        return root / f"MANO_{side.upper()}.pkl"
    return root
