"""Gride (analyses/geometry/gride.py) against dadapy 0.3.4 and known manifolds.

Agreement with dadapy is checked to rtol 1e-6: both run the same bisection
(to width 1e-7) on the same likelihood, so the IDs differ only where the
sign of dL/dd flips under different summation order (at most 1e-7 absolute);
in practice they agree to the last bit.

dadapy needs NumPy 1 and jax, so it runs in its own venv (.venv/dadapy-ref, made by
scripts/setup.sh) through tests/dadapy_ref.py: the ``dadapy`` fixture computes every reference
value of this module in one subprocess. Without that venv the comparisons skip (fail under CI=true).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_swiss_roll

import dadapy_ref
from analyses.geometry.gride import Gride, LocalGride, gride_from_mu, gride_scale_curve

RTOL = 1e-6
N = 1000


def _gaussian(seed: int = 0) -> np.ndarray:
    """5-D standard Gaussian, rotated into R^20."""
    rng = np.random.default_rng(seed)
    X = np.zeros((N, 20))
    X[:, :5] = rng.standard_normal((N, 5))
    return X @ np.linalg.qr(rng.standard_normal((20, 20)))[0]


def _sphere(ambient: int, seed: int = 1) -> np.ndarray:
    """Uniform S^{ambient-1} in R^ambient."""
    X = np.random.default_rng(seed).standard_normal((N, ambient))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


DATA = {
    "gauss5-in-R20": (_gaussian(), 5),
    "S2-in-R3": (_sphere(3), 2),
    "S4-in-R5": (_sphere(5), 4),
    "swiss-roll": (make_swiss_roll(N, random_state=0)[0], 2),
}



def _with_duplicates() -> np.ndarray:
    X, _ = DATA["S2-in-R3"]
    return np.vstack([X, X[:20]])  # 40 of 1020 points (4%) with a zero-distance neighbour


LOCAL_CASES = [
    ("gauss5-in-R20", 64, 1, 2),
    ("S2-in-R3", 64, 2, 4),
    ("swiss-roll", 48, 16, 32),  # n2 close to k: brute-force fallback for some members
]


def _local_fit(name: str, n_neighbors: int, n1: int, n2: int) -> tuple[np.ndarray, LocalGride]:
    X, _ = DATA[name]
    X = X[:600]
    return X, LocalGride(n_neighbors=n_neighbors, n1=n1, n2=n2).fit(X)


@pytest.fixture(scope="module")
def local_fits():
    return {case: _local_fit(*case) for case in LOCAL_CASES}


@pytest.fixture(scope="module")
def dadapy(local_fits):
    """Every dadapy reference value of this module, ``{key: (ids, errs, rs)}``, from one run of
    ``Data(coordinates=X).return_id_scaling_gride(range_max=...)`` in the reference venv."""
    requests = {("curve", name): (X, 64) for name, (X, _) in DATA.items()}
    requests["duplicates"] = (_with_duplicates(), 16)
    for case, (X, loc) in local_fits.items():
        Xs = X[loc.sample_indices_]
        for i in range(0, len(Xs), 100):
            requests[("local", case, i)] = (Xs[loc.neighbors_[i]], case[3])
    return dadapy_ref.gride_scaling(requests)


@pytest.fixture(scope="module", params=list(DATA))
def curve(request):
    X, d_true = DATA[request.param]
    return request.param, X, d_true, gride_scale_curve(X, max_n2=64)


def test_scale_curve_matches_dadapy(curve, dadapy):
    name, X, _, ours = curve
    ids, errs, rs = dadapy[("curve", name)]
    assert [(s.n1, s.n2) for s in ours] == [(2 ** i, 2 ** (i + 1)) for i in range(6)]
    np.testing.assert_allclose([s.dimension for s in ours], ids, rtol=RTOL)
    np.testing.assert_allclose([s.error for s in ours], errs, rtol=RTOL)
    np.testing.assert_allclose([s.scale for s in ours], rs, rtol=RTOL)


def test_scale_curve_near_true_dimension(curve):
    _, _, d_true, ours = curve
    for s in ours[:4]:  # n2 <= 16: below the curvature scale at N = 1000
        assert abs(s.dimension - d_true) < 0.08 * d_true, s
        assert 0 < s.error < 0.1 * d_true


def test_global_gride_is_one_point_of_the_curve(curve):
    _, X, _, ours = curve
    g = Gride(n1=4, n2=8).fit(X)
    assert g.dimension_ == pytest.approx(ours[2].dimension, rel=1e-12)
    assert g.dimension_err_ == pytest.approx(ours[2].error, rel=1e-12)
    assert g.scale_ == pytest.approx(ours[2].scale, rel=1e-12)
    assert g.mu_.shape == (N,) and g.n_duplicates_ == 0


def test_n1_1_n2_2_is_the_twonn_mle():
    mu = torch.from_numpy(1 + np.random.default_rng(3).pareto(3.0, size=500))
    d, _ = gride_from_mu(mu, 1, 2)
    q95, q50 = np.percentile(mu.numpy(), [95, 50])
    kept = mu.numpy()[mu.numpy() < 20 * (q95 - q50) + q50]
    assert float(d) == pytest.approx((len(kept) - 1) / np.log(kept).sum(), abs=1e-7)


def test_batched_rows_are_independent_fits():
    mu = torch.from_numpy(1 + np.random.default_rng(4).pareto(2.0, size=(3, 200)))
    d, err = gride_from_mu(mu, 2, 4)
    for i in range(3):
        di, ei = gride_from_mu(mu[i], 2, 4)
        assert float(d[i]) == pytest.approx(float(di), rel=1e-12)
        assert float(err[i]) == pytest.approx(float(ei), rel=1e-12)


def test_one_rank_pair_per_row_equals_separate_fits():
    """Every scale of a curve in one call (n1, n2 per row) gives each scale's own fit, bit for bit."""
    mu = torch.from_numpy(1 + np.random.default_rng(5).pareto(2.5, size=(3, 300)))
    ranks = [(1, 2), (2, 4), (4, 8)]
    d, err = gride_from_mu(mu, [a for a, _ in ranks], [b for _, b in ranks])
    for i, (n1, n2) in enumerate(ranks):
        di, ei = gride_from_mu(mu[i], n1, n2)
        assert float(d[i]) == float(di) and float(err[i]) == float(ei)
    with pytest.raises(ValueError, match="one \\(n1, n2\\) per row"):
        gride_from_mu(mu[:2], [1, 2, 4], [2, 4, 8])
    with pytest.raises(ValueError, match="n1 < n2"):
        gride_from_mu(mu, [1, 4, 4], [2, 4, 8])


