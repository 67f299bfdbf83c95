"""Tests of analyses.geometry.collapse: streaming == batch, brute-force references, ETF, class selection."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from analyses.geometry import CollapseStats

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
    nc1 = np.trace(s_w / len(x) @ np.linalg.pinv(sigma_b, rtol=RTOL, hermitian=True)) / c
    norms = np.linalg.norm(m, axis=1)
    cos = [m[i] @ m[j] / (norms[i] * norms[j]) for i, j in itertools.combinations(range(c), 2)]
    var = [np.mean(((x[y == k] - mu[i]) ** 2).sum(1)) for i, k in enumerate(classes)]
    cd, cd4 = [], []
    for i, j in itertools.combinations(range(c), 2):
        dist2 = ((mu[i] - mu[j]) ** 2).sum()
        cd.append((var[i] + var[j]) / (2 * dist2))
        cd4.append((var[i] + var[j]) / (2 * dist2**2))
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
        "cdnv_wu_papyan": np.mean(cd4),
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
