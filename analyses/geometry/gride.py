"""Gride: the generalised-ratios intrinsic dimension estimator, on torch.

Denti, Doimo, Laio & Mira (2022), "The generalized ratios intrinsic
dimension estimator", Sci. Rep. 12:20005, doi:10.1038/s41598-022-20991-1.

For every point, mu = r_{n2} / r_{n1}, the ratio of the distances to its
n2-th and n1-th nearest neighbours (itself excluded, n1 < n2). Under local
uniformity of a d-dimensional density mu has the density

    f(mu) = d (mu^d - 1)^{n2-n1-1} / (B(n2-n1, n1) mu^{d(n2-1)+1}),  mu > 1,

and d is its maximum-likelihood value; n1 = 1, n2 = 2 is TwoNN's MLE.
Doubling the range, (n1, n2) = (1, 2), (2, 4), (4, 8), ..., gives the ID as
a function of the neighbourhood size: a plateau is the scale where the
manifold dimension, not noise (small n) or curvature (large n), is seen.

Matches ``dadapy`` 0.3.4 (``Data.return_id_scaling_gride`` and
``_compute_id_gride_single_scale``), step for step:

* zero neighbour distances (duplicate points) are set to the float64
  machine epsilon, and ratios mu = 1 are raised by 10 eps (by default
  duplicate rows are dropped first, see :class:`Gride`; dadapy keeps them);
* ratios mu >= q50 + 20 (q95 - q50) (linear percentiles) -- the very large
  ratios that duplicates produce -- are left out of the likelihood;
* the log-likelihood, with dadapy's bias-corrected (N - 1) log d term,

      L(d) = (N-1) log d + (n2-n1-1) sum log(mu^d - 1) - (d(n2-1)+1) sum log mu + const,

  is strictly concave in d, so its maximiser is the unique root of
  dL/dd = (N-1)/d - sum [(n2-1) - (n2-n1-1)/(1 - mu^-d)] log mu (with
  1 - mu^-d floored at 2 tol); it is found by bisection on the sign of dL/dd
  over [d0, d1] down to an interval of width tol (34 halvings by default),
  the midpoint returned --
  the same bounded 1-D search as dadapy, vectorised over neighbourhoods;
* the error is the inverse square root of the observed Fisher information
  over all ratios (outliers included, 1 - mu^-d floored at 5 eps),

      J = N/d^2 + (n2-n1-1) sum (log mu)^2 mu^-d / (1 - mu^-d)^2.

  dadapy evaluates J with n2 = 2 n1 whatever n2 is; here n2 is used, which
  is the same on the doubling scales.

dadapy has no pointwise Gride (``return_ids_kstar_gride`` fits one global ID
with per-point ranks); :class:`LocalGride` runs Gride on the kNN neighbourhood
of every point, as :class:`analyses.geometry.lid.LocalTwoNN` does for TwoNN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from analyses.geometry.lid import ArrayLike, _as_numpy, _dedup, _device, _subsample, knn

__all__ = ["Gride", "LocalGride", "GrideScale", "gride_scale_curve", "gride_from_mu"]

_EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------
# the likelihood and its maximisation (batched over leading dimensions)
# --------------------------------------------------------------------------
def _check_ranks(n1: int, n2: int) -> None:
    if not 1 <= n1 < n2:
        raise ValueError(f"need 1 <= n1 < n2, got n1={n1}, n2={n2}")


def _smear(r: torch.Tensor) -> torch.Tensor:
    """Zero (below eps) neighbour distances set to eps, as dadapy's ``remove_zero_dists``."""
    return torch.where(r < _EPS, torch.full_like(r, _EPS), r)


