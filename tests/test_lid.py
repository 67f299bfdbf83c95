"""Tests for analyses.lid (local intrinsic dimension estimators)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.lid import MLE, LocalTwoNN, TwoNN, knn, twonn_from_mu


def _embedded_cube(n: int, d: int, D: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, d)) @ rng.standard_normal((d, D))


def _blob(n: int, d: int, D: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, D))


def _np_twonn(X: np.ndarray, discard_fraction: float = 0.1, start: int = 1) -> float:
    """Plain numpy TwoNN (exact distances, through-origin least squares)."""
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    Ds = np.sort(D, axis=1)
    mu = np.sort(Ds[:, 1] / Ds[:, 0])
    n = len(mu)
    keep = int(n * (1 - discard_fraction))
    x = np.log(mu[:keep])
    y = -np.log(1 - np.arange(start, start + keep) / n)
    return float((x * y).sum() / (x * x).sum())


# ---------------------------------------------------------------- knn
@pytest.mark.parametrize("block", [7, 64, 4096])
def test_knn_matches_brute_force(block: int) -> None:
    X = np.random.default_rng(0).standard_normal((300, 12)).astype(np.float32)
    d, i = knn(X, 10, block=block)
    T = torch.from_numpy(X).double()
    full = torch.cdist(T, T)
    full.fill_diagonal_(float("inf"))
    ref_d, ref_i = torch.sort(full, dim=1)
    np.testing.assert_array_equal(i, ref_i[:, :10].numpy())
    np.testing.assert_allclose(d, ref_d[:, :10].numpy(), rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(d, axis=1) >= 0)


def test_knn_large_offset_keeps_precision() -> None:
    """Large common offset (massive activations) must not break neighbours."""
    X = np.random.default_rng(1).standard_normal((200, 8)) + 1e4
    d, i = knn(X, 5, block=50)
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    np.testing.assert_array_equal(i, np.argsort(D, axis=1)[:, :5])
    np.testing.assert_allclose(d, np.sort(D, axis=1)[:, :5], rtol=1e-9)


def test_knn_rejects_bad_k() -> None:
    with pytest.raises(ValueError):
        knn(np.zeros((5, 2)), 5)


# ---------------------------------------------------------------- TwoNN
@pytest.mark.parametrize("d", [2, 5])
def test_twonn_uniform_cube(d: int) -> None:
    X = _embedded_cube(3000, d, 20, seed=d)
    est = TwoNN().fit(X)
    assert est.dimension_ == pytest.approx(d, rel=0.12)
    assert est.n_duplicates_ == 0


@pytest.mark.parametrize(("convention", "start"), [("skdim-0.5", 1), ("skdim-0.3", 0)])
def test_twonn_equals_numpy_reference(convention: str, start: int) -> None:
    X = _embedded_cube(250, 3, 7, seed=3)
    est = TwoNN(convention=convention).fit(X)
    assert est.dimension_ == pytest.approx(_np_twonn(X, 0.1, start), abs=1e-10)


def test_twonn_conventions_direction() -> None:
    X = _embedded_cube(1000, 4, 20, seed=4)
    d05 = TwoNN(convention="skdim-0.5").fit(X).dimension_
    d03 = TwoNN(convention="skdim-0.3").fit(X).dimension_
    assert d03 < d05


def test_twonn_drops_duplicates_and_validates() -> None:
    X = _embedded_cube(500, 2, 5, seed=5)
    est = TwoNN().fit(np.vstack([X, X[:10]]))
    assert est.n_duplicates_ == 20 and np.isfinite(est.dimension_)
    with pytest.raises(ValueError):
        TwoNN(convention="skdim-9").fit(X)


def test_twonn_from_mu_batched_and_finite() -> None:
    mu = torch.rand(4, 50, dtype=torch.float64) + 1.0
    batched = twonn_from_mu(mu)
    single = torch.stack([twonn_from_mu(m) for m in mu])
    torch.testing.assert_close(batched, single)
    assert twonn_from_mu(torch.ones(50)).item() == 0.0  # degenerate, not NaN
    assert torch.isfinite(twonn_from_mu(mu, discard_fraction=0.0)).all()


# ---------------------------------------------------------------- LocalTwoNN
def test_local_twonn_blob() -> None:
    X = _blob(1200, 3, 10, seed=6)
    X = np.vstack([X, X[:25], X[:5]])  # 30 duplicate rows
    est = LocalTwoNN(n_neighbors=64).fit(X)
    assert est.n_duplicates_ == 30
    assert est.dimension_pw_.shape == (1200,)
    assert len(est.sample_indices_) == len(np.unique(X, axis=0))
    assert np.all(np.isfinite(est.dimension_pw_))
    assert est.dimension_ == pytest.approx(3.0, rel=0.12)
    assert est.dimension_ == pytest.approx(est.dimension_pw_.mean())


def test_local_twonn_subsample_seeded() -> None:
    X = _blob(600, 2, 6, seed=7)
    a = LocalTwoNN(n_neighbors=20, max_points=200, seed=1).fit(X)
    b = LocalTwoNN(n_neighbors=20, max_points=200, seed=1).fit(X)
    assert a.dimension_pw_.shape == (200,)
    np.testing.assert_array_equal(a.sample_indices_, b.sample_indices_)
    np.testing.assert_array_equal(a.dimension_pw_, b.dimension_pw_)


@pytest.mark.parametrize("convention", ["skdim-0.5", "skdim-0.3"])
def test_local_twonn_matches_slow_loop(convention: str) -> None:
    X = _embedded_cube(300, 4, 9, seed=8)
    k = 20
    start = 1 if convention == "skdim-0.5" else 0
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    nbrs = np.argsort(D, axis=1, kind="stable")[:, :k]
    ref = np.array([_np_twonn(X[nb], 0.1, start) for nb in nbrs])
    est = LocalTwoNN(n_neighbors=k, convention=convention, batch_size=37).fit(X)
    np.testing.assert_allclose(est.dimension_pw_, ref, rtol=0, atol=1e-6)


def test_local_twonn_torch_input() -> None:
    X = torch.from_numpy(_blob(200, 2, 5, seed=9)).float()
    est = LocalTwoNN(n_neighbors=16).fit(X)
    assert est.dimension_pw_.shape == (200,) and np.isfinite(est.dimension_)


# ---------------------------------------------------------------- MLE
def test_mle_uniform_cube() -> None:
    X = np.random.default_rng(10).random((3000, 4))
    est = MLE(n_neighbors=20).fit(X)
    assert est.dimension_ == pytest.approx(4.0, rel=0.12)
    assert est.dimension_pw_.shape == (3000,)
    inv = 1.0 / est.dimension_pw_
    assert est.dimension_ == pytest.approx(1.0 / inv.mean())


def test_mle_formula_single_point() -> None:
    X = np.random.default_rng(11).standard_normal((100, 3))
    k = 8
    est = MLE(n_neighbors=k).fit(X)
    D = np.sort(np.sqrt(((X[0] - X[1:]) ** 2).sum(-1)))[:k]
    m = 1.0 / np.mean(np.log(D[-1] / D[:-1]))
    assert est.dimension_pw_[0] == pytest.approx(m, rel=1e-10)


# ---------------------------------------------------------------- scikit-dimension
def test_matches_scikit_dimension() -> None:
    skdim = pytest.importorskip("skdim")
    X = _embedded_cube(600, 4, 30, seed=12)
    ref = skdim.id.TwoNN().fit(X).dimension_
    assert TwoNN().fit(X).dimension_ == pytest.approx(ref, abs=1e-10)
    pw = skdim.asPointwise(X[:300], skdim.id.TwoNN(), n_neighbors=30)
    ours = LocalTwoNN(n_neighbors=30).fit(X[:300]).dimension_pw_
    np.testing.assert_allclose(ours, pw, atol=1e-8)
