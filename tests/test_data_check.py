"""contra.data.check: each planted problem is found with the right count and example path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from test_data_freihand import make_freihand_tree
from test_data_hanco import NO_FIT, SEQS, make_hanco_tree

from contra.data.check import PROBLEM_KINDS, check_tree
from contra.data.errors import DataFormatError

N_FRAMES = sum(map(len, SEQS))
N_GREEN = sum(map(sum, SEQS))
N_FIT = N_FRAMES - len(NO_FIT)
# meta.json; calib + xyz per frame; world + 8 camera shapes where fitted; rgb + mask_hand × 8
# cameras per frame; 4 variant folders × 8 cameras per green-screen frame
N_HANCO = 1 + 2 * N_FRAMES + 9 * N_FIT + 16 * N_FRAMES + 32 * N_GREEN


def small_jpeg(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def paths(report, kind: str) -> list[str]:
    return [p.path for p in report.examples[kind]]


@pytest.fixture
def hanco(tmp_path: Path) -> Path:
    return make_hanco_tree(tmp_path / "HanCo")


def test_clean_hanco_tree_is_ok(hanco: Path) -> None:
    report = check_tree(hanco)
    assert report.dataset == "hanco" and report.ok, report.format()
    assert report.checked == N_HANCO
    assert "mask_fg/ absent, not checked" in report.notes
    assert report.format().endswith("OK")


def test_planted_hanco_problems(hanco: Path) -> None:
    (hanco / "rgb/0001/cam2/00000001.jpg").unlink()
    (hanco / "shape/0002/cam7/00000000.json").unlink()
    truncate(hanco / "rgb_homo/0000/cam5/00000002.jpg")
    (hanco / "rgb/0002/cam4/00000001.jpg").write_bytes(b"not an image at all")
    (hanco / "mask_hand/0002/cam0/00000000.jpg").write_bytes(small_jpeg(200))
    (hanco / "calib/0000/00000001.json").write_text('{"K": [1, 2,,]}')
    (hanco / "xyz/0002/00000001.json").write_text(json.dumps([[0, 0, 0]] * 20))
    report = check_tree(hanco)
    assert not report.ok and report.checked == N_HANCO
    assert report.counts == {"missing": 2, "unreadable": 2, "wrong_size": 1, "malformed_json": 2}
    assert paths(report, "missing") == ["rgb/0001/cam2/00000001.jpg",
                                        "shape/0002/cam7/00000000.json"]
    assert paths(report, "unreadable") == ["rgb_homo/0000/cam5/00000002.jpg",
                                           "rgb/0002/cam4/00000001.jpg"]
    assert report.examples["unreadable"][0].detail == "truncated: no JPEG end marker"
    assert paths(report, "wrong_size") == ["mask_hand/0002/cam0/00000000.jpg"]
    assert report.examples["wrong_size"][0].detail == "200x200, expected 224x224"
    assert paths(report, "malformed_json") == ["calib/0000/00000001.json",
                                               "xyz/0002/00000001.json"]
    assert report.examples["malformed_json"][1].detail == \
        "field 'xyz' has shape (20, 3), expected (21, 3)"
    text = report.format()
    assert "  missing: 2\n    rgb/0001/cam2/00000001.jpg" in text
    assert "malformed JSON at line 1 column 13" in text and text.endswith("FAILED")


def test_deep_check_decodes(hanco: Path) -> None:
    truncate(hanco / "mask_hand/0000/cam1/00000000.jpg")
    report = check_tree(hanco, deep=True)
    assert report.counts["unreadable"] == 1
    assert paths(report, "unreadable") == ["mask_hand/0000/cam1/00000000.jpg"]
    assert "truncated" in report.examples["unreadable"][0].detail


def test_examples_are_capped_and_counts_are_not(hanco: Path) -> None:
    (hanco / "mask_fg/0000/cam0").mkdir(parents=True)
    (hanco / "mask_fg/0000/cam0/00000000.jpg").write_bytes(small_jpeg(224))
    report = check_tree(hanco, max_examples=2)
    assert report.counts["missing"] == 8 * N_FRAMES - 1  # mask_fg now expected everywhere
    assert paths(report, "missing") == ["mask_fg/0000/cam1/00000000.jpg",
                                        "mask_fg/0000/cam2/00000000.jpg"]
    assert f"... and {8 * N_FRAMES - 3} more" in report.format()


def test_malformed_meta_is_reported(hanco: Path) -> None:
    (hanco / "meta.json").write_text(json.dumps({"is_train": [[True]]}))
    report = check_tree(hanco)
    assert report.counts["malformed_json"] == 1 and report.checked == 1
    assert report.examples["malformed_json"][0] == ("meta.json", "field 'subject_id' is missing")


def test_freihand_tree(tmp_path: Path) -> None:
    root = make_freihand_tree(tmp_path / "FreiHAND")
    clean = check_tree(root)
    # training: 5 annotation files, 4×3 images, 3 masks; evaluation: K + scale, 2 images
    assert clean.dataset == "freihand" and clean.ok and clean.checked == 5 + 12 + 3 + 2 + 2
    (root / "training/rgb/00000011.jpg").unlink()  # sample 2, version auto
    (root / "training/mask/00000001.jpg").write_bytes(small_jpeg(200))
    (root / "training_xyz.json").write_text(json.dumps([[[0, 0, 0]] * 21] * 2))
    report = check_tree(root)
    assert {k: report.counts[k] for k in PROBLEM_KINDS} == {
        "missing": 1, "unreadable": 0, "wrong_size": 1, "malformed_json": 1}
    assert paths(report, "missing") == ["training/rgb/00000011.jpg"]
    assert paths(report, "wrong_size") == ["training/mask/00000001.jpg"]
    assert report.examples["malformed_json"][0] == ("training_xyz.json",
                                                    "has 2 samples, expected 3")


def test_neither_tree_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="neither a HanCo tree"):
        check_tree(tmp_path)
