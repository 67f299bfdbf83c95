"""Local intrinsic dimension (LID) estimators on torch, scikit-learn style.

Follows "Less is More: Local Intrinsic Dimensions of Contextual Language
Models" (Ruppik et al., 2025, arXiv:2506.01034), which computes pointwise
TwoNN estimates with scikit-dimension (``skdim.asPointwise`` around
``skdim.id.TwoNN``) on the k nearest neighbours of each token embedding.

Estimators
----------
* :class:`TwoNN` -- global TwoNN (Facco et al., 2017, Sci. Rep. 7:12140,
  doi:10.1038/s41598-017-11873-y), matching ``skdim.id.TwoNN`` (linear fit).
* :class:`LocalTwoNN` -- TwoNN run on the kNN neighbourhood of every point,
  as ``skdim.asPointwise(X, TwoNN(), n_neighbors=k)``, vectorised.
* :class:`MLE` -- Levina & Bickel (2004, NeurIPS) pointwise MLE with the
  MacKay & Ghahramani (2005) averaging of inverses for the global value.

All estimators take numpy arrays or torch tensors and expose numpy results:
``dimension_`` (float) and ``dimension_pw_`` (per point, where defined).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["knn", "TwoNN", "LocalTwoNN", "MLE", "local_twonn_from_knn"]

Convention = Literal["skdim-0.5", "skdim-0.3"]
ArrayLike = np.ndarray | torch.Tensor
_TINY = torch.finfo(torch.float64).tiny


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _as_numpy(X: ArrayLike) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    return X


def _as_centered64(X: ArrayLike, device: torch.device) -> torch.Tensor:
    """float64 tensor on ``device``, centred (distances are translation
    invariant; centring limits cancellation in ||a||^2 + ||b||^2 - 2ab)."""
    T = torch.as_tensor(X).to(device=device, dtype=torch.float64)
    return T - T.mean(dim=0, keepdim=True)


def _dedup(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Indices of the first occurrence of each distinct row (original order)
    and the number of rows removed, via ``np.unique(axis=0)``."""
    _, first = np.unique(X, axis=0, return_index=True)
    first = np.sort(first)
    return first, len(X) - len(first)


def _subsample(idx: np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    if max_points is None or len(idx) <= max_points:
        return idx
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, size=max_points, replace=False))


def _check_convention(convention: str) -> None:
    if convention not in ("skdim-0.5", "skdim-0.3"):
        raise ValueError(f"convention must be 'skdim-0.5' or 'skdim-0.3', got {convention!r}")


# --------------------------------------------------------------------------
# exact k nearest neighbours
# --------------------------------------------------------------------------
def _candidates(X32: torch.Tensor, sq32: torch.Tensor, rows: slice, m: int) -> torch.Tensor:
    """Indices of the ``m`` smallest float32 squared distances of ``rows``
    to all points (self excluded) -- candidate set for exact refinement."""
    d2 = sq32[rows, None] + sq32[None, :] - 2.0 * (X32[rows] @ X32.T)
    r = torch.arange(rows.start, rows.stop, device=X32.device)
    d2[r - rows.start, r] = float("inf")
    return torch.topk(d2, m, dim=1, largest=False, sorted=False).indices


