"""contra.instance against brute-force float64 references written as plain loops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from contra.instance import instance_top1, knn_accuracy


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_instance_top1(a: np.ndarray, b: np.ndarray) -> float:
    hits = 0
    for i in range(len(a)):
        sims = [_cos(a[i], b[j]) for j in range(len(b))]
        best = max(range(len(b)), key=lambda j: (sims[j], -j))  # ties → lowest index
        hits += best == i
    return 100.0 * hits / len(a)


def ref_knn(q: np.ndarray, yq: np.ndarray, g: np.ndarray, yg: np.ndarray, k: int) -> float:
    hits = 0
    for i in range(len(q)):
        sims = [_cos(q[i], g[j]) for j in range(len(g))]
        ranked = sorted(range(len(g)), key=lambda j: (-sims[j], j))[:k]
        votes = Counter(int(yg[j]) for j in ranked)
        top = max(votes.values())
        label = next(int(yg[j]) for j in ranked if votes[int(yg[j])] == top)
        hits += label == yq[i]
    return 100.0 * hits / len(q)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instance_top1_matches_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(60, 8))
    b = a + rng.normal(scale=0.9, size=a.shape)  # noisy partners: some hits, some misses
    got = instance_top1(a, b)
    assert got == pytest.approx(ref_instance_top1(a, b), abs=1e-12)
    assert 0 < got < 100


def test_instance_top1_normalises_rows_and_accepts_torch() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    scales = rng.uniform(0.1, 10, size=(40, 1))
    expected = ref_instance_top1(a, b)
    assert instance_top1(torch.from_numpy(a * scales), b / scales) == pytest.approx(expected)
    assert instance_top1(a, a) == 100.0


def test_instance_top1_ties_go_to_the_lowest_index() -> None:
    b = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 tie for any query
    a = np.array([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    # row 0 → 0 (hit), row 1 → 0 (tie, lowest index: miss), row 2 → 2 (hit)
    assert instance_top1(a, b) == pytest.approx(200.0 / 3)
    assert ref_instance_top1(a, b) == pytest.approx(200.0 / 3)


@pytest.mark.parametrize(("seed", "k"), [(0, 1), (1, 5), (2, 4), (3, 7)])
def test_knn_accuracy_matches_the_brute_force_reference(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 6))
    yg, yq = rng.integers(4, size=80), rng.integers(4, size=50)
    g = centres[yg] + rng.normal(scale=1.2, size=(80, 6))
    q = centres[yq] + rng.normal(scale=1.2, size=(50, 6))
    got = knn_accuracy(q, yq, g, yg, k=k)
    assert got == pytest.approx(ref_knn(q, yq, g, yg, k), abs=1e-12)
    assert 0 < got < 100


def test_knn_vote_tie_goes_to_the_most_similar_neighbour() -> None:
    # query along x; gallery ranked by angle: labels 7, 3, 3, 7 → a 2–2 tie, the nearest says 7
    angles = np.deg2rad([5.0, 10.0, 20.0, 30.0, 80.0])
    g = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    yg = np.array([7, 3, 3, 7, 3])
    q, yq7, yq3 = np.array([[1.0, 0.0]]), np.array([7]), np.array([3])
    assert knn_accuracy(q, yq7, g, yg, k=4) == 100.0
    assert knn_accuracy(q, yq3, g, yg, k=4) == 0.0
    assert knn_accuracy(q, yq3, g, yg, k=5) == 100.0  # 3 votes against 2
    assert ref_knn(q, yq7, g, yg, 4) == 100.0


def test_knn_equal_similarities_rank_by_gallery_index() -> None:
    g = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # three exact ties
    yg = np.array([1, 2, 2, 0])
    q = np.array([[1.0, 0.1]])
    # k=1: index 0 (label 1); k=2: 1 vs 2 tie → most similar (index 0) → 1; k=3: 2 wins
    assert [knn_accuracy(q, [1], g, yg, k=k) for k in (1, 2, 3)] == [100.0, 100.0, 0.0]
    assert [ref_knn(q, np.array([1]), g, yg, k) for k in (1, 2, 3)] == [100.0, 100.0, 0.0]


def test_blocks_of_rows_agree_with_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    g, yg = rng.normal(size=(30, 4)), rng.integers(3, size=30)
    q, yq = rng.normal(size=(25, 4)), rng.integers(3, size=25)
    b = q + 0.8 * rng.normal(size=q.shape)
    whole = knn_accuracy(q, yq, g, yg, k=3), instance_top1(q, b)
    monkeypatch.setattr("contra.instance._ROWS_PER_BLOCK", 7)
    assert (knn_accuracy(q, yq, g, yg, k=3), instance_top1(q, b)) == whole
    assert whole[0] == pytest.approx(ref_knn(q, yq, g, yg, 3))
    assert whole[1] == pytest.approx(ref_instance_top1(q, b))


def test_bad_shapes_and_k_are_errors() -> None:
    a = np.zeros((3, 2)) + 1
    with pytest.raises(ValueError, match="same shape"):
        instance_top1(a, np.ones((4, 2)))
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(a, [0, 1, 2], a, [0, 1, 2], k=4)
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(a, [0, 1], a, [0, 1, 2])