def test_kept_duplicates_handled_as_dadapy(dadapy):
    X = _with_duplicates()
    ours = gride_scale_curve(X, max_n2=16, drop_duplicates=False)
    ids, errs, _ = dadapy["duplicates"]
    np.testing.assert_allclose([s.dimension for s in ours], ids, rtol=RTOL)
    np.testing.assert_allclose([s.error for s in ours], errs, rtol=RTOL)
    g = Gride(drop_duplicates=False).fit(X)
    assert g.n_duplicates_ == 20 and len(g.mu_) == len(X)
    assert abs(g.dimension_ - 2) < 0.2


def test_duplicates_dropped_by_default():
    X, _ = DATA["S2-in-R3"]
    Xd = np.vstack([X, X[:150]])  # 11% duplicated: dadapy's outlier filter would fail
    g = Gride().fit(Xd)
    assert g.n_duplicates_ == 150 and len(g.mu_) == N
    np.testing.assert_array_equal(g.sample_indices_, np.arange(N))
    assert g.dimension_ == pytest.approx(Gride().fit(X).dimension_, rel=1e-12)
    assert gride_scale_curve(Xd, max_n2=8) == gride_scale_curve(X, max_n2=8)


@pytest.mark.parametrize("case", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_local_gride_matches_dadapy_per_point(case, local_fits, dadapy):
    X, loc = local_fits[case]
    Xs = X[loc.sample_indices_]
    assert loc.dimension_pw_.shape == loc.dimension_err_pw_.shape == (len(Xs),)
    for i in range(0, len(Xs), 100):
        ids, errs, _ = dadapy[("local", case, i)]
        assert loc.dimension_pw_[i] == pytest.approx(ids[-1], rel=RTOL)
        assert loc.dimension_err_pw_[i] == pytest.approx(errs[-1], rel=RTOL)


@pytest.mark.parametrize("name", list(DATA))
def test_local_gride_near_true_dimension(name):
    X, d_true = DATA[name]
    loc = LocalGride(n_neighbors=64).fit(X)
    assert abs(np.median(loc.dimension_pw_) - d_true) < 0.15 * d_true
    assert loc.dimension_ == pytest.approx(loc.dimension_pw_.mean())


def test_local_gride_drops_duplicate_rows():
    X, _ = DATA["S2-in-R3"]
    loc = LocalGride(n_neighbors=32).fit(np.vstack([X, X[:10]]))
    assert loc.n_duplicates_ == 10 and len(loc.dimension_pw_) == N
    assert np.isfinite(loc.dimension_pw_).all()


def test_bad_ranks_raise():
    X, _ = DATA["S2-in-R3"]
    with pytest.raises(ValueError, match="n1 < n2"):
        Gride(n1=2, n2=2).fit(X)
    with pytest.raises(ValueError, match="n_neighbors"):
        LocalGride(n_neighbors=8, n2=8).fit(X)
    with pytest.raises(ValueError, match="max_n2"):
        gride_scale_curve(X[:2])


def test_scale_curve_from_given_distances():
    """The curve from a LID fit's neighbour distances (no second search) is the curve; wrong
    distances are refused."""
    from analyses.geometry.lid import LocalTwoNN

    X = np.random.default_rng(5).normal(size=(600, 12)) @ np.random.default_rng(6).normal(size=(12, 40))
    est = LocalTwoNN(n_neighbors=40, max_points=None).fit(X)
    assert gride_scale_curve(X, max_n2=40, distances=est.distances_) == gride_scale_curve(X, max_n2=40)
    with pytest.raises(ValueError, match="distances must hold"):
        gride_scale_curve(X, max_n2=64, distances=est.distances_)
