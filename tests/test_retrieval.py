"""Pose-retrieval monitor: PA error matrix against the official alignment, the metric's
references, the labelled HanCo set (determinism, skipping bad frames) and the encoder path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from netutil import free_port
from torch import nn

from contra.augment import decode_rgb
from contra.data.hanco import HanCo
from contra.metrics import align_w_scale
from contra.moco import MoCo
from contra.nets import EmbedNet
from contra.retrieval import (
    RetrievalConfig,
    RetrievalMonitor,
    RetrievalSet,
    embed,
    format_report,
    nearest_other,
    pa_error_matrix,
    retrieval_errors,
    summarise,
    to_network,
)

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> object:
    """One intra-op thread: on shared, busy cores two spin-waiting threads run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ synthetic poses
def _poses(n_seq: int, per_seq: int, seed: int, rotate: bool = False) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Hand-sized keypoints: each frame is one of 5 shared poses plus small motion, placed in
    the world with its own translation, scale (and optionally rotation). Sequences share poses,
    so a good other-sequence neighbour exists for most frames."""
    rng = np.random.default_rng(seed)
    poses = rng.normal(scale=0.04, size=(21, 3)) + rng.normal(scale=0.02, size=(5, 21, 3))
    n = n_seq * per_seq
    kp = poses[rng.integers(0, 5, size=n)] + rng.normal(scale=0.002, size=(n, 21, 3))
    kp *= rng.uniform(0.8, 1.2, size=(n, 1, 1))
    if rotate:
        q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
        kp = kp @ q
    kp += rng.normal(scale=0.3, size=(n, 1, 3))
    return kp, np.repeat(np.arange(n_seq), per_seq)


def _kp_embedding(kp: np.ndarray) -> np.ndarray:
    """Flattened keypoints, centred and scale-normalised (translation/scale invariant)."""
    centred = kp - kp.mean(axis=1, keepdims=True)
    return (centred / np.linalg.norm(centred, axis=(1, 2), keepdims=True)).reshape(len(kp), -1)


def _brute_force(emb: np.ndarray, kp: np.ndarray, seq: np.ndarray) -> dict[str, float]:
    """Double loop: one align_w_scale per pair, cosine similarity per pair, float64."""
    n = len(kp)
    err = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            aligned = align_w_scale(kp[i][None], kp[j][None])[0]
            err[i, j] = np.linalg.norm(kp[i] - aligned, axis=1).mean()
    nn_e, rnd_e, orc_e = [], [], []
    for i in range(n):
        others = [j for j in range(n) if seq[j] != seq[i]]
        cos = [emb[i] @ emb[j] / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j]))
               for j in others]
        nn_e.append(err[i, others[int(np.argmax(cos))]])
        rnd_e.append(np.mean([err[i, j] for j in others]))
        orc_e.append(min(err[i, j] for j in others))
    return {"nn_mm": 1000 * np.mean(nn_e), "random_mm": 1000 * np.mean(rnd_e),
            "oracle_mm": 1000 * np.mean(orc_e)}


@pytest.mark.parametrize("chunk", [None, 7])
def test_errors_match_brute_force_align_w_scale(chunk: int | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """All three numbers equal a per-pair loop over the official alignment (1e-9 mm); a tiny
    block size exercises the chunked path (one query row per block)."""
    if chunk is not None:
        monkeypatch.setattr("contra.retrieval._PAIRS_PER_CHUNK", chunk)
    kp, seq = _poses(4, 4, seed=1, rotate=True)
    emb = np.random.default_rng(2).normal(size=(len(kp), 8))
    got = retrieval_errors(emb, kp, seq)
    want = _brute_force(emb, kp, seq)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["oracle_mm"] <= got["nn_mm"] and got["oracle_mm"] <= got["random_mm"]


def test_error_matrix_matches_batched_align_w_scale_on_all_pairs() -> None:
    kp, _ = _poses(5, 6, seed=3, rotate=True)
    i, j = (a.ravel() for a in np.indices((len(kp), len(kp))))
    want = np.linalg.norm(kp[i] - align_w_scale(kp[i], kp[j]), axis=-1).mean(axis=-1)
    np.testing.assert_allclose(pa_error_matrix(kp).ravel(), want, rtol=0, atol=1e-12)


def test_exact_similarity_copies_are_retrieved_with_zero_error() -> None:
    """Sequence 1 holds translated and scaled (unrotated) copies of sequence 0's frames. The
    centred, norm-scaled keypoint vector is invariant to both, so each copy has cosine 1 — the
    unique maximum — and PA alignment with scale undoes the transform: nn = oracle = 0, up to
    the official +1e-8 m on the Frobenius norms, which breaks exact scale invariance (~1e-5 mm)."""
    kp, _ = _poses(1, 6, seed=4)
    copies = kp * 1.3 + np.array([0.5, -0.2, 1.0])
    kp2, seq = np.concatenate([kp, copies]), np.repeat([0, 1], 6)
    out = retrieval_errors(_kp_embedding(kp2), kp2, seq)
    assert out["nn_mm"] == pytest.approx(0.0, abs=1e-4)
    assert out["oracle_mm"] == pytest.approx(0.0, abs=1e-4)
    assert out["random_mm"] > 5.0
    np.testing.assert_array_equal(nearest_other(_kp_embedding(kp2), seq),
                                  np.r_[np.arange(6, 12), np.arange(6)])


def test_pose_embedding_is_near_oracle_random_embedding_near_random() -> None:
    """Keypoints as the embedding (no rotation between frames, so the normalised-vector NN is
    close to, but not exactly, the PA-optimal one) land near the oracle and far below random;
    random embeddings land near the random-neighbour expectation."""
    kp, seq = _poses(10, 6, seed=5)
    pose = retrieval_errors(_kp_embedding(kp), kp, seq)
    assert pose["oracle_mm"] <= pose["nn_mm"] <= 1.05 * pose["oracle_mm"]
    assert pose["nn_mm"] < 0.2 * pose["random_mm"]
    rng = np.random.default_rng(6)
    rand = [retrieval_errors(rng.normal(size=(len(kp), 32)), kp, seq)["nn_mm"]
            for _ in range(8)]
    assert 0.9 * pose["random_mm"] < np.mean(rand) < 1.1 * pose["random_mm"]


def test_same_sequence_neighbours_are_never_chosen() -> None:
    """Every frame has an identical twin (same keypoints, same embedding) in its own sequence;
    allowing it would give nn = 0. The neighbours are all from other sequences instead."""
    kp, seq = _poses(4, 3, seed=7)
    kp, seq = np.repeat(kp, 2, axis=0), np.repeat(seq, 2)
    emb = _kp_embedding(kp)
    nbr = nearest_other(emb, seq)
    assert (seq[nbr] != seq).all()
    out = retrieval_errors(emb, kp, seq)
    assert out["nn_mm"] >= out["oracle_mm"] > 1.0
    with pytest.raises(ValueError, match="own sequence"):
        summarise(pa_error_matrix(kp), np.arange(len(kp)) ^ 1, seq)


def test_one_sequence_is_an_error() -> None:
    kp, _ = _poses(1, 4, seed=8)
    with pytest.raises(ValueError, match="at least 2 sequences"):
        retrieval_errors(np.ones((4, 3)), kp, np.zeros(4, int))


def test_error_matrix_speed_for_256_frames() -> None:
    import time
    kp, _ = _poses(32, 8, seed=9, rotate=True)
    start = time.perf_counter()
    pa_error_matrix(kp)
    assert time.perf_counter() - start < 5.0  # ~0.5 s on 2 shared cores


# ---------------------------------------------------------------------------- config and report
def test_config_validation_and_schedule() -> None:
    cfg = RetrievalConfig(every_epochs=3)
    assert [e for e in range(1, 10) if cfg.due(e)] == [3, 6, 9]
    assert not any(RetrievalConfig(every_epochs=0).due(e) for e in range(5))
    for bad in ({"subset": "nope"}, {"feature": "logits"}, {"frames": 1},
                {"every_epochs": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="monitor"):
            RetrievalConfig(**bad)


def test_format_report() -> None:
    line = format_report({"nn_mm": 12.34, "random_mm": 25.1, "oracle_mm": 6.0, "n": 256.0},
                         {"random_init_nn_mm": 18.9})
    assert line == ("retrieval (PA keypoint error of the NN from another sequence, mm, n=256): "
                    "encoder 12.3 | random-init 18.9 | random neighbour 25.1 | oracle 6.0")
    assert "random-init" not in format_report({"nn_mm": 1, "random_mm": 2, "oracle_mm": 0.5})


# ------------------------------------------------------------------------------ the HanCo set
def test_from_hanco_is_deterministic_and_network_ready(synth_root: Path) -> None:
    root = synth_root / "hanco"
    hanco = HanCo(root)
    cfg = RetrievalConfig(frames=20, seed=3)
    a = RetrievalSet.from_hanco(root, cfg, SIZE)
    b = RetrievalSet.from_hanco(hanco, cfg, SIZE)
    assert len(a) == 20 and a.skipped == {}
    for name in ("sequences", "frames", "cameras", "keypoints"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.images, b.images)
    assert a.images.shape == (20, 3, SIZE, SIZE) and a.images.dtype == torch.float32
    assert a.keypoints.shape == (20, 21, 3) and a.keypoints.dtype == np.float64
    assert -0.5 <= a.images.min() < a.images.max() <= 0.5
    assert len({(s, f, c) for s, f, c in zip(a.sequences, a.frames, a.cameras, strict=True)}) \
        == len({(s, f) for s, f in zip(a.sequences, a.frames, strict=True)}) == 20
    for k in (0, 7):
        s, f, c = int(a.sequences[k]), int(a.frames[k]), int(a.cameras[k])
        np.testing.assert_array_equal(a.keypoints[k], hanco.xyz(s, f))
        folder = "rgb_merged" if hanco.is_green_screen(s, f) else "rgb"
        want = to_network(decode_rgb(hanco.image_path(folder, s, c, f).read_bytes()), SIZE)
        assert torch.equal(a.images[k], want)
    other = RetrievalSet.from_hanco(root, RetrievalConfig(frames=20, seed=4), SIZE)
    assert not np.array_equal(other.frames * 10 + other.sequences, a.frames * 10 + a.sequences)


def test_from_hanco_caps_frames_and_honours_include_test(synth_root: Path) -> None:
    hanco = HanCo(synth_root / "hanco")
    meta = hanco.meta
    every = RetrievalSet.from_hanco(hanco, RetrievalConfig(frames=256, subset="homo"), SIZE)
    assert len(every) == meta.n_total
    test_sids = {s for s in range(meta.n_sequences) if not hanco.is_green_screen(s, 0)}
    assert test_sids and test_sids <= set(every.sequences.tolist())
    gs = RetrievalSet.from_hanco(hanco, RetrievalConfig(frames=256, include_test=False), SIZE)
    assert len(gs) == int(meta.is_train.sum())
    assert not test_sids & set(gs.sequences.tolist())


def _partial_copy(src: Path, dst: Path) -> Path:
    """meta.json and xyz/ copied (to damage them), image folders linked."""
    dst.mkdir()
    shutil.copy(src / "meta.json", dst / "meta.json")
    shutil.copytree(src / "xyz", dst / "xyz")
    for folder in ("rgb", "rgb_merged"):
        (dst / folder).symlink_to(src / folder)
    return dst


def test_bad_xyz_files_are_skipped_and_counted(synth_root: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    root = _partial_copy(synth_root / "hanco", tmp_path / "hanco")
    (root / "xyz" / "0001" / "00000002.json").unlink()
    (root / "xyz" / "0002" / "00000004.json").write_text("[[1, 2]")
    data = RetrievalSet.from_hanco(root, RetrievalConfig(frames=256), SIZE)
    n_total = HanCo(root).meta.n_total
    assert len(data) == n_total - 2 and data.skipped == {"xyz": 2}
    pairs = set(zip(data.sequences.tolist(), data.frames.tolist(), strict=True))
    assert not {(1, 2), (2, 4)} & pairs
    assert "skipped 2 frames" in caplog.text


def test_missing_image_is_skipped_and_counted(synth_root: Path, tmp_path: Path) -> None:
    src = synth_root / "hanco"
    root = tmp_path / "hanco"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("rgb_*", "mask_*", "shape"))
    cfg = RetrievalConfig(frames=256, subset="gs")  # every frame reads rgb/
    first = RetrievalSet.from_hanco(root, cfg, SIZE)
    s, f, c = (int(x[0]) for x in (first.sequences, first.frames, first.cameras))
    (root / "rgb" / f"{s:04d}" / f"cam{c}" / f"{f:08d}.jpg").write_bytes(b"not a jpeg")
    data = RetrievalSet.from_hanco(root, cfg, SIZE)
    assert data.skipped == {"image": 1} and len(data) == len(first) - 1


def test_fewer_than_two_sequences_names_the_root(synth_root: Path, tmp_path: Path) -> None:
    root = _partial_copy(synth_root / "hanco", tmp_path / "hanco")
    for seq in sorted((root / "xyz").iterdir())[1:]:
        shutil.rmtree(seq)
    with pytest.raises(ValueError, match=f"{root}.*at least 2 sequences"):
        RetrievalSet.from_hanco(root, RetrievalConfig(frames=256), SIZE)


# -------------------------------------------------------------------------- encoders, monitor
def _tiny_set(n: int = 12) -> RetrievalSet:
    kp, seq = _poses(3, n // 3, seed=10)
    images = torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) - 0.5
    return RetrievalSet(images=images, keypoints=kp, sequences=seq.astype(np.int64),
                        frames=np.arange(n, dtype=np.int64), cameras=np.zeros(n, np.int64))


def test_embed_restores_modes_and_is_batch_independent() -> None:
    torch.manual_seed(0)
    net = EmbedNet("resnet18", dilate_last=False)
    net.train()
    net.bn1.eval()  # a deliberately frozen BN must stay frozen
    modes = {name: m.training for name, m in net.named_modules()}
    images = _tiny_set(6).images
    a = embed(net, images, "backbone", batch_size=4)
    b = embed(net, images, "backbone", batch_size=64)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert a.shape == (6, net.feat_dim) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(6))
    e = embed(net, images, "embedding", batch_size=4)
    assert e.shape == (6, 128) and not e.requires_grad
    with pytest.raises(TypeError, match="features"):
        embed(nn.Flatten(), images, "backbone")


def test_embed_unwraps_ddp_and_moco() -> None:
    """A DDP-wrapped MoCo model embeds with its query encoder, as the bare encoder does."""
    moco = MoCo("resnet18", m=0.5, dilate_last=False)
    with torch.no_grad():  # make the key encoder differ, so picking it would be caught
        for p in moco.encoder_k.parameters():
            p.add_(0.1)
    images = _tiny_set(6).images
    want = embed(moco.encoder_q, images, batch_size=4)
    assert not torch.allclose(want, embed(moco.encoder_k, images, batch_size=4))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(moco)
        torch.testing.assert_close(embed(wrapped, images, batch_size=4), want)
        assert wrapped.training and moco.encoder_q.training
    finally:
        dist.destroy_process_group()


def test_monitor_evaluate_and_cached_baseline(synth_root: Path) -> None:
    data = RetrievalSet.from_hanco(synth_root / "hanco", RetrievalConfig(frames=12), SIZE)
    cfg = RetrievalConfig(frames=12, batch_size=8)
    monitor = RetrievalMonitor(data, cfg, "cpu")
    torch.manual_seed(0)
    net = EmbedNet("resnet18", dilate_last=False)
    out = monitor.evaluate(net)
    assert {"nn_mm", "random_mm", "oracle_mm", "n"} <= out.keys() and out["n"] == 12
    assert all(np.isfinite(v) for v in out.values())
    assert 0 < out["oracle_mm"] <= out["nn_mm"] and out["oracle_mm"] <= out["random_mm"]
    assert net.training
    neighbours = monitor.neighbours.copy()
    calls = []

    def make() -> nn.Module:
        calls.append(1)
        return EmbedNet("resnet18", dilate_last=False)

    rng_state = torch.get_rng_state()
    base = monitor.baseline(make)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the training RNG is untouched
    assert monitor.baseline(make) == base and len(calls) == 1
    assert set(base) == {"random_init_nn_mm"} and np.isfinite(base["random_init_nn_mm"])
    np.testing.assert_array_equal(monitor.neighbours, neighbours)
    fresh = RetrievalMonitor(data, cfg).baseline(make)
    assert fresh == base  # seeded: reproducible across monitors
    assert "random-init" in format_report(out, base)
