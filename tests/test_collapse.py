"""Tests of analyses.geometry.collapse: streaming == batch, brute-force references, ETF, class selection."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from analyses.geometry import CollapseStats
from analyses.geometry import collapse
from analyses.geometry.collapse import bootstrap_intervals

RTOL = 1e-10


def _data(seed: int = 0, c: int = 5, d: int = 8, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    centres = rng.normal(size=(c, d)) * 2.0
    x = centres[y] + rng.normal(size=(n, d)) + 0.5
    return x, y


def _brute(x: np.ndarray, y: np.ndarray, classes: list[int]) -> dict[str, float]:
    """Direct numpy reference from the full data, explicit loops over pairs."""
    keep = np.isin(y, classes)
    x, y = x[keep], y[keep]
    c, d = len(classes), x.shape[1]
    mu = np.stack([x[y == k].mean(0) for k in classes])
    mu_g = mu.mean(0)
    m = mu - mu_g
    s_w = np.zeros((d, d))
    for xi, yi in zip(x, y):
        r = xi - mu[classes.index(yi)]
        s_w += np.outer(r, r)
    sigma_b = sum(np.outer(v, v) for v in m) / c
    ev, vec = np.linalg.eigh(sigma_b)
    keep = ev > RTOL * ev.max()
    nc1 = np.trace(s_w / len(x) @ (vec[:, keep] / ev[keep]) @ vec[:, keep].T) / c
    norms = np.linalg.norm(m, axis=1)
    cos = [m[i] @ m[j] / (norms[i] * norms[j]) for i, j in itertools.combinations(range(c), 2)]
    var = [np.mean(((x[y == k] - mu[i]) ** 2).sum(1)) for i, k in enumerate(classes)]
    cd, cd4, kern = [], [], []
    u_m = m / norms[:, None]
    for i, j in itertools.combinations(range(c), 2):
        dist2 = ((mu[i] - mu[j]) ** 2).sum()
        cd.append((var[i] + var[j]) / (2 * dist2))
        cd4.append((var[i] + var[j]) / (2 * dist2**2))
        kern.append(np.log(1.0 / np.linalg.norm(u_m[i] - u_m[j])))
    glob = x.mean(0)
    s_b = sum((y == k).sum() * np.outer(mu[i] - glob, mu[i] - glob) for i, k in enumerate(classes))
    fisher = np.trace(np.linalg.pinv(s_w) @ s_b)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    same, diff = [], []
    for i, j in itertools.combinations(range(len(x)), 2):
        (same if y[i] == y[j] else diff).append(u[i] @ u[j])
    mn = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    cone_means = [mn[i] @ mn[j] for i, j in itertools.combinations(range(c), 2)]
    return {
        "nc1": nc1,
        "nc2_equinorm": norms.std() / norms.mean(),
        "nc2_equiangular": np.std(cos),
        "nc2_maxangle": np.mean(np.abs(np.array(cos) + 1 / (c - 1))),
        "cdnv": np.mean(cd),
        "cdnv_dist4": np.mean(cd4),
        "gnc2": np.var(kern),
        "gnc2_mean": np.mean(kern),
        "fisher_ratio": fisher,
        "cone": np.mean(same + diff),
        "cone_same": np.mean(same),
        "cone_diff": np.mean(diff),
        "cone_means": np.mean(cone_means),
    }


def _assert_close(a: dict[str, float], b: dict[str, float], tol: float = 1e-8) -> None:
    for k in b:
        assert a[k] == pytest.approx(b[k], rel=tol, abs=tol), k


def test_streaming_equals_batch() -> None:
    x, y = _data()
    w = np.random.default_rng(1).normal(size=(5, 8))
    batch = CollapseStats().fit(x, y).metrics(classifier=w, features=x, predictions=y)
    stream = CollapseStats()
    for lo, hi in [(0, 1), (1, 37), (37, 38), (38, 120), (120, 200)]:
        stream.partial_fit(torch.from_numpy(x[lo:hi]), torch.from_numpy(y[lo:hi]))
    got = stream.metrics(classifier=torch.from_numpy(w), features=x, predictions=y)
    assert set(got) == set(batch)
    _assert_close(got, batch)


def test_matches_brute_force() -> None:
    x, y = _data()
    got = CollapseStats().fit(x, y).metrics()
    _assert_close(got, _brute(x, y, list(range(5))))
    # nc3 and nc4 by hand
    s = CollapseStats().fit(x, y)
    mu = np.stack([x[y == k].mean(0) for k in range(5)])
    m = mu - mu.mean(0)
    w = np.random.default_rng(2).normal(size=(7, 8))
    ref3 = ((w[:5] / np.linalg.norm(w[:5]) - m / np.linalg.norm(m)) ** 2).sum()
    assert s.nc3(w) == pytest.approx(ref3, rel=1e-10)
    pred = np.random.default_rng(3).integers(0, 5, len(x))
    nearest = [int(np.argmin([np.linalg.norm(xi - mk) for mk in mu])) for xi in x]
    assert s.nc4(x, pred) == pytest.approx(np.mean(np.array(nearest) == pred))


def test_brute_force_with_selection() -> None:
    x, y = _data(seed=4, c=6, n=150)
    y[:3] = 9  # class 9: 3 samples
    s = CollapseStats(min_count=4, top_classes=4).fit(x, y)
    counts = {k: int((y == k).sum()) for k in np.unique(y)}
    top = sorted(sorted((k for k in counts if counts[k] >= 4), key=lambda k: (-counts[k], k))[:4])
    assert list(s.used_labels()) == top
    _assert_close(s.metrics(), _brute(x, y, top))


def _simplex_etf(c: int, d: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, c)))
    return np.sqrt(c / (c - 1)) * (np.eye(c) - np.ones((c, c)) / c) @ q.T * 3.0


def test_simplex_etf_collapse() -> None:
    rng = np.random.default_rng(5)
    c, d = 6, 10
    m = _simplex_etf(c, d, rng)
    y = np.repeat(np.arange(c), 30)
    x = m[y] + 1e-6 * rng.normal(size=(len(y), d)) + 4.0  # shifted: centring matters
    s = CollapseStats().fit(x, y)
    mu = np.stack([x[y == k].mean(0) for k in range(c)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = s.metrics(classifier=mu - mu.mean(0), features=x, predictions=y)
    assert out["nc1"] < 1e-10
    assert out["nc2_equinorm"] < 1e-5
    assert out["nc2_equiangular"] < 1e-5
    assert out["nc2_maxangle"] < 1e-5
    assert out["nc3"] < 1e-12
    assert out["nc4"] == 1.0
    assert out["cdnv"] < 1e-10
    # with W = the exact ETF too
    assert s.nc3(m) < 1e-10


def test_min_count_and_top_classes() -> None:
    y = np.array([0] * 10 + [1] * 6 + [2] * 6 + [3] * 2 + [4])
    x = np.random.default_rng(6).normal(size=(len(y), 4))
    assert list(CollapseStats().fit(x, y).used_labels()) == [0, 1, 2, 3]
    assert list(CollapseStats(min_count=1).fit(x, y).used_labels()) == [0, 1, 2, 3, 4]
    assert list(CollapseStats(min_count=3).fit(x, y).used_labels()) == [0, 1, 2]
    assert list(CollapseStats(top_classes=2).fit(x, y).used_labels()) == [0, 1]  # tie 1/2: smaller
    with pytest.raises(ValueError, match="at least 2 classes"):
        CollapseStats(min_count=7).fit(x, y).metrics()
    with pytest.raises(ValueError, match="at least 2 classes"):
        CollapseStats(top_classes=1).fit(x, y).metrics()


def test_fisher_warns_when_singular() -> None:
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(3), 3)
    x = rng.normal(size=(9, 12))  # 6 within-class dof < D = 12
    with pytest.warns(RuntimeWarning, match="singular"):
        CollapseStats().fit(x, y).metrics()


def test_bad_input_shapes() -> None:
    with pytest.raises(ValueError):
        CollapseStats().partial_fit(np.zeros((3, 2)), np.zeros(4, dtype=int))
    s = CollapseStats().partial_fit(np.zeros((3, 2)), np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        s.partial_fit(np.zeros((3, 5)), np.array([0, 1, 1]))


def test_pooled_scatter_refuses_inexact_selection() -> None:
    x, y = _data()
    s = CollapseStats(top_classes=3, per_class_scatter=False).fit(x, y)
    with pytest.raises(RuntimeError, match="per_class_scatter"):
        s.metrics()
    exact = CollapseStats(top_classes=3).fit(x, y).metrics()  # auto: per-class scatters
    assert exact["n_classes"] == 3.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collapse_metrics_grow_with_noise(seed: int) -> None:
    """Simplex ETF means plus isotropic noise sigma * Z. In expectation NC1 grows like
    sigma^2 (Sigma_W = sigma^2 I, Sigma_B ~ the ETF) and so does the CDNV; the NC2
    deviations (equinorm, equiangularity, max-angle) come from the noise in the estimated
    class means, of size sigma / sqrt(n_c), so they grow with sigma too; the Fisher ratio
    falls. The same draw Z is scaled for every sigma (common random numbers), so the
    ordering reflects sigma and not sampling luck of independent draws."""
    rng = np.random.default_rng(seed)
    c, d, n = 6, 10, 200
    m = _simplex_etf(c, d, rng)
    y = np.repeat(np.arange(c), n)
    z = rng.normal(size=(len(y), d))
    sigmas = [0.0, 0.1, 0.3, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sigma = 0: singular S_W
        out = [CollapseStats().fit(m[y] + s * z + 4.0, y).metrics() for s in sigmas]
    assert out[0]["nc1"] < 1e-20
    for key in ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle"):
        vals = [o[key] for o in out]
        assert all(a < b for a, b in zip(vals, vals[1:])), (key, vals)
    # sigma = 0: S_W is pure rounding residue (Fisher ~1e31, meaningless), so start at 0.1
    fisher = [o["fisher_ratio"] for o in out[1:]]
    assert all(a > b for a, b in zip(fisher, fisher[1:])), fisher
    # NC1 ~ sigma^2: tenfold noise, about hundredfold NC1
    assert out[3]["nc1"] / out[1]["nc1"] == pytest.approx(100, rel=0.05)


# ---------------------------------------------------------------- GNC2, UNC3, CDNV naming


def test_gnc2_and_unc3_match_brute_force() -> None:
    """GNC2 = population variance over pairs i < j of log(1/||u_i - u_j||) (the library's
    ``kernel_stats(M, mG, log_kernel)[1]``), UNC3 = torch-style sample variance of the cosines
    between classifier rows and centred means, both from the raw samples by loops."""
    x, y = _data(seed=11, c=7, d=9, n=300)
    w = np.random.default_rng(12).normal(size=(10, 9))
    out = CollapseStats().fit(x, y).metrics(classifier=w)
    mu = np.stack([x[y == k].mean(0) for k in range(7)])
    m = mu - mu.mean(0)
    u = [v / np.linalg.norm(v) for v in m]
    kern = [-np.log(np.linalg.norm(u[i] - u[j])) for i, j in itertools.combinations(range(7), 2)]
    assert out["gnc2"] == pytest.approx(np.var(kern), rel=1e-10)
    assert out["gnc2_mean"] == pytest.approx(np.mean(kern), rel=1e-10)
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(w[:7]), torch.from_numpy(m))
    assert out["unc3"] == pytest.approx(float(cos.var()), rel=1e-10)  # torch.var: ddof = 1
    assert out["unc3_mean"] == pytest.approx(float(cos.mean()), rel=1e-10)
    assert CollapseStats().fit(x, y).unc3(w) == out["unc3"]
    assert "unc3" not in CollapseStats().fit(x, y).metrics()


def test_cdnv_variants_match_the_library_kernel() -> None:
    """``cdnv`` is ``variability_cdnv(V, M)`` (dist_exp = 1, ||mu_i - mu_j||^2) and ``cdnv_dist4``
    is ``variability_cdnv(V, M, 2)`` (||mu_i - mu_j||^4, Wu & Papyan's analyze.py)."""
    x, y = _data(seed=13, c=6, d=5, n=240)
    out = CollapseStats().fit(x, y).metrics()
    mu = np.stack([x[y == k].mean(0) for k in range(6)])
    v = np.array([((x[y == k] - mu[k]) ** 2).sum(1).mean() for k in range(6)])
    for key, dist_exp in (("cdnv", 1), ("cdnv_dist4", 2)):
        grid = [(v[i] + v[j]) / 2 / (((mu[i] - mu[j]) ** 2).sum() ** dist_exp)
                for i, j in itertools.combinations(range(6), 2)]
        assert out[key] == pytest.approx(np.mean(grid), rel=1e-10), key
    assert "cdnv_wu_papyan" not in out


def test_gnc2_of_a_simplex_etf() -> None:
    """Regular simplex: every pair of unit means is at distance sqrt(2C/(C-1)), so the kernel is
    constant: GNC2 (its variance) = 0 and its mean = -log(2C/(C-1))/2; NC2 equiangularity 0."""
    rng = np.random.default_rng(14)
    c, d = 7, 12
    m = _simplex_etf(c, d, rng)
    y = np.repeat(np.arange(c), 5)
    x = m[y] + 2.0 + 1e-3 * rng.normal(size=(len(y), d))
    x -= np.stack([x[y == k].mean(0) for k in range(c)])[y] - m[y] - 2.0  # class means exactly m + 2
    out = CollapseStats().fit(x, y).metrics()
    assert out["gnc2"] == pytest.approx(0.0, abs=1e-20)
    assert out["gnc2_mean"] == pytest.approx(-0.5 * np.log(2 * c / (c - 1)), rel=1e-12)
    assert out["nc2_equiangular"] < 1e-12


@pytest.mark.parametrize("c", [3, 5, 8])
def test_gnc2_of_a_regular_polygon(c: int) -> None:
    """Means at the vertices of a regular C-gon in 2-D: ||u_i - u_j|| = 2 sin(pi m / C) for the gap
    m = |i - j|, each gap equally often over ordered pairs, and prod_m 2 sin(pi m / C) = C, so the
    mean log kernel is -log(C)/(C-1) and its variance is mean_m k_m^2 - mean^2."""
    ang = 2 * np.pi * np.arange(c) / c
    m = 3.0 * np.stack([np.cos(ang), np.sin(ang)], 1) + np.array([5.0, -2.0])
    y = np.repeat(np.arange(c), 2)
    x = m[y] + np.array([[0.1, -0.2], [-0.1, 0.2]] * c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # S_W of rank 1 < D = 2
        out = CollapseStats().fit(x, y).metrics()
    k = -np.log(2 * np.sin(np.pi * np.arange(1, c) / c))
    assert out["gnc2_mean"] == pytest.approx(-np.log(c) / (c - 1), rel=1e-12, abs=1e-14)
    assert out["gnc2"] == pytest.approx(np.mean(k**2) - np.mean(k) ** 2, rel=1e-10, abs=1e-14)


def test_unc3_zero_for_equal_cosines() -> None:
    """w_c = a_c (cos t u_c + sin t z), z orthogonal to every centred mean: cos(w_c, M_c) = cos t
    for every class, so UNC3 = 0 and its mean is cos t, whatever the scales a_c."""
    x, y = _data(seed=15, c=5, d=9, n=200)
    s = CollapseStats().fit(x, y)
    mu = s.means_[s.used_classes()]
    m = mu - mu.mean(0)
    q, _ = np.linalg.qr(np.concatenate([m.T, np.random.default_rng(16).normal(size=(9, 1))], 1))
    z = q[:, -1]  # orthogonal to the span of the means (rank 4 < 5 columns before it)
    t = 0.7
    a = np.array([0.5, 1.0, 2.0, 3.0, 10.0])
    w = a[:, None] * (np.cos(t) * m / np.linalg.norm(m, axis=1, keepdims=True) + np.sin(t) * z)
    out = s.metrics(classifier=w)
    assert out["unc3"] < 1e-28
    assert out["unc3_mean"] == pytest.approx(np.cos(t), rel=1e-12)


# ---------------------------------------------------------------- fast paths == definitions


def test_rank_deficient_between_class_scatter() -> None:
    """More classes than dimensions (K = M M^T has rank D < C - 1): the eigen path of NC1."""
    x, y = _data(seed=17, c=12, d=4, n=600)
    _assert_close(CollapseStats().fit(x, y).metrics(), _brute(x, y, list(range(12))))


def test_ill_conditioned_within_scatter() -> None:
    """S_W of full rank but condition ~1e12: below the rtol = 1e-10 cut-off, so the Fisher ratio
    drops that direction (eigen path) exactly like the pseudo-inverse; ~1e6 stays on Cholesky."""
    for tiny, singular in ((1e-6, True), (1e-3, False)):
        x, y = _data(seed=18, c=4, d=6, n=400)
        x[:, 0] = x[:, 0] * tiny + y  # almost no within-class spread along dim 0
        s = CollapseStats().fit(x, y)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = s.metrics()
        assert any("singular" in str(w.message) for w in caught) == singular
        s_w = s._within_scatter(s.used_classes())
        n = s.counts_[s.used_classes()]
        mu = s.means_[s.used_classes()]
        dev = mu - n @ mu / n.sum()
        ev, vec = np.linalg.eigh(s_w)
        keep = ev > RTOL * ev.max()
        pinv = (vec[:, keep] / ev[keep]) @ vec[:, keep].T
        assert got["fisher_ratio"] == pytest.approx(np.trace(pinv @ (dev * n[:, None]).T @ dev), rel=1e-8)


@pytest.mark.parametrize("seed", [29, 30])
def test_fallback_paths_agree(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The certified Cholesky paths, the eigenvalue test (no certificate) and the eigen paths
    (no Cholesky) give the same metrics up to float64 rounding."""
    x, y = _data(seed=seed, c=9, d=12, n=500)
    w = np.random.default_rng(seed).normal(size=(9, 12))
    s = CollapseStats().fit(x, y)
    fast = s.metrics(classifier=w)
    monkeypatch.setattr(collapse, "_inverse_if_certified", lambda low, a, rtol: None)
    _assert_close(s.metrics(classifier=w), fast, tol=1e-10)
    monkeypatch.setattr(collapse, "_cholesky", lambda a: None)
    _assert_close(s.metrics(classifier=w), fast, tol=1e-10)


# ---------------------------------------------------------------- merge, remove, bootstrap


def _state(s: CollapseStats) -> dict[str, np.ndarray]:
    order = np.argsort(s.labels_)
    keep = s.counts_[order] > 0
    out = {"labels": s.labels_[order][keep], "counts": s.counts_[order][keep], "means": s.means_[order][keep],
           "m2": s.m2_trace_[order][keep], "unit_sum": s.unit_sum_[order][keep], "unit_sq": s.unit_sq_[order][keep],
           "scatter": s.scatter_}
    if s.class_scatter_ is not None:
        out["class_scatter"] = s.class_scatter_[order][keep]
    return out


def _assert_state_close(a: CollapseStats, b: CollapseStats, rtol: float = 1e-10) -> None:
    sa, sb = _state(a), _state(b)
    assert set(sa) == set(sb)
    for k in sa:
        scale = max(np.abs(sb[k]).max(), 1.0)
        assert sa[k].shape == sb[k].shape, k
        assert np.abs(sa[k] - sb[k]).max() <= rtol * scale, k


@pytest.mark.parametrize("per_class", [False, True])
def test_merged_equals_fit_on_concatenation(per_class: bool) -> None:
    x, y = _data(seed=19, c=6, d=5, n=300)
    y[:40] = 7  # a label only in the first part
    parts = [(0, 90), (90, 91), (91, 200), (200, 300)]
    stats = [CollapseStats(per_class_scatter=per_class).fit(x[lo:hi], y[lo:hi]) for lo, hi in parts]
    w = np.random.default_rng(20).normal(size=(8, 5))
    whole = CollapseStats(per_class_scatter=per_class).fit(x, y)
    merged = CollapseStats.merged(stats)
    _assert_state_close(merged, whole)
    _assert_close(merged.metrics(classifier=w), whole.metrics(classifier=w), tol=1e-10)
    _assert_state_close(stats[0] + stats[1] + stats[2] + stats[3], whole)
    # integer weights = repeating a part's data; 0 = leaving it out
    rep = np.concatenate([np.arange(0, 90)] * 2 + [np.arange(91, 200)] * 3 + [np.arange(200, 300)])
    weighted = CollapseStats.merged(stats, weights=[2, 0, 3, 1])
    _assert_state_close(weighted, CollapseStats(per_class_scatter=per_class).fit(x[rep], y[rep]))
    assert stats[1].counts_.sum() == 1  # inputs unchanged
    with pytest.raises(ValueError, match="weights"):
        CollapseStats.merged(stats, weights=[1, 1])
    with pytest.raises(ValueError, match="weights"):
        CollapseStats.merged(stats, weights=[1, -1, 1, 1])


def test_merged_with_empty_and_pregrown_groups() -> None:
    """Groups that registered every class up front (zero counts) and a group that saw nothing."""
    x, y = _data(seed=21, c=5, d=4, n=150)
    groups = [CollapseStats(per_class_scatter=False) for _ in range(3)]
    for g in groups[:2]:
        g._grow(np.arange(5), 4)
    groups[0].partial_fit(x[:70], y[:70])
    groups[1].partial_fit(x[70:], y[70:])
    merged = CollapseStats.merged(groups)
    _assert_state_close(merged, CollapseStats().fit(x, y))


@pytest.mark.parametrize("per_class", [False, True])
def test_remove_equals_refit(per_class: bool) -> None:
    x, y = _data(seed=22, c=5, d=6, n=400)
    x[:, 0] += 50.0  # a large offset, as in residual streams
    drop = np.zeros(len(y), dtype=bool)
    drop[np.random.default_rng(23).choice(len(y), 60, replace=False)] = True
    drop[y == 3] = True  # one class removed entirely
    s = CollapseStats(per_class_scatter=per_class).fit(x, y)
    s.remove(torch.from_numpy(x[drop]), torch.from_numpy(y[drop]))
    ref = CollapseStats(per_class_scatter=per_class).fit(x[~drop], y[~drop])
    _assert_state_close(s, ref)
    w = np.random.default_rng(24).normal(size=(5, 6))
    _assert_close(s.metrics(classifier=w), ref.metrics(classifier=w), tol=1e-10)
    assert s.counts_[s._index[3]] == 0 and 3 not in s.used_labels()
    with pytest.raises(ValueError, match="never added"):
        s.remove(x[:1], np.array([42]))
    with pytest.raises(ValueError, match="more samples"):
        s.remove(x[:1], np.array([3]))


def _groups(seed: int, g: int = 8, c: int = 4, d: int = 5, n: int = 4000) -> tuple[list[CollapseStats], np.ndarray, np.ndarray]:
    x, y = _data(seed=seed, c=c, d=d, n=n)
    return [CollapseStats().fit(x[i::g], y[i::g]) for i in range(g)], x, y


def test_bootstrap_reproducible_and_covers_the_full_data_value() -> None:
    groups, x, y = _groups(25)
    w = np.random.default_rng(26).normal(size=(4, 5))
    a = bootstrap_intervals(groups, n_boot=200, seed=3, classifier=w)
    assert a == bootstrap_intervals(groups, n_boot=200, seed=3, classifier=w, n_jobs=1)
    assert a != bootstrap_intervals(groups, n_boot=200, seed=4, classifier=w)
    full = CollapseStats().fit(x, y).metrics(classifier=w)
    assert set(a) == set(full)
    for k, (lo, hi) in a.items():
        assert lo <= hi, k
        if k not in ("n_classes", "n_samples"):
            assert lo <= full[k] <= hi, (k, lo, full[k], hi)


def test_bootstrap_replicate_is_the_weighted_merge() -> None:
    """One replicate (n_boot = 1) with level -> 0 gives the metrics of the merge with the drawn
    multinomial weights."""
    groups, _, _ = _groups(27, n=800)
    weights = np.random.default_rng(5).multinomial(8, np.full(8, 1 / 8), size=1)[0]
    ref = CollapseStats.merged(groups, weights=weights).metrics()
    got = bootstrap_intervals(groups, n_boot=1, seed=5, level=1e-9)
    for k, (lo, hi) in got.items():
        assert lo == pytest.approx(ref[k], rel=1e-10) and hi == pytest.approx(ref[k], rel=1e-10), k
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(groups, level=1.5)


def test_jackknife_intervals_by_hand():
    """theta +- t_{G-1} * sqrt((G-1)/G * sum (theta_i - mean theta_i)^2), theta_i leaving group i out."""
    from scipy.stats import t as student

    from analyses.geometry.collapse import jackknife_intervals

    rng = np.random.default_rng(11)
    X, y = rng.normal(size=(400, 6)), rng.integers(0, 5, size=400)
    W = rng.normal(size=(5, 6))
    groups = [CollapseStats().fit(X[i::4], y[i::4]) for i in range(4)]
    got = jackknife_intervals(groups, level=0.9, classifier=W)
    full = CollapseStats().fit(X, y).metrics(classifier=W)
    loo = [CollapseStats().fit(np.concatenate([X[j::4] for j in range(4) if j != i]),
                               np.concatenate([y[j::4] for j in range(4) if j != i])).metrics(classifier=W) for i in range(4)]
    q = student.ppf(0.95, 3)
    for key in ("nc1", "cdnv", "gnc2", "unc3", "fisher_ratio"):
        vals = np.array([m[key] for m in loo])
        se = np.sqrt(3 / 4 * ((vals - vals.mean()) ** 2).sum())
        assert got[key] == pytest.approx((full[key] - q * se, full[key] + q * se), rel=1e-8)


def test_merged_with_jackknife_equals_merge_and_jackknife() -> None:
    """One alignment of the groups gives the merge (to rounding), its metrics and the same intervals."""
    from analyses.geometry.collapse import jackknife_intervals, merged_with_jackknife

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(600, 12)), rng.integers(0, 9, size=600)
    X += 3 * rng.normal(size=(9, 12))[y]
    W = rng.normal(size=(9, 12))
    groups = [CollapseStats().fit(X[i::4], y[i::4]) for i in range(4)]
    merged, full, ci = merged_with_jackknife(groups, classifier=W)
    ref = CollapseStats.merged(groups)
    np.testing.assert_allclose(merged.scatter_, ref.scatter_, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(merged.counts_, ref.counts_)
    want = ref.metrics(classifier=W)
    assert full.keys() == want.keys()
    for key, value in want.items():
        assert full[key] == pytest.approx(value, rel=1e-9), key
    same = jackknife_intervals(groups, classifier=W, full=full)
    assert ci == same
