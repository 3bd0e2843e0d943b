"""Fuzzing FreiHAND's annotation files (``<split>_{K,mano,xyz,verts,scale}.json``).

Each example writes ``training_K.json`` (n = 2 samples of tests/test_data_freihand.py's
annotations) and one mutated file, then reads it through :class:`contra.data.freihand.FreiHAND`: the
arrays come back finite with the spec's shapes (hanco-freihand.md §5.1), or one line names the
file and, below the file level, the sample.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
from fuzzutil import count, fuzz, json_file, names_one_of, outcome, scratch
from hypothesis import given
from test_data_freihand import annotations

from contra.data.freihand import ANNOTATIONS, FreiHAND, annotation_path

N = 2
VALID = annotations(N, 0)
TEXT = {name: json.dumps(value) for name, value in VALID.items()}
#: what an error may name instead of a sample: the file as a whole or the sample count
FILE_LEVEL = ("malformed JSON", "unreadable", "non-empty list of samples", "samples, expected",
              "is missing")
# per-example cost grows with the file: the 778-vertex file gets fewer examples
EXAMPLES = {"K": 150, "mano": 150, "xyz": 150, "verts": 60, "scale": 150}


def _read(root: object, name: str) -> np.ndarray:
    d = FreiHAND(root, "training")
    return d.K if name == "K" else getattr(d, name)


def _property(name: str) -> Callable[[], None]:
    """The fuzz test of ``training_<name>.json``."""

    @fuzz(EXAMPLES[name])
    @given(blob=json_file(VALID[name]))
    def test(blob: bytes) -> None:
        count(f"freihand {name}")
        with scratch() as root:
            annotation_path(root, "training", "K").write_text(TEXT["K"])  # defines n
            path = annotation_path(root, "training", name)
            path.write_bytes(blob)
            ok, got = outcome(lambda: _read(root, name), path)
            if ok:
                assert got.dtype == np.float64 and np.isfinite(got).all()
                assert got.shape[1:] == ANNOTATIONS[name][0] and (name == "K" or len(got) == N)
            else:
                assert names_one_of(got, ("sample ", *FILE_LEVEL)), got

    return test


test_K = _property("K")
test_mano = _property("mano")
test_xyz = _property("xyz")
test_verts = _property("verts")
test_scale = _property("scale")