def _filter_mu(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dadapy's ``_filter_mus``: mu = 1 raised by 10 eps; mask of the ratios
    below q50 + 20 (q95 - q50), computed per row."""
    mu = torch.where(mu == 1, mu + 10 * _EPS, mu)
    q = torch.quantile(mu, torch.tensor([0.95, 0.5], dtype=mu.dtype, device=mu.device), dim=-1)
    mu_max = 20 * (q[0] - q[1]) + q[1]
    return mu, mu < mu_max[..., None]


Rank = int | torch.Tensor  # one rank, or one per row (shape ``(..., 1)``, float64)


def _neg_dloglik(d: torch.Tensor, mu: torch.Tensor, log_mu: torch.Tensor, keep: torch.Tensor,
                 n: torch.Tensor, n1: Rank, n2: Rank, tol: float) -> torch.Tensor:
    """-dL/dd over the kept ratios of each row, at ``d`` (one value per row)."""
    one_m = (1.0 - mu ** (-d[..., None])).clamp_min(2 * tol)
    term = ((1 - n2 + n1) / one_m + n2 - 1.0) * log_mu
    return torch.where(keep, term, 0.0).sum(-1) - (n - 1) / d


def _fisher_info(d: torch.Tensor, mu: torch.Tensor, n1: Rank, n2: Rank) -> torch.Tensor:
    """Observed Fisher information J(d) over all ratios of each row."""
    mu_d = mu ** (-d[..., None])
    one_m = (1.0 - mu_d).clamp_min(5 * _EPS)
    tmp = (torch.log(mu) / one_m) ** 2 * mu_d
    return mu.shape[-1] / d ** 2 + ((n2 - n1 - 1) * tmp).sum(-1)


def gride_from_mu(mu: ArrayLike, n1: int | Sequence[int], n2: int | Sequence[int], d0: float = 1e-3,
                  d1: float = 1e3, tol: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Gride ID and its error from ratios ``mu = r_{n2} / r_{n1}`` of shape ``(..., N)``.

    Batched over leading dimensions (one fit per row; ``n1``/``n2`` one pair for all rows,
    or one per row of a 2-D ``mu``, e.g. every scale of a curve at once). Outliers are filtered,
    the likelihood maximised by bisection on [d0, d1] to width ``tol`` and the
    error taken from the Fisher information, as described in the module
    docstring. Returns ``(dimension, error)``, each of shape ``mu.shape[:-1]``.
    """
    mu = torch.as_tensor(mu, dtype=torch.float64)
    if not isinstance(n1, int) or not isinstance(n2, int):
        for a, b in zip(n1, n2, strict=True):
            _check_ranks(a, b)
        if mu.dim() != 2 or len(mu) != len(n1):
            raise ValueError(f"one (n1, n2) per row needs 2-D mu with {len(n1)} rows, got shape {tuple(mu.shape)}")
        n1, n2 = (torch.tensor(v, dtype=torch.float64, device=mu.device)[:, None] for v in (n1, n2))
    else:
        _check_ranks(n1, n2)
    if not 0 < d0 < d1:
        raise ValueError(f"need 0 < d0 < d1, got d0={d0}, d1={d1}")
    mu, keep = _filter_mu(mu)
    log_mu = torch.log(mu)
    n = keep.sum(-1).to(torch.float64)
    lo = torch.full(mu.shape[:-1], d0, dtype=torch.float64, device=mu.device)
    hi = torch.full_like(lo, d1)
    sign_hi = torch.sign(_neg_dloglik(hi, mu, log_mu, keep, n, n1, n2, tol))
    open_ = (hi - lo).abs() > tol
    while bool(open_.any()):
        mid = (lo + hi) / 2.0
        same = torch.sign(_neg_dloglik(mid, mu, log_mu, keep, n, n1, n2, tol)) * sign_hi > 0
        hi = torch.where(open_ & same, mid, hi)
        lo = torch.where(open_ & ~same, mid, lo)
        open_ = (hi - lo).abs() > tol
    d = (lo + hi) / 2.0
    return d, _fisher_info(d, mu, n1, n2).rsqrt()


# --------------------------------------------------------------------------
# global Gride and the scale curve
# --------------------------------------------------------------------------
def _rows(X: ArrayLike, drop_duplicates: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows of X to use, their indices and the number of duplicate rows."""
    Xn = _as_numpy(X)
    first, n_dup = _dedup(Xn)
    if drop_duplicates:
        return Xn[first], first, n_dup
    return Xn, np.arange(len(Xn)), n_dup


class Gride:
    """Global Gride intrinsic dimension at one scale (n1, n2) (Denti et al., 2022).

    mu_i = r_{n2}(x_i) / r_{n1}(x_i) from the exact kNN of every point; d
    maximises the generalised-ratio likelihood (see the module docstring).
    n1 = 1, n2 = 2 is TwoNN's MLE.

    Duplicate rows are dropped first (``np.unique(axis=0)``, first occurrence
    kept) unless ``drop_duplicates=False``, which keeps them and reproduces
    dadapy: zero distances smeared to eps, the resulting huge ratios left out
    by the q50 + 20 (q95 - q50) filter. That filter only works while fewer
    than ~5% of the points have a zero-distance neighbour at rank n1 (beyond,
    q95 itself is a duplicate ratio and the ID collapses towards 0), which is
    why dropping is the default. Without duplicates both settings are equal.

    Attributes
    ----------
    dimension_ : float
    dimension_err_ : float, 1 / sqrt(Fisher information), as dadapy's ``ids_err``
    scale_ : float, mean over points of (r_{n1} + r_{n2}) / 2 (dadapy's ``rs_scaling``)
    mu_ : ndarray (n_points,), the ratios (before the outlier filter)
    n_duplicates_ : int, duplicate rows in X (dropped unless ``drop_duplicates=False``)
    sample_indices_ : ndarray (n_points,), rows of X used (ascending)
    """

    def __init__(self, n1: int = 1, n2: int = 2, d0: float = 1e-3, d1: float = 1e3,
                 tol: float = 1e-7, drop_duplicates: bool = True, block: int = 4096,
                 device: str | None = None) -> None:
        self.n1 = n1
        self.n2 = n2
        self.d0 = d0
        self.d1 = d1
        self.tol = tol
        self.drop_duplicates = drop_duplicates
        self.block = block
        self.device = device

    def fit(self, X: ArrayLike, y: None = None) -> "Gride":
        _check_ranks(self.n1, self.n2)
        Xs, self.sample_indices_, self.n_duplicates_ = _rows(X, self.drop_duplicates)
        dist, _ = knn(Xs, self.n2, block=self.block, device=self.device)
        r = _smear(torch.from_numpy(dist[:, [self.n1 - 1, self.n2 - 1]]))
        self.scale_ = float(r.mean())
        mu = r[:, 1] / r[:, 0]
        d, err = gride_from_mu(mu, self.n1, self.n2, self.d0, self.d1, self.tol)
        self.mu_ = mu.numpy()
        self.dimension_, self.dimension_err_ = float(d), float(err)
        return self


@dataclass(frozen=True)
class GrideScale:
    """Gride at one scale: ranks, ID, its error and the mean distance (r_{n1} + r_{n2}) / 2."""

    n1: int
    n2: int
    dimension: float
    error: float
    scale: float


def gride_scale_curve(X: ArrayLike, max_n2: int = 64, d0: float = 1e-3, d1: float = 1e3,
                      tol: float = 1e-7, drop_duplicates: bool = True, block: int = 4096,
                      device: str | None = None, distances: np.ndarray | None = None) -> list[GrideScale]:
    """Gride ID against neighbourhood size: (n1, n2) = (1, 2), (2, 4), ..., up to
    the largest power of two n2 <= min(max_n2, n_samples - 1).

    One exact kNN search to that rank, then a global :class:`Gride` fit per
    scale (duplicate rows dropped first unless ``drop_duplicates=False``, see
    :class:`Gride`); equals dadapy's ``return_id_scaling_gride(range_max=max_n2)``
    (IDs, errors and, as ``scale``, its ``rs_scaling``). ``distances``: the exact
    sorted kNN distances of the (distinct) rows of ``X`` to at least that rank
    (e.g. :class:`analyses.geometry.lid.LocalTwoNN`'s ``distances_``), in place
    of the search.
    """
    X, _, n_dup = _rows(X, drop_duplicates)
    n = len(X)
    top = min(max_n2, n - 1)
    if top < 2:
        raise ValueError(f"need max_n2 >= 2 and at least 3 points, got max_n2={max_n2}, n={n}")
    ranks = [2 ** i for i in range(int(np.log2(top)) + 1)]
    if distances is None:
        dist, _ = knn(X, ranks[-1], block=block, device=device)
    elif n_dup or distances.shape[0] != n or distances.shape[1] < ranks[-1]:
        raise ValueError(f"distances must hold the sorted kNN distances of the {n} distinct rows to rank "
                         f"{ranks[-1]}, got shape {distances.shape} ({n_dup} duplicate rows in X)")
    else:
        dist = distances
    r = _smear(torch.from_numpy(dist[:, [k - 1 for k in ranks]]))
    d, err = gride_from_mu((r[:, 1:] / r[:, :-1]).T, ranks[:-1], ranks[1:], d0, d1, tol)  # every scale at once
    return [GrideScale(n1, n2, float(d[i]), float(err[i]), float(r[:, i:i + 2].mean()))
            for i, (n1, n2) in enumerate(zip(ranks[:-1], ranks[1:]))]


# --------------------------------------------------------------------------
# pointwise (local) Gride
# --------------------------------------------------------------------------
def _rank_positions(member: torch.Tensor, lists: torch.Tensor,
                    n1: int, n2: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions in each row of ``lists`` (B, m, w) of its n1-th and n2-th
    entries set in ``member`` (B, N), and whether an n2-th exists."""
    B, m, w = lists.shape
    hit = torch.gather(member, 1, lists.reshape(B, m * w)).reshape(B, m, w)
    count = hit.to(torch.int32).cumsum(-1)
    p1 = torch.argmax((count >= n1).to(torch.uint8), dim=-1)
    p2 = torch.argmax((count >= n2).to(torch.uint8), dim=-1)
    return p1, p2, count[..., -1] >= n2


def _local_radii(X64: torch.Tensor, dist: torch.Tensor, ind: torch.Tensor, rows: torch.Tensor,
                 n1: int, n2: int, prefix: int = 32,
                 budget: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """r_{n1}(z), r_{n2}(z) of every member z of N_k(x), x in ``rows``: distances
    from z to its n1-th / n2-th nearest other member of N_k(x).

    Read off z's own sorted global kNN list L(z) (``dist``/``ind``, (N, k)):
    the members of N_k(x) appear in L(z) in order of distance to z, and any
    member missing from L(z) is no closer than its last entry, so the j-th
    member found in L(z) is z's j-th nearest member. The first ``prefix``
    entries are searched first, then the whole list, and members whose list
    holds fewer than n2 members are done by brute force (exact float64
    ``||a - b||`` against the k members). Exact, as ``_mu_from_lists`` in lid.py.
    """
    S = ind[rows]
    B, k = S.shape
    member = torch.zeros(B, len(ind), dtype=torch.bool, device=ind.device)
    member.scatter_(1, S, True)
    p1, p2, ok = _rank_positions(member, ind[S, :max(prefix, n2)], n1, n2)
    if not ok.all():
        b, j = (~ok).nonzero(as_tuple=True)
        q1, q2, o = _rank_positions(member[b], ind[S[b, j]][:, None, :], n1, n2)
        p1[b, j], p2[b, j], ok[b, j] = q1[:, 0], q2[:, 0], o[:, 0]
    flat = dist.reshape(-1)
    r1, r2 = flat[S * k + p1], flat[S * k + p2]
    if not ok.all():
        b, j = (~ok).nonzero(as_tuple=True)
        step = max(1, budget // (k * X64.shape[1]))
        for s in range(0, len(b), step):
            bb, jj = b[s:s + step], j[s:s + step]
            d = torch.linalg.vector_norm(X64[S[bb]] - X64[S[bb, jj]][:, None, :], dim=-1)
            d[torch.arange(len(jj), device=d.device), jj] = float("inf")
            d = torch.sort(d, dim=-1).values
            r1[bb, jj], r2[bb, jj] = d[:, n1 - 1], d[:, n2 - 1]
    return r1, r2


class LocalGride:
    """Pointwise Gride on kNN neighbourhoods.

    As :class:`analyses.geometry.lid.LocalTwoNN` with Gride in place of TwoNN:
    drop duplicate rows (``np.unique(axis=0)``, first kept, count in
    ``n_duplicates_``), subsample to ``max_points`` (seeded), and for each
    point x fit Gride on its ``n_neighbors`` nearest neighbours N_k(x) (x
    excluded): for every member z, mu_z = r_{n2}(z) / r_{n1}(z) with the
    distances to z's n1-th and n2-th nearest other members of N_k(x), and
    LID(x) = argmax_d of the likelihood of these k ratios -- what dadapy's
    ``Data(X[N_k(x)])`` Gride gives at ranks (n1, n2). Needs n2 < n_neighbors.

    Attributes
    ----------
    dimension_pw_ : ndarray (n_points,), LID per retained point
    dimension_err_pw_ : ndarray (n_points,), its Fisher-information error
    dimension_ : float, mean of ``dimension_pw_``
    n_duplicates_ : int
    sample_indices_ : ndarray (n_points,), rows of X used (ascending)
    neighbors_ : ndarray (n_points, n_neighbors), kNN indices into the used rows
    """

    def __init__(self, n_neighbors: int = 128, n1: int = 1, n2: int = 2, d0: float = 1e-3,
                 d1: float = 1e3, tol: float = 1e-7, max_points: int | None = 60000,
                 seed: int = 0, batch_size: int = 512, block: int = 4096,
                 device: str | None = None) -> None:
        self.n_neighbors = n_neighbors
        self.n1 = n1
        self.n2 = n2
        self.d0 = d0
        self.d1 = d1
        self.tol = tol
        self.max_points = max_points
        self.seed = seed
        self.batch_size = batch_size
        self.block = block
        self.device = device

    def fit(self, X: ArrayLike, y: None = None) -> "LocalGride":
        _check_ranks(self.n1, self.n2)
        if self.n2 >= self.n_neighbors:
            raise ValueError(f"need n2 < n_neighbors, got n2={self.n2}, "
                             f"n_neighbors={self.n_neighbors}; raise n_neighbors")
        Xn = _as_numpy(X)
        first, self.n_duplicates_ = _dedup(Xn)
        self.sample_indices_ = _subsample(first, self.max_points, self.seed)
        Xs = Xn[self.sample_indices_]
        dist, self.neighbors_ = knn(Xs, self.n_neighbors, block=self.block, device=self.device)
        dev = _device(self.device)
        X64 = torch.as_tensor(Xs, dtype=torch.float64, device=dev)
        D, I = torch.as_tensor(dist, device=dev), torch.as_tensor(self.neighbors_, device=dev)
        mu = []
        for s in range(0, len(I), self.batch_size):
            rows = torch.arange(s, min(s + self.batch_size, len(I)), device=dev)
            r1, r2 = _local_radii(X64, D, I, rows, self.n1, self.n2)
            mu.append(_smear(r2) / _smear(r1))
        mu = torch.cat(mu)
        step = max(1, (1 << 22) // self.n_neighbors)  # rows per fit, bounds the memory
        fits = [gride_from_mu(mu[s:s + step], self.n1, self.n2, self.d0, self.d1, self.tol)
                for s in range(0, len(mu), step)]
        self.dimension_pw_ = torch.cat([d for d, _ in fits]).cpu().numpy()
        self.dimension_err_pw_ = torch.cat([e for _, e in fits]).cpu().numpy()
        self.dimension_ = float(self.dimension_pw_.mean())
        return self