def _exact_dist(X64: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor,
                budget: int = 1 << 20) -> torch.Tensor:
    """Exact float64 distances ||x_rows - x_cand|| (difference form), chunked
    so at most ``budget`` float64 entries are materialised."""
    m, D = cand.shape[1], X64.shape[1]
    step = max(1, budget // max(1, m * D))
    out = torch.empty(cand.shape, dtype=torch.float64, device=X64.device)
    for s in range(0, len(rows), step):
        diff = X64[rows[s:s + step], None, :] - X64[cand[s:s + step]]
        out[s:s + step] = torch.linalg.vector_norm(diff, dim=-1)
    return out


def knn(X: ArrayLike, k: int, block: int = 4096,
        device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every row, the row itself excluded.

    Candidates are selected blockwise with ``torch.topk`` on float32 squared
    distances ``||a||^2 + ||b||^2 - 2 a.b`` (data centred first), keeping
    ``m = k + max(16, k // 4)`` candidates as a safety margin against float32
    rounding; their distances are then recomputed exactly in float64 as
    ``||a - b||`` and the best ``k`` kept. Memory is O(block * N), not O(N^2).

    Returns ``(distances, indices)``, each ``(N, k)``, sorted ascending
    (distances float64, indices int64).
    """
    Xn = _as_numpy(X)
    n = len(Xn)
    if not 1 <= k <= n - 1:
        raise ValueError(f"need 1 <= k <= n_samples - 1, got k={k}, n={n}")
    dev = _device(device)
    X64 = _as_centered64(Xn, dev)
    X32 = X64.float()
    sq32 = (X32 * X32).sum(dim=1)
    m = min(n - 1, k + max(16, k // 4))
    dist = np.empty((n, k), dtype=np.float64)
    ind = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, block):
        rows = slice(s, min(s + block, n))
        cand = _candidates(X32, sq32, rows, m)
        d = _exact_dist(X64, torch.arange(rows.start, rows.stop, device=dev), cand)
        d, order = torch.sort(d, dim=1, stable=True)
        dist[rows] = d[:, :k].cpu().numpy()
        ind[rows] = torch.gather(cand, 1, order[:, :k]).cpu().numpy()
    return dist, ind


# --------------------------------------------------------------------------
# TwoNN regression (shared by global and local estimators)
# --------------------------------------------------------------------------
def _empirical_cdf(n_fit: int, n: int, convention: str, device: torch.device) -> torch.Tensor:
    """F_i = i/N (skdim 0.5, i = 1..n_fit) or F_i = (i-1)/N (skdim 0.3.4)."""
    start = 1 if convention == "skdim-0.5" else 0
    return torch.arange(start, start + n_fit, dtype=torch.float64, device=device) / n


def _n_fit(n: int, discard_fraction: float, convention: str) -> int:
    """Number of sorted ratios entering the fit: ``int(N (1 - f))``; with
    ``skdim-0.5`` the term F = 1 (only reachable with f = 0) is dropped since
    -log(1 - 1) = inf (scikit-dimension fails there)."""
    n_keep = int(n * (1 - discard_fraction))
    if convention == "skdim-0.5":
        n_keep = min(n_keep, n - 1)
    if n_keep < 2:
        raise ValueError("Fewer than 2 points left to estimate the dimension.")
    return n_keep


def twonn_from_mu(mu: torch.Tensor, discard_fraction: float = 0.1,
                  convention: Convention = "skdim-0.5") -> torch.Tensor:
    """TwoNN slope from ratios ``mu`` (shape ``(..., N)``), batched over leading dims.

    Sort mu ascending, keep the ``int(N (1 - discard_fraction))`` smallest,
    x_i = log(mu_(i)), y_i = -log(1 - F_i), and fit y = d x through the
    origin by least squares: d = sum(x y) / sum(x^2)  (Facco et al. 2017,
    eq. 4; identical to sklearn ``LinearRegression(fit_intercept=False)``
    used by scikit-dimension). A degenerate neighbourhood with all mu = 1
    (sum(x^2) = 0) gives d = 0 rather than NaN.
    """
    _check_convention(convention)
    n = mu.shape[-1]
    n_keep = _n_fit(n, discard_fraction, convention)
    x = torch.log(torch.sort(mu.to(torch.float64), dim=-1).values[..., :n_keep])
    y = -torch.log1p(-_empirical_cdf(n_keep, n, convention, mu.device))
    return (x * y).sum(-1) / (x * x).sum(-1).clamp_min(_TINY)


# --------------------------------------------------------------------------
# global TwoNN
# --------------------------------------------------------------------------
class TwoNN:
    """Global TwoNN intrinsic dimension (Facco et al., 2017).

    For each point mu = r2 / r1, the ratio of the distances to its 2nd and
    1st nearest neighbours. Under local uniformity mu is Pareto distributed,
    F(mu) = 1 - mu^{-d}, hence -log(1 - F(mu)) = d log(mu). The largest
    ``discard_fraction`` of the ratios is discarded and d is the slope of
    the least-squares line through the origin of -log(1 - F_i) against
    log(mu_(i)), with F_i = i/N (``"skdim-0.5"``, scikit-dimension 0.5) or
    F_i = (i-1)/N (``"skdim-0.3"``, scikit-dimension 0.3.4; lower values).

    As in scikit-dimension, points with r1 = 0 (duplicates) are dropped
    before N is counted; their number is stored in ``n_duplicates_``.

    Attributes
    ----------
    dimension_ : float
    mu_ : ndarray (n_points_kept,), the unsorted ratios used
    n_duplicates_ : int
    """

    def __init__(self, discard_fraction: float = 0.1, convention: Convention = "skdim-0.5",
                 block: int = 4096, device: str | None = None) -> None:
        self.discard_fraction = discard_fraction
        self.convention = convention
        self.block = block
        self.device = device

    def fit(self, X: ArrayLike, y: None = None) -> "TwoNN":
        _check_convention(self.convention)
        dist, _ = knn(X, 2, block=self.block, device=self.device)
        ok = dist[:, 0] > 0
        self.n_duplicates_ = int((~ok).sum())
        self.mu_ = dist[ok, 1] / dist[ok, 0]
        d = twonn_from_mu(torch.from_numpy(self.mu_), self.discard_fraction, self.convention)
        self.dimension_ = float(d)
        return self


# --------------------------------------------------------------------------
# pointwise (local) TwoNN
# --------------------------------------------------------------------------
def _first_two(member: torch.Tensor, lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of the first two entries of each row of ``lists`` (B, m, w) that
    are set in ``member`` (B, N), and whether both exist."""
    B, m, w = lists.shape
    hit = torch.gather(member, 1, lists.reshape(B, m * w)).reshape(B, m, w).to(torch.uint8)
    first = torch.argmax(hit, dim=-1, keepdim=True)
    ok = torch.gather(hit, -1, first)
    hit.scatter_(-1, first, 0)
    second = torch.argmax(hit, dim=-1, keepdim=True)
    ok = (ok & torch.gather(hit, -1, second)).squeeze(-1).bool()
    return first.squeeze(-1), second.squeeze(-1), ok


def _mu_from_lists(X64: torch.Tensor, dist: torch.Tensor, ind: torch.Tensor,
                   rows: torch.Tensor, prefix: int = 32) -> torch.Tensor:
    """mu = r2 / r1 of every member z of the neighbourhoods N_k(x), x in ``rows``,
    read off the global sorted kNN lists instead of recomputing distances.

    ``dist``/``ind`` (N, k) are every point's exact k nearest neighbours,
    ascending. Within N_k(x), the nearest and second nearest other members of z
    are the first two entries of z's own list L(z) that belong to N_k(x): L(z)
    holds every point closer to z than its last entry, in order. The first
    ``prefix`` entries of L(z) are searched first, the whole list where they
    hold fewer than two members, and the few members whose whole list holds
    fewer than two are done by brute force against the k members. Exact, and
    O(k * prefix) lookups per point instead of O(k^2 D) arithmetic.
    """
    S = ind[rows]                                            # (B, k) members
    B, k = S.shape
    member = torch.zeros(B, len(ind), dtype=torch.bool, device=ind.device)
    member.scatter_(1, S, True)
    first, second, ok = _first_two(member, ind[S, :prefix])
    if not ok.all():
        b, j = (~ok).nonzero(as_tuple=True)
        f, s, o = _first_two(member[b], ind[S[b, j]][:, None, :])
        first[b, j], second[b, j], ok[b, j] = f[:, 0], s[:, 0], o[:, 0]
    flat = dist.reshape(-1)
    r1, r2 = flat[S * k + first], flat[S * k + second]
    if not ok.all():
        b, j = (~ok).nonzero(as_tuple=True)
        d = torch.linalg.vector_norm(X64[S[b]] - X64[S[b, j]][:, None, :], dim=-1)  # (F, k)
        d[torch.arange(len(j), device=d.device), j] = float("inf")
        two = torch.topk(d, 2, dim=-1, largest=False, sorted=True).values
        r1[b, j], r2[b, j] = two[:, 0], two[:, 1]
    return (r2 / r1.clamp_min(_TINY)).clamp_min(1.0)


def local_twonn_from_knn(X: ArrayLike, dist: np.ndarray, ind: np.ndarray,
                         discard_fraction: float = 0.1, convention: Convention = "skdim-0.5",
                         batch_size: int = 512, device: str | None = None) -> np.ndarray:
    """Pointwise TwoNN given every point's exact sorted kNN (``knn(X, k)``):
    LID(x) = TwoNN slope of the ratios mu_z, z in N_k(x) (see :class:`LocalTwoNN`)."""
    _check_convention(convention)
    dev = _device(device)
    X64 = _as_centered64(_as_numpy(X), dev)
    D, I = torch.as_tensor(dist, device=dev), torch.as_tensor(ind, device=dev)
    out = [
        twonn_from_mu(_mu_from_lists(X64, D, I, torch.arange(s, min(s + batch_size, len(I)), device=dev)),
                      discard_fraction, convention)
        for s in range(0, len(I), batch_size)
    ]
    return torch.cat(out).cpu().numpy()


class LocalTwoNN:
    """Pointwise TwoNN on kNN neighbourhoods (Ruppik et al., 2025, arXiv:2506.01034).

    Pipeline: drop duplicate rows (``np.unique(axis=0)``, first occurrence
    kept, count in ``n_duplicates_``); subsample to ``max_points`` rows
    (seeded, without replacement); for each remaining point x take its
    ``n_neighbors`` nearest neighbours N_k(x) (x itself excluded, as
    ``skdim.asPointwise``) and run :class:`TwoNN` on those k points, i.e.
    for every member z of N_k(x), mu_z = r2(z) / r1(z) with r1, r2 the
    distances to z's 1st and 2nd nearest neighbours within N_k(x); then
    LID(x) = slope of -log(1 - F_i) on log(mu_(i)) (see :func:`twonn_from_mu`).

    Attributes
    ----------
    dimension_pw_ : ndarray (n_points,), LID per retained point
    dimension_ : float, mean of ``dimension_pw_``
    n_duplicates_ : int
    sample_indices_ : ndarray (n_points,), rows of X that were used (ascending)
    neighbors_ : ndarray (n_points, n_neighbors), kNN indices into the used rows
    """

    def __init__(self, n_neighbors: int = 128, discard_fraction: float = 0.1,
                 convention: Convention = "skdim-0.5", max_points: int | None = 60000,
                 seed: int = 0, batch_size: int = 512, block: int = 4096,
                 device: str | None = None) -> None:
        self.n_neighbors = n_neighbors
        self.discard_fraction = discard_fraction
        self.convention = convention
        self.max_points = max_points
        self.seed = seed
        self.batch_size = batch_size
        self.block = block
        self.device = device

    def fit(self, X: ArrayLike, y: None = None) -> "LocalTwoNN":
        _check_convention(self.convention)
        _n_fit(self.n_neighbors, self.discard_fraction, self.convention)  # validate early
        Xn = _as_numpy(X)
        first, self.n_duplicates_ = _dedup(Xn)
        self.sample_indices_ = _subsample(first, self.max_points, self.seed)
        Xs = Xn[self.sample_indices_]
        dist, self.neighbors_ = knn(Xs, self.n_neighbors, block=self.block, device=self.device)
        self.dimension_pw_ = local_twonn_from_knn(Xs, dist, self.neighbors_, self.discard_fraction,
                                                  self.convention, self.batch_size, self.device)
        self.dimension_ = float(self.dimension_pw_.mean())
        return self


# --------------------------------------------------------------------------
# Levina-Bickel MLE
# --------------------------------------------------------------------------
class MLE:
    """Levina-Bickel maximum-likelihood intrinsic dimension.

    Per point (Levina & Bickel, 2004, "Maximum Likelihood Estimation of
    Intrinsic Dimension", NeurIPS, eq. 8), with T_j(x) the distance to the
    j-th nearest neighbour (x excluded):

        m_k(x) = [ (1/(k-1)) sum_{j=1}^{k-1} log(T_k(x) / T_j(x)) ]^{-1}

    Global value with the MacKay & Ghahramani (2005) correction (average the
    inverses, not the estimates): m_k = 1 / mean_x(1 / m_k(x)).
    Duplicate rows are removed first (count in ``n_duplicates_``); zero
    distances are guarded so the output stays finite.

    Attributes
    ----------
    dimension_pw_ : ndarray (n_points,)
    dimension_ : float
    n_duplicates_ : int
    sample_indices_ : ndarray, rows of X used
    """

    def __init__(self, n_neighbors: int = 20, block: int = 4096,
                 device: str | None = None) -> None:
        self.n_neighbors = n_neighbors
        self.block = block
        self.device = device

    def fit(self, X: ArrayLike, y: None = None) -> "MLE":
        if self.n_neighbors < 2:
            raise ValueError("n_neighbors must be >= 2")
        Xn = _as_numpy(X)
        self.sample_indices_, self.n_duplicates_ = _dedup(Xn)
        T, _ = knn(Xn[self.sample_indices_], self.n_neighbors, block=self.block,
                   device=self.device)
        T = np.maximum(T, np.finfo(np.float64).tiny)
        inv = np.log(T[:, -1:] / T[:, :-1]).mean(axis=1)  # 1 / m_k(x)
        inv = np.maximum(inv, np.finfo(np.float64).tiny)
        self.dimension_pw_ = 1.0 / inv
        self.dimension_ = float(1.0 / inv.mean())
        return self
