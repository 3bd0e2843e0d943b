"""Shared pieces of the property-based fuzz tests (``tests/test_fuzz_*.py``).

Every reader of a user-supplied file must, for any structural mutation of a valid input, either
succeed with a sane result or raise one of :func:`contra.entry.user_errors` whose message is one
line naming the file. This module holds the mutation strategies (JSON-like values, serialized
text and bytes), that property, the hypothesis settings (bounded, reproducible) and the counter
behind the ``fuzzing: N cases`` line of the terminal summary.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: examples run per property, by property name (``count`` is called inside each property body)
CASES: Counter[str] = Counter()
#: ``CONTRA_FUZZ_SCALE=10 pytest tests/test_fuzz_*.py`` for a longer local hunt
SCALE = float(os.environ.get("CONTRA_FUZZ_SCALE", "1"))

_BASE = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    """Reproducible settings with a fixed example budget (scaled by ``CONTRA_FUZZ_SCALE``)."""
    return settings(_BASE, max_examples=max(1, round(examples * SCALE)))


def count(prop: str) -> None:
    """One more case of property ``prop`` (for the summary line)."""
    CASES[prop] += 1


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per example (never a fixture shared between examples)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        yield Path(d)


# ------------------------------------------------------------------------------ the property
Names = str | Path | tuple[str | Path, ...]


def user_error(exc: BaseException, names: Names) -> bool:
    """True if ``exc`` is a known user error whose message is one line naming one of ``names``
    (a file: its path or its name)."""
    from contra.entry import user_errors

    if not isinstance(exc, user_errors()):
        return False
    msg = str(exc)
    assert len(msg.splitlines()) <= 1, f"multi-line message: {msg!r}"
    options = names if isinstance(names, tuple) else (names,)
    named = any(str(n) in msg or Path(n).name in msg for n in options)
    assert named, f"none of {options} named in: {msg!r}"
    return True


def outcome(call: Callable[[], Any], name: Names) -> tuple[bool, Any]:
    """``(True, result)``, or ``(False, message)`` for a one-line user error naming ``name``.

    Any other exception propagates: hypothesis reports it with the smallest input it finds.
    """
    try:
        return True, call()
    except BaseException as exc:  # RecursionError, MemoryError, SystemExit are bugs here too
        if not user_error(exc, name):
            raise
        return False, str(exc)


def names_one_of(msg: str, fields: tuple[str, ...]) -> bool:
    """Whether an error message names one of ``fields`` (as ``'field'`` or bare)."""
    return any(f in msg for f in fields)


# ---------------------------------------------------------------------- JSON-like mutations
_HUGE = [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, -(10**30), 2**63, 2**31,
         10**400, 0, -1, 1e-320]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                     st.text(max_size=8), st.sampled_from(_HUGE))
#: any JSON value, small
JUNK = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
_DELETE = object()


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


_OPS = ("junk", "number", "delete", "extra", "resize", "wrap", "unwrap", "empty", "flip")


def _op(draw: st.DrawFn, node: Any, op: str | None) -> Any:
    """One structural change of ``node`` (``_DELETE`` removes it from its parent)."""
    op = op or draw(st.sampled_from(_OPS))
    if op == "junk":
        return draw(JUNK)
    if op == "number":
        return draw(st.sampled_from(_HUGE))
    if op == "delete":
        return _DELETE
    if op == "wrap":
        return [node] if draw(st.booleans()) else {"x": node}
    if op == "empty":
        return draw(st.sampled_from([[], {}, "", None]))
    if isinstance(node, dict):
        return _dict_op(draw, op, node)
    if isinstance(node, list):
        return _list_op(draw, op, node)
    return draw(JUNK)


def _dict_op(draw: st.DrawFn, op: str, node: dict) -> Any:
    if op == "extra":
        return {**node, draw(st.text(max_size=8)): draw(JUNK)}
    if op == "flip":
        return list(node.values())
    if op == "unwrap" and node:
        return next(iter(node.values()))
    keys = list(node)
    keep = draw(st.integers(0, len(keys)))
    return {k: node[k] for k in keys[:keep]}


def _list_op(draw: st.DrawFn, op: str, node: list) -> Any:
    if op == "extra":
        at = draw(st.integers(0, len(node)))
        item = copy.deepcopy(node[at - 1]) if node and draw(st.booleans()) else draw(JUNK)
        return [*node[:at], item, *node[at:]]
    if op == "flip":
        return {str(i): v for i, v in enumerate(node)}
    if op == "unwrap" and node:
        return node[0]
    n = draw(st.integers(0, 2 * len(node) + 1))
    return [node[i % len(node)] for i in range(n)] if node else [draw(JUNK)] * n


def _mutate(draw: st.DrawFn, node: Any, depth: int, op: str | None = None) -> Any:
    """Copy ``node`` along one random path of ``depth`` steps and change what is there."""
    keys = _children(node)
    if depth <= 0 or not keys:
        return _op(draw, node, op)
    key = draw(st.sampled_from(keys))
    child = _mutate(draw, node[key], depth - 1, op)
    new = copy.copy(node)
    if child is _DELETE:
        del new[key]
    else:
        new[key] = child
    return new


@st.composite
def mutated(draw: st.DrawFn, value: Any, max_ops: int = 3, max_depth: int = 5) -> Any:
    """``value`` after 1..``max_ops`` structural mutations at random depths (input untouched).

    One time in three the mutations are numbers only (NaN, inf, huge, tiny) at leaves, keeping
    the structure valid, so the values reach the code behind the structural checks.
    """
    leaves = draw(st.integers(0, 2)) == 0
    for _ in range(draw(st.integers(1, max_ops))):
        if leaves:
            value = _mutate(draw, value, 99, "number")
            continue
        value = _mutate(draw, value, draw(st.integers(0, max_depth)))
        if value is _DELETE:
            value = None
    return value


# ---------------------------------------------------------------------- serialized mutations
@st.composite
def mutated_bytes(draw: st.DrawFn, blob: bytes, hot: int = 4096) -> bytes:
    """Truncation, flipped / deleted / duplicated / inserted spans, or unrelated bytes.

    Positions favour the first and last ``hot`` bytes, where a format's headers and structure
    live (most of a pickle of arrays is raw array data, where a flip changes only numbers).
    """
    n = len(blob)
    op = draw(st.sampled_from(["truncate", "flip", "delete", "duplicate", "insert", "zero",
                               "garbage", "empty"]))
    if op == "empty" or n == 0:
        return b""
    if op == "garbage":
        return draw(st.binary(max_size=64))
    i = draw(_position(n, hot))
    if op == "truncate":
        return blob[:i]
    j = min(n, i + draw(st.integers(1, 64)))
    if op == "flip":
        return blob[:i] + bytes([draw(st.integers(0, 255))]) + blob[i + 1:]
    if op == "delete":
        return blob[:i] + blob[j:]
    if op == "duplicate":
        return blob[:j] + blob[i:j] + blob[j:]
    if op == "zero":
        return blob[:i] + bytes(j - i) + blob[j:]
    return blob[:i] + draw(st.binary(min_size=1, max_size=16)) + blob[i:]


def _position(n: int, hot: int) -> st.SearchStrategy[int]:
    head = st.integers(0, min(n, hot) - 1)
    tail = st.integers(max(0, n - hot), n - 1)
    return st.one_of(head, tail, st.integers(0, n - 1))


@st.composite
def mutated_text(draw: st.DrawFn, text: bytes, max_nesting: int = 100_000) -> bytes:
    """Serialized-text damage: byte-level mutations plus deep nesting, long numbers, bad UTF-8.

    ``max_nesting`` bounds the ``[[[...`` depth: past Python's recursion limit by default; PyYAML,
    quadratic in the depth, gets there by 600.
    """
    op = draw(st.sampled_from(["bytes", "bytes", "nest", "digits", "utf8", "bom"]))
    if op == "bytes":
        return draw(mutated_bytes(text))
    if op == "nest":
        depth = draw(st.sampled_from([100, min(1000, max_nesting), max_nesting]))
        return b"[" * depth + (text if draw(st.booleans()) else b"") + b"]" * depth
    if op == "digits":
        return b"[" + b"9" * draw(st.sampled_from([400, 5000])) + b"]"
    if op == "utf8":
        i = draw(st.integers(0, len(text)))
        return text[:i] + b"\xff\xfe\xc3" + text[i:]
    return b"\xef\xbb\xbf" + text


@st.composite
def json_file(draw: st.DrawFn, value: Any) -> bytes:
    """The bytes of a damaged JSON file: a mutated value (3 in 4) or mutated serialized text."""
    if draw(st.integers(0, 3)) == 0:
        return draw(mutated_text(json.dumps(value).encode()))
    return json.dumps(draw(mutated(value))).encode()


# ------------------------------------------------------------------------------ array mutations
_DTYPES = [object, str, complex, bool, np.float16, np.int8, np.uint8, "datetime64[s]"]


@st.composite
def mutated_array(draw: st.DrawFn, arr: np.ndarray) -> Any:
    """``arr`` with a wrong shape or dtype, a NaN/inf/huge entry, or replaced by a JSON value.

    Large arrays skip the slow changes (object / str dtypes, nested lists), which small ones cover.
    """
    large = arr.size > 100_000
    op = draw(st.sampled_from(["slice", "axis", "transpose", "dtype", "number", "empty",
                               "scalar", "junk", *([] if large else ["list"])]))
    if op == "slice" and arr.ndim and arr.size:
        axis = draw(st.integers(0, arr.ndim - 1))
        return np.take(arr, range(draw(st.integers(0, arr.shape[axis] - 1))), axis=axis)
    if op == "axis":
        return arr[None] if draw(st.booleans()) else arr.reshape(-1)
    if op == "transpose":
        return arr.T
    if op == "dtype":
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return arr.astype(draw(st.sampled_from(_DTYPES[2:] if large else _DTYPES)))
    if op == "number" and arr.size and arr.dtype.kind == "f":
        out = arr.copy()
        with np.errstate(over="ignore"):  # 1e308 into float32 is inf: intended
            out.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from(_HUGE[:5]))
        return out
    if op == "empty":
        return np.empty((0, *arr.shape[1:]), arr.dtype)
    if op == "scalar":
        return np.float64(draw(st.sampled_from(_HUGE[:6])))
    if op == "list":
        return arr.tolist()
    return draw(JUNK)


# ------------------------------------------------------------------------- forbidden globals
#: globals an attacker's pickle would call (plus names our allow-lists must not confuse)
DANGEROUS = [("os", "system"), ("posix", "system"), ("nt", "system"), ("os", "remove"),
             ("os", "unlink"), ("shutil", "rmtree"), ("builtins", "eval"), ("builtins", "exec"),
             ("__builtin__", "eval"), ("builtins", "__import__"), ("builtins", "getattr"),
             ("builtins", "open"), ("subprocess", "call"), ("subprocess", "Popen"),
             ("pickle", "loads"), ("numpy", "load"), ("numpy.testing", "Tester"),
             ("torch", "load"), ("io", "open"), ("runpy", "run_path"), ("chumpy.ch", "Ch\rx"),
             ("scipy.sparse", "load_npz"), ("copyreg", "__newobj__"), ("numpy", "frombuffer")]
#: random module / attribute names (no newline: it ends a GLOBAL opcode's fields)
GLOBAL_NAMES = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"),
                       min_size=1, max_size=12)


class Marker:
    """Pickles (protocol 2) as the call ``_marker(arg)``; :func:`swap_global` then puts any
    ``module.name`` in that GLOBAL, which no pickler would write for a live object."""

    def __init__(self, arg: str) -> None:
        self.arg = arg

    def __reduce__(self) -> tuple[Any, ...]:
        return (_marker, (self.arg,))


def _marker(arg: str) -> None:
    """Never called: its GLOBAL is replaced before anything unpickles it."""


def swap_global(blob: bytes, target: tuple[str, str]) -> bytes:
    """``blob`` (one pickled :class:`Marker`) calling ``target`` instead."""
    old = f"c{__name__}\n_marker\n".encode()
    assert blob.count(old) == 1, "not one protocol-2 Marker in the pickle"
    return blob.replace(old, f"c{target[0]}\n{target[1]}\n".encode())
