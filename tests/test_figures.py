"""Embedding analysis: ``contra embed`` and ``contra figures`` checked for content, not existence.

One real tiny pretraining run (MLflow in its own SQLite store) on the session's synthetic HanCo
is embedded; the numbers are compared with independent formulations (a plain forward of the
encoder, float64 brute-force neighbours, the calibration's camera centres) and with encoders whose
answer is known: one that sees only the hand mask (background-invariant by construction) and a
colour histogram (background only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from contra.augment import decode_rgb
from contra.checkpoint import load_checkpoint
from contra.cli import main as cli_main
from contra.data.hanco import HanCo, image_path
from contra.embedding import (
    EmbedConfig,
    EmbeddingTable,
    ImageRows,
    Rows,
    draw_rows,
    embed_rows,
    load_encoder,
    run_embed,
)
from contra.invariance import (
    RELATIONS,
    background_invariance,
    camera_partners,
    cosine_pairs,
    draw_pairs,
)
from contra.neighbours import knn, mixing_ratio, pair_pa_mm
from contra.retrieval_grid import grid_rows
from contra.retrieval_set import to_network
from tests.test_pretrain import CONFIGS, tiny

SUBSETS = ("gs", "merged", "homo", "color_auto", "color_sample")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """last.pt of a 4-step pretraining run that logged to its own MLflow store."""
    run_dir = tmp_path_factory.mktemp("figures") / "pretrain"
    args = tiny(run_dir, synth_root / "hanco", max_steps=4, **{"tracking.enabled": True})
    assert cli_main(["pretrain", "--config", str(CONFIGS / "demo.yaml"), *args]) == 0
    return run_dir / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def table(pretrained: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> EmbeddingTable:
    out = tmp_path_factory.mktemp("embed")
    return run_embed(pretrained, synth_root / "hanco", out, EmbedConfig(n=240, workers=0),
                     progress=False)


class MaskEncoder(nn.Module):
    """Sees only the hand mask (the test's reader hands it mask_hand/): the flattened mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=1) > 0.0).float().flatten(1) + 1e-3


class HistogramEncoder(nn.Module):
    """Colour histogram of the whole image: a pure background/appearance descriptor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bins = ((x + 0.5).clamp(0, 0.999) * 4).long()  # 4 levels per channel → 64 colours
        code = bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]
        return torch.stack([torch.bincount(c.flatten(), minlength=64).float() for c in code])


def read_mask(root: Path, rows: Rows, i: int) -> torch.Tensor:
    path = image_path(root, "mask_hand", int(rows.sid[i]), int(rows.cid[i]), int(rows.fid[i]))
    return decode_rgb(path.read_bytes())


# ---------------------------------------------------------------------------------- embed
def test_rows_are_distinct_seeded_and_cover_every_subset(synth_root: Path) -> None:
    hanco = HanCo(synth_root / "hanco")
    a, b = (draw_rows(hanco, 500, SUBSETS, seed=3) for _ in range(2))
    keys = set(zip(a.sid.tolist(), a.fid.tolist(), a.cid.tolist(), a.subset.tolist(),
                   strict=True))
    assert len(keys) == 500 and (a.sid == b.sid).all() and (a.subset == b.subset).all()
    counts = {s: int((a.subset == s).sum()) for s in SUBSETS}
    assert all(60 <= c <= 140 for c in counts.values()), counts  # 100 expected each
    assert all(hanco.is_green_screen(int(s), int(f)) for s, f in zip(a.sid, a.fid, strict=True))
    everything = draw_rows(hanco, 10**6, SUBSETS, seed=0)
    assert len(everything) == int(hanco.meta.is_train.sum()) * 8 * 5


def test_embeddings_equal_a_plain_forward_of_the_query_encoder(
        table: EmbeddingTable, pretrained: Path, synth_root: Path) -> None:
    state = load_checkpoint(pretrained)
    enc = load_encoder(pretrained)
    q = {k.removeprefix("module.encoder_q."): v for k, v in state["model"].items()
         if k.startswith("module.encoder_q.")}
    for k, v in enc.net.state_dict().items():
        assert torch.equal(v, q[k]), k
    assert table.embeddings.shape == (240, 128)
    assert np.allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, atol=1e-5)
    root, rows = synth_root / "hanco", table.rows
    picks = [0, 77, 239]
    x = torch.stack([to_network(decode_rgb(image_path(root, rows.folder(i), int(rows.sid[i]),
                                                      int(rows.cid[i]), int(rows.fid[i]))
                                           .read_bytes()), 32) for i in picks])
    with torch.no_grad():
        ref = nn.functional.normalize(enc.net.eval()(x).double(), dim=1).numpy()
    assert np.abs(ref - table.embeddings[picks]).max() < 1e-5
    hanco = HanCo(root)
    for i in picks:
        assert np.array_equal(table.keypoints[i], hanco.xyz(int(rows.sid[i]), int(rows.fid[i])))


def test_the_folder_reads_back_identically(table: EmbeddingTable, tmp_path: Path) -> None:
    table.write(tmp_path)
    back = EmbeddingTable.read(tmp_path)
    assert np.array_equal(back.embeddings, table.embeddings)
    assert np.array_equal(back.keypoints, table.keypoints, equal_nan=True)
    for f in ("sid", "fid", "cid", "subset"):
        assert np.array_equal(getattr(back.rows, f), getattr(table.rows, f)), f
    header = (tmp_path / "index.csv").read_text().splitlines()[1].split(",")
    assert header[-1] == f"{header[5]}/{int(header[1]):04d}/cam{header[3]}/{int(header[2]):08d}.jpg"


# ------------------------------------------------------------------------------ neighbours
@pytest.mark.parametrize("overfetch", [256, 0], ids=["one-search", "per-group-selector"])
def test_knn_agrees_with_float64_brute_force_and_never_returns_itself(
        overfetch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import contra.neighbours

    monkeypatch.setattr(contra.neighbours, "_OVERFETCH", overfetch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[9] = x[4]  # an exact duplicate: it is a neighbour, the row itself is not
    groups = rng.integers(0, 6, size=400)
    for g in (None, groups):
        sims, idx = knn(x.astype(np.float32), 5, g)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        if g is not None:
            s[g[:, None] == g[None, :]] = -np.inf
            assert (g[idx] != g[:, None]).all()
        ref = -np.sort(-s, axis=1)[:, :5]
        assert np.abs(sims - ref).max() < 1e-5
        assert (idx != np.arange(400)[:, None]).all()
        assert np.allclose(np.take_along_axis(s, idx, axis=1), sims, atol=1e-5)
    sims, idx = knn(x.astype(np.float32), 3)
    assert idx[4, 0] == 9 and idx[9, 0] == 4 and sims[4, 0] > 1 - 1e-6


def test_mixing_ratio_is_one_for_random_labels_and_zero_for_clusters() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    labels = rng.integers(0, 5, size=600)
    _, idx = knn(x / np.linalg.norm(x, axis=1, keepdims=True), 10)
    assert abs(mixing_ratio(idx, labels)["ratio"] - 1.0) < 0.08
    clustered = np.eye(5, dtype=np.float32)[labels] + 0.01 * x[:, :5]
    _, idx = knn(clustered / np.linalg.norm(clustered, axis=1, keepdims=True), 10)
    assert mixing_ratio(idx, labels)["ratio"] == 0.0


def test_cameras_are_placed_from_the_calibration(synth_root: Path) -> None:
    hanco = HanCo(synth_root / "hanco")
    _, M = hanco.calib(0, 0)
    near, far = camera_partners(M)
    centres = np.array([np.linalg.inv(m)[:3, 3] for m in M])  # camera → world origin
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert (far == d.argmax(axis=1)).all()
    np.fill_diagonal(d, np.inf)
    assert (near == d.argmin(axis=1)).all() and (near != np.arange(8)).all()


# ----------------------------------------------------------------------- known encoders
def test_background_invariance_of_a_mask_encoder_is_perfect_and_of_a_histogram_poor(
        synth_root: Path) -> None:
    hanco = HanCo(synth_root / "hanco")
    scores = {}
    for name, net, read in (("mask", MaskEncoder(), read_mask),
                            ("histogram", HistogramEncoder(), None)):
        pairs = cosine_pairs(net, hanco, 32, draw_pairs(hanco, 150, SUBSETS, 0), workers=0,
                             read=read)
        table = pairs.table()
        assert set(table) == set(RELATIONS) and table["other_background"]["n"] > 100
        scores[name] = background_invariance(table)
        rows = draw_rows(hanco, 400, SUBSETS, 1)
        emb, _ = embed_rows(net, ImageRows(hanco.root, rows, 32, read), 64, 0, progress=False)
        _, idx = knn(emb, 10)
        scores[name]["mixing"] = mixing_ratio(idx, rows.subset)["ratio"]
    mask, hist = scores["mask"], scores["histogram"]
    assert mask["bg_cos_same_pose"] == pytest.approx(1.0, abs=1e-6)
    assert mask["bg_invariance"] > 0.99 and mask["mixing"] > 0.85, mask
    assert hist["bg_invariance"] < 0.3 and hist["mixing"] < 0.5, hist


def test_the_grid_finds_an_exact_duplicate_from_another_sequence_first(
        pretrained: Path, synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "hanco"
    shutil.copytree(synth_root / "hanco", root)
    hanco = HanCo(root)
    rows = draw_rows(hanco, 200, ("merged",), 0)
    q = 5
    other = int(np.flatnonzero(rows.sid != rows.sid[q])[0])
    src = image_path(root, "rgb_merged", int(rows.sid[q]), int(rows.cid[q]), int(rows.fid[q]))
    dst = image_path(root, "rgb_merged", int(rows.sid[other]), int(rows.cid[other]),
                     int(rows.fid[other]))
    shutil.copyfile(src, dst)
    enc = load_encoder(pretrained)
    emb, _ = embed_rows(enc.net, ImageRows(root, rows, 32), 64, 0, progress=False)
    from contra.embedding import read_keypoints

    table = EmbeddingTable(emb, read_keypoints(hanco, rows), rows, {})
    sims, idx = knn(emb, 5, groups=rows.sid)
    (row,) = grid_rows(table, [q], sims, idx, 5)
    assert row.neighbours[0] == other and row.cosines[0] > 1 - 1e-5
    expected = pair_pa_mm(table.keypoints[[q]], table.keypoints[[other]])[0]
    assert row.pa_mm[0] == pytest.approx(expected, rel=1e-9)
    assert all(rows.sid[j] != rows.sid[q] for j in row.neighbours)


# ------------------------------------------------------------------------- the commands
def test_figures_command_writes_every_figure_and_logs_to_the_run(
        pretrained: Path, synth_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs"
    assert cli_main(["figures", "--checkpoint", str(pretrained), "--data",
                     str(synth_root / "hanco"), "--n", "240", "--workers", "0", "--pairs", "60",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "background invariance" in printed and "logged to MLflow run" in printed
    for name in ("tsne.png", "cosine_pairs.png", "retrieval_grid.png", "summary.json"):
        assert (out / name).stat().st_size > 1000, name
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    assert m["n"] == 240 and 0 < m["pose_random_mm"] < 100 and m["pose_nn1_mm"] > 0
    from mlflow.tracking import MlflowClient

    run_dir = pretrained.parent.parent
    uri = json.loads((run_dir / "run.json").read_text())["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(load_checkpoint(pretrained)["mlflow_run_id"])
    for key in ("bg_invariance", "bg_mixing_ratio", "pose_nn1_mm", "pose_nn5_mm", "n"):
        assert run.data.metrics[f"embedding/{key}"] == pytest.approx(m[key], rel=1e-6), key
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/tsne.png", "figures/retrieval_grid.png", "figures/cosine_pairs.png",
            "figures/summary.json"} <= logged
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("case", ["not a checkpoint", "not an embed folder", "changed",
                                  "corrupt embed.json", "corrupt embeddings.npy",
                                  "short index row"])
def test_bad_inputs_are_one_line(case: str, pretrained: Path, synth_root: Path,
                                 table: EmbeddingTable, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    if case == "not a checkpoint":
        bad = tmp_path / "x.pt"
        bad.write_bytes(b"garbage")
        argv = ["embed", "--checkpoint", str(bad), "--data", str(synth_root / "hanco"),
                "--out", str(tmp_path / "o")]
    elif case == "not an embed folder":
        argv = ["figures", "--embeddings", str(tmp_path), "--out", str(tmp_path / "o")]
    elif case in ("corrupt embed.json", "corrupt embeddings.npy", "short index row"):
        emb = tmp_path / "emb"
        table.write(emb)
        if case == "short index row":
            lines = (emb / "index.csv").read_text().splitlines()
            (emb / "index.csv").write_text("\n".join([*lines[:3], "3,0", *lines[4:]]) + "\n")
        else:
            name = case.split()[1]
            (emb / name).write_bytes((emb / name).read_bytes()[:40])
        argv = ["figures", "--embeddings", str(emb), "--out", str(tmp_path / "o"), "--no-mlflow"]
    else:
        ck = tmp_path / "last.pt"
        shutil.copyfile(pretrained, ck)
        emb = tmp_path / "emb"
        info = dict(table.info, checkpoint={**table.info["checkpoint"], "path": str(ck)})
        EmbeddingTable(table.embeddings, table.keypoints, table.rows, info).write(emb)
        state = load_checkpoint(ck)
        state["step"] = 99
        torch.save(state, ck)
        argv = ["figures", "--embeddings", str(emb), "--out", str(tmp_path / "o"),
                "--no-mlflow"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contra: error: "), err
    assert {"not a checkpoint": "x.pt", "not an embed folder": "embeddings.npy",
            "changed": "embed again", "corrupt embed.json": "embed.json: not valid JSON",
            "corrupt embeddings.npy": "embeddings.npy: not a numpy array",
            "short index row": "index.csv: sid/fid/cid"}[case] in err[0]
