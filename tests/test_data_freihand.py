"""contra.data.freihand on tiny trees in FreiHAND's layout (hanco-freihand.md §5.1).

``make_freihand_tree`` is reused by tests/test_data_check.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_data_hanco import jpeg_bytes, write_json

from contra.data.errors import DataFormatError, MissingFileError
from contra.data.freihand import VERSIONS, FreiHAND


def sample_K(i: int) -> list[list[float]]:
    return [[500.0 + i, 0, 112], [0, 501.0 + i, 113], [0, 0, 1]]


def annotations(n: int, seed: int) -> dict[str, object]:
    """Per-file JSON content for n samples; mano is stored nested 1×61."""
    rng = np.random.default_rng(seed)
    return {
        "K": [sample_K(i) for i in range(n)],
        "mano": [[rng.normal(size=61).tolist()] for _ in range(n)],
        "xyz": rng.normal(size=(n, 21, 3)).tolist(),
        "verts": rng.normal(size=(n, 778, 3)).tolist(),
        "scale": rng.uniform(0.02, 0.04, n).tolist(),
    }


def make_freihand_tree(root: Path, n_train: int = 3, n_eval: int = 2,
                       eval_annotations: bool = False) -> Path:
    """Annotations, all 4 versions of each training image, training masks, evaluation images."""
    for name, value in annotations(n_train, 0).items():
        write_json(root / f"training_{name}.json", value)
    for name, value in annotations(n_eval, 1).items():
        if eval_annotations or name in ("K", "scale"):
            write_json(root / f"evaluation_{name}.json", value)
    files = [f"training/rgb/{i:08d}.jpg" for i in range(4 * n_train)]
    files += [f"training/mask/{i:08d}.jpg" for i in range(n_train)]
    files += [f"evaluation/rgb/{i:08d}.jpg" for i in range(n_eval)]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg_bytes("mask" if "/mask/" in rel else "rgb"))
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_freihand_tree(tmp_path / "FreiHAND")


def test_image_ids_offset_by_version(tree: Path) -> None:
    d = FreiHAND(tree, "training")
    assert len(d) == 3 and d.versions == VERSIONS == ("gs", "hom", "sample", "auto")
    for v, version in enumerate(VERSIONS):
        assert d.image_path(1, version) == tree / f"training/rgb/{1 + 3 * v:08d}.jpg"
    assert d.image_path(2) == tree / "training/rgb/00000002.jpg"
    assert d.mask_path(2) == tree / "training/mask/00000002.jpg"
    with pytest.raises(IndexError):
        d.image_path(3, "gs")
    with pytest.raises(ValueError, match="unknown version"):
        d.image_path(0, "merged")


def test_real_size_offsets(tmp_path: Path) -> None:
    write_json(tmp_path / "training_K.json", [sample_K(0)] * 32560)
    d = FreiHAND(tmp_path, "training")
    ids = [int(d.image_path(0, v).stem) for v in VERSIONS]
    assert ids == [0, 32560, 65120, 97680]
    assert d.image_path(32559, "auto").name == "00130239.jpg"


def test_evaluation_split_has_gs_only(tree: Path) -> None:
    d = FreiHAND(tree, "evaluation")
    assert len(d) == 2 and d.versions == ("gs",)
    assert d.image_path(1) == tree / "evaluation/rgb/00000001.jpg"
    with pytest.raises(ValueError, match="unknown version 'hom'"):
        d.image_path(0, "hom")
    with pytest.raises(ValueError, match="training split only"):
        d.mask_path(0)
    with pytest.raises(ValueError, match="unknown FreiHAND split"):
        FreiHAND(tree, "test")


def test_arrays_shapes_and_values(tree: Path) -> None:
    d = FreiHAND(tree, "training")
    ref = annotations(3, 0)
    assert d.K.shape == (3, 3, 3) and d.K.dtype == np.float64
    np.testing.assert_array_equal(d.K[2], sample_K(2))
    assert d.mano.shape == (3, 61)
    np.testing.assert_array_equal(d.mano[1], ref["mano"][1][0])
    assert d.xyz.shape == (3, 21, 3) and d.verts.shape == (3, 778, 3)
    np.testing.assert_array_equal(d.verts, ref["verts"])
    assert d.scale.shape == (3,)
    np.testing.assert_array_equal(d.scale, ref["scale"])


def test_annotations_load_lazily_and_missing_ones_error_on_access(tree: Path) -> None:
    d = FreiHAND(tree, "evaluation")
    assert "xyz" not in vars(d)  # nothing parsed but K at construction
    np.testing.assert_array_equal(d.scale, annotations(2, 1)["scale"])
    with pytest.raises(MissingFileError, match=r"evaluation_xyz\.json: file is missing") as e:
        _ = d.xyz
    assert "\n" not in str(e.value) and isinstance(e.value, FileNotFoundError)


def _set(name: str, edit) -> tuple[str, object]:
    value = annotations(3, 0)[name]
    edit(value)
    return name, value


BAD = [
    (_set("xyz", lambda v: v.__setitem__(1, v[1][:20])), "xyz",
     "sample 1 has shape (20, 3), expected (21, 3)"),
    (_set("xyz", lambda v: v.pop()), "xyz", "has 2 samples, expected 3"),
    (_set("mano", lambda v: v[2][0].pop()), "mano", "sample 2 has shape (1, 60), expected (61,)"),
    (_set("scale", lambda v: v.__setitem__(2, float("inf"))), "scale",
     "sample 2 has non-finite values"),
    (_set("verts", lambda v: v[0][5].__setitem__(1, "x")), "verts",
     "sample 0 is not numeric, expected shape (778, 3)"),
    (_set("K", lambda v: v[1][2].pop()), "K", "sample 1 is ragged, expected shape (3, 3)"),
    (("K", {"K": []}), "K", "expected a non-empty list of samples"),
]


@pytest.mark.parametrize(("file", "attr", "message"), BAD)
def test_bad_annotations_give_one_line_error(tree: Path, file: tuple[str, object], attr: str,
                                             message: str) -> None:
    name, value = file
    path = tree / f"training_{name}.json"
    write_json(path, value)
    with pytest.raises(DataFormatError) as e:
        getattr(FreiHAND(tree, "training"), attr)
    assert str(e.value) == f"{path}: {message}"


def test_malformed_json_names_line_and_column(tree: Path) -> None:
    path = tree / "training_scale.json"
    path.write_text("[0.1,\n0.2,,0.3]")
    with pytest.raises(DataFormatError, match=r"training_scale\.json: malformed JSON at line 2 "
                                              r"column 5"):
        _ = FreiHAND(tree, "training").scale
