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

All of them rest on :func:`knn`, exact k nearest neighbours: float32
candidates from the upper half of the distance matrix kept in faiss' bounded
heaps (torch on CUDA), then float64 distances for the candidates that can be
among the k nearest.

All estimators take numpy arrays or torch tensors and expose numpy results:
``dimension_`` (float) and ``dimension_pw_`` (per point, where defined).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import numpy as np
import torch

__all__ = ["knn", "TwoNN", "LocalTwoNN", "MLE", "local_twonn_from_knn"]

Convention = Literal["skdim-0.5", "skdim-0.3"]
ArrayLike = np.ndarray | torch.Tensor
_TINY = torch.finfo(torch.float64).tiny
_T = TypeVar("_T")


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
    src = torch.as_tensor(X)
    T = src.to(device=device, dtype=torch.float64)
    if T.data_ptr() == src.data_ptr():  # no copy made: do not centre the caller's array in place
        return T - T.mean(dim=0, keepdim=True)
    return T.sub_(T.mean(dim=0, keepdim=True))


def _dedup(X: np.ndarray) -> tuple[np.ndarray, int]:
    """Indices of the first occurrence of each distinct row (original order)
    and the number of rows removed (see :func:`_first_equal`)."""
    rep = _first_equal(X)
    first = np.flatnonzero(rep == np.arange(len(X)))
    return first, len(X) - len(first)


def _first_equal(X: np.ndarray) -> np.ndarray:
    """For every row, the index of the first row equal to it. Rows are hashed
    (their bytes, with -0.0 read as 0.0, times random odd 64-bit multipliers,
    summed mod 2^64) and only rows whose hash repeats are compared, so this is
    O(N D) instead of the lexicographic sort of ``np.unique(axis=0)``; a hash
    collision between different rows (probability ~N^2 / 2^64) falls back to
    ``np.unique``."""
    n = len(X)
    words = _row_words(X)
    mult = np.random.default_rng(0).integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | np.uint64(1)
    h = np.empty(n, dtype=np.uint64)
    for s in range(0, n, 4096):
        h[s:s + 4096] = (words[s:s + 4096].astype(np.uint64) * mult).sum(axis=1)
    _, first_of, inverse = np.unique(h, return_index=True, return_inverse=True)
    rep = first_of[inverse.ravel()]
    dup = np.flatnonzero(rep != np.arange(n))
    if not np.array_equal(words[dup], words[rep[dup]]):
        _, first_of, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
        rep = first_of[inverse.ravel()]
    return rep


def _row_words(X: np.ndarray) -> np.ndarray:
    """The rows of ``X`` as unsigned integer words (bit patterns; -0.0 as 0.0)."""
    X = np.ascontiguousarray(X)
    if X.dtype.kind == "f":
        X = X + X.dtype.type(0)  # -0.0 + 0.0 = 0.0, as np.unique compares
    raw = X.view(np.uint8).reshape(len(X), -1)
    for word in (np.uint64, np.uint32, np.uint16):
        if raw.shape[1] % np.dtype(word).itemsize == 0:
            return raw.view(word)
    return raw


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
def _margin(n: int, k: int) -> int:
    """Candidates kept per point: ``k + max(16, k // 4)``, at most ``n - 1``."""
    return min(n - 1, k + max(16, k // 4))


def _default_threads() -> int:
    """CPU threads by default: ``OMP_NUM_THREADS`` when set, else every usable core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))


def _candidates_cpu(X32: torch.Tensor, m: int, threads: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``m`` nearest other rows of every row in float32, each ``(n, m)`` ascending, and the
    largest squared distance returned per row (in float32, a lower bound for every row not
    returned).

    The distance matrix is symmetric, so only its blocks on and above the diagonal are computed
    (``||a||^2 + ||b||^2 - 2 a.b``, one float32 GEMM per block of about ``block`` rows, half the
    multiply-adds of a search of every row against every row, e.g. faiss ``IndexFlatL2``), each
    block offered to the kept lists of its rows and, transposed, of its columns. The lists are
    faiss' bounded max-heaps (``float_maxheap_array_t.addn``: a value enters only when it is below
    the row's current m-th smallest, the heap's top); the row itself is kept out by index. The
    blocks run on ``threads`` threads (torch and faiss on one thread each), a lock per row block
    guarding its heaps; the m kept per row do not depend on the order, up to ties in float32."""
    import faiss

    n = len(X32)
    nb = max(1, round(n / block))
    bounds = np.linspace(0, n, nb + 1).round().astype(np.int64).tolist()
    sq = (X32 * X32).sum(dim=1)
    val = np.empty((n, m), dtype=np.float32)
    ids = np.empty((n, m), dtype=np.int64)
    heaps = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        h = faiss.float_maxheap_array_t()
        h.nh, h.k, h.val, h.ids = b - a, m, faiss.swig_ptr(val[a:b]), faiss.swig_ptr(ids[a:b])
        h.heapify()
        heaps.append(h)
    locks = [threading.Lock() for _ in heaps]

    def offer(I: int, D: torch.Tensor, j0: int) -> None:
        with locks[I]:
            heaps[I].addn(D.shape[1], faiss.swig_ptr(D.numpy()), j0, 0, D.shape[0])

    def pair(IJ: tuple[int, int]) -> None:
        faiss.omp_set_num_threads(1)  # OpenMP's thread count is per thread (faiss has its own runtime)
        I, J = IJ
        a, b, c, d = bounds[I], bounds[I + 1], bounds[J], bounds[J + 1]
        D = torch.addmm(sq[None, c:d], X32[a:b], X32[c:d].T, alpha=-2.0).add_(sq[a:b, None])
        if I == J:
            D.fill_diagonal_(float("inf"))  # the row itself
        offer(I, D, c)
        if I != J:
            offer(J, D.T.contiguous(), a)

    def finish(I: int) -> None:
        faiss.omp_set_num_threads(1)
        heaps[I].reorder()  # ascending

    _thread_map(pair, [(I, I + s) for s in range(nb) for I in range(nb - s)], threads)
    _thread_map(finish, list(range(nb)), threads)
    return val, ids, val[:, -1].copy()


def _candidates_torch(X32: torch.Tensor, m: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same contract as :func:`_candidates_cpu`, blockwise ``torch.topk`` on
    ``||a||^2 + ||b||^2 - 2 a.b`` in float32 (for CUDA), self masked by index."""
    n = len(X32)
    sq = (X32 * X32).sum(dim=1)
    d2 = np.empty((n, m), dtype=np.float32)
    ind = np.empty((n, m), dtype=np.int64)
    last = np.empty(n, dtype=np.float32)
    for s in range(0, n, block):
        rows = slice(s, min(s + block, n))
        d = sq[rows, None] + sq[None, :] - 2.0 * (X32[rows] @ X32.T)
        r = torch.arange(rows.start, rows.stop, device=X32.device)
        d[r - rows.start, r] = float("inf")
        v, i = torch.topk(d, min(m + 1, n - 1), dim=1, largest=False, sorted=True)
        d2[rows], ind[rows] = v[:, :m].cpu().numpy(), i[:, :m].cpu().numpy()
        last[rows] = v[:, -1].cpu().numpy()
    return d2, ind, last


def _unit_roundoff(dev: torch.device) -> float:
    """Unit roundoff of the candidate search's float32 products (TF32 when enabled on CUDA)."""
    matmul = torch.backends.cuda.matmul
    tf32 = dev.type == "cuda" and (matmul.allow_tf32 or getattr(matmul, "fp32_precision", "") == "tf32")
    return 2.0 ** -11 if tf32 else 2.0 ** -24


def _exact_sq(X64: torch.Tensor, sq: torch.Tensor, crow: torch.Tensor, rows: torch.Tensor,
              cols: torch.Tensor, lo: int = 0, left: torch.Tensor | None = None) -> torch.Tensor:
    """Exact float64 squared distances of the pairs ``(rows[p], cols[p])`` (CSR
    over rows ``lo .. lo + len(crow) - 2``: row ``lo + i``'s pairs are
    ``crow[i]:crow[i + 1]``, ``cols`` ascending within a row; or over the rows
    of ``left``, ``X64[rows]`` in CSR order, when given):
    ``||a||^2 + ||b||^2 - 2 a.b`` on centred data, the dot
    products by ``torch.sparse.sampled_addmm`` (only the requested entries of
    X X^T, no (pairs, D) temporaries); pairs where cancellation could cost more
    than ~1e-12 relative (``||a||^2 + ||b||^2 > 1e4 d^2``, duplicates included)
    are recomputed as ``||a - b||^2``."""
    n, nr = len(X64), len(crow) - 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros(len(cols), dtype=X64.dtype, device=X64.device),
                                          size=(nr, n), check_invariants=False)
    dot = torch.sparse.sampled_addmm(pattern, X64[lo:lo + nr] if left is None else left, X64.T, beta=0.0).values()
    norms = sq[rows] + sq[cols]
    d2 = (norms - 2.0 * dot).clamp_min_(0.0)
    bad = (norms > 1e4 * d2).nonzero().squeeze(1)
    for s in range(0, len(bad), 4096):
        p = bad[s:s + 4096]
        d2[p] = (X64[rows[p]] - X64[cols[p]]).square().sum(dim=1)
    return d2


def _exact_rows(X64: torch.Tensor, sq: torch.Tensor, norm: np.ndarray, d32: np.ndarray, cand: np.ndarray,
                last: np.ndarray, k: int, u: float, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 2 and 3 of :func:`knn` for the rows ``lo .. lo + len(d32) - 1`` (their float32
    candidates ``d32``/``cand``/``last``): the k nearest by exact distance and index, and which
    rows must be redone by brute force. ``norm``: every row's norm (centred data)."""
    n, m = len(X64), cand.shape[1]
    here = norm[lo:lo + len(cand)]
    err = u * (here[:, None] + norm[cand]) ** 2
    upper = np.partition(d32 + err, k - 1, axis=1)[:, k - 1]
    need = d32 - err <= upper[:, None]
    # A point b beyond the candidates can only be among the k nearest if d(a, b)^2 <= upper, and
    # d(a, b) >= |b| - |a|: so |b| <= |a| + sqrt(upper) bounds its rounding error (a few massive
    # activations with norms in the thousands would otherwise make every row unsure).
    reach = np.minimum(norm.max(), here + np.sqrt(np.maximum(upper, 0.0)))
    unsure = np.zeros(len(cand), dtype=bool) if m == n - 1 else last - u * (here + reach) ** 2 <= upper
    order = np.argsort(cand, axis=1)  # by index: the stable sort below breaks ties by index
    cand, need = np.take_along_axis(cand, order, 1), np.take_along_axis(need, order, 1)
    rows, at = np.nonzero(need)
    cols = cand[rows, at]
    crow = np.concatenate([[0], np.cumsum(need.sum(axis=1))])
    dev = X64.device
    d2 = _exact_sq(X64, sq, *(torch.from_numpy(a).to(dev) for a in (crow, rows + lo, cols)), lo=lo).cpu().numpy()
    pos = (np.cumsum(need, axis=1) - 1)[rows, at]
    full_d = np.full((len(cand), int(pos.max()) + 1), np.inf)
    full_i = np.zeros(full_d.shape, dtype=np.int64)
    full_d[rows, pos], full_i[rows, pos] = d2, cols
    top = np.argsort(full_d, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(full_d, top, 1)), np.take_along_axis(full_i, top, 1), unsure


def _brute_rows(X64: torch.Tensor, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN of ``rows`` against all points by float64 difference form
    (the fallback where the candidate set cannot be shown to hold the k nearest)."""
    dist = np.empty((len(rows), k))
    ind = np.empty((len(rows), k), dtype=np.int64)
    for j, r in enumerate(rows.tolist()):
        d = torch.linalg.vector_norm(X64 - X64[r], dim=1).cpu().numpy()
        d[r] = np.inf
        order = np.argsort(d, kind="stable")[:k]
        dist[j], ind[j] = d[order], order
    return dist, ind


def knn(X: ArrayLike, k: int, block: int = 4096, device: str | torch.device | None = None,
        n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of every row, the row itself excluded.

    1. Candidates, in float32 on the centred data: ``m = k + max(16, k // 4)``
       nearest rows of each row. On CPU by :func:`_candidates_cpu`: the blocks
       on and above the diagonal of the distance matrix (BLAS
       ``||a||^2 + ||b||^2 - 2 a.b``, half the work of a search of all rows
       against all, e.g. faiss ``IndexFlatL2``; Johnson, Douze & Jegou, 2019,
       IEEE Trans. Big Data), each offered to the bounded heaps of its rows and
       of its columns; on CUDA by blockwise ``torch.topk`` on the same identity
       (memory O(block * N)). The row itself is removed by index, not by distance.
    2. A float32 squared distance is within ``e = (D + 8) u (||a|| + ||b||)^2``
       of the exact one (u the unit roundoff; the standard dot-product bound,
       Higham 2002, section 3.1). Let U be the k-th smallest ``d32 + e`` among
       the candidates: only candidates with ``d32 - e <= U`` can be among the
       k nearest, and their distances are computed exactly in float64 (see
       :func:`_exact_sq`). Rows whose non-candidates cannot be excluded the
       same way (many near-ties, duplicates beyond the margin) are redone by
       float64 brute force.
    3. The k nearest by (exact distance, index), so ties go to the lower index.

    ``block`` is the number of rows per block of the torch (CUDA) search.
    ``n_threads`` (CPU; default: ``OMP_NUM_THREADS`` when set, else every
    usable core) is the number of threads of the candidate search (blocks of
    the distance matrix) and of the float64 re-check (contiguous blocks of
    rows), each running torch on one thread (the result does not depend on it). Returns ``(distances, indices)``, each ``(N, k)``, sorted ascending
    (distances float64, indices int64).
    """
    Xn = _as_numpy(X)
    n, D = Xn.shape
    if not 1 <= k <= n - 1:
        raise ValueError(f"need 1 <= k <= n_samples - 1, got k={k}, n={n}")
    if not np.isfinite(Xn).all():
        raise ValueError("X has non-finite values (nan or inf); distances are undefined")
    dev = _device(device)
    return _knn(_as_centered64(Xn, dev), k, block, n_threads)[:2]


def _knn(X64: torch.Tensor, k: int, block: int, n_threads: int | None) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """:func:`knn` of the centred float64 ``X64`` (on its device); also returns the squared norms."""
    n, D = X64.shape
    dev = X64.device
    m = _margin(n, k)
    threads = _n_threads(n_threads, dev)
    if dev.type == "cpu":
        d32, cand, last = _candidates_cpu(X64.float(), m, threads)
    else:
        d32, cand, last = _candidates_torch(X64.float(), m, block)
    sq = (X64 * X64).sum(dim=1)
    norm = sq.sqrt().cpu().numpy()
    u = (D + 8) * _unit_roundoff(dev)
    # rows in contiguous blocks on ``threads`` threads (torch on one thread each); the same values either way
    bounds = np.linspace(0, n, min(n, 4 * threads) + 1).round().astype(np.int64).tolist()
    parts = _thread_map(lambda ab: _exact_rows(X64, sq, norm, d32[ab[0]:ab[1]], cand[ab[0]:ab[1]], last[ab[0]:ab[1]],
                                               k, u, ab[0]),
                        [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a], threads)
    dist, ind, unsure = (np.concatenate(p) for p in zip(*parts))
    redo = np.flatnonzero(unsure)
    if len(redo):
        dist[redo], ind[redo] = _brute_rows(X64, redo, k)
    return dist, ind, sq


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
_WIDTHS = (8, 16, 32, 64)


def _list_slices(ind: torch.Tensor, member_size: int, widths: tuple[int, ...] = _WIDTHS) -> list[tuple[int, int, torch.Tensor]]:
    """The kNN lists ``ind`` (N, m) cut into the column slices that :func:`_mu_from_lists` scans
    (0-7, 8-15, 16-31, 32-63, then the rest), each contiguous, as int32 where every bitmap
    offset (< ``member_size``) fits: a slice of one list is then one short read (the lookups
    ran 2.8x faster than through int64 column views)."""
    m = ind.shape[1]
    small = member_size < 2**31
    bounds = [0, *[w for w in widths if w < m], m]
    return [(p0, p1, ind[:, p0:p1].to(torch.int32 if small else torch.int64).contiguous())
            for p0, p1 in zip(bounds[:-1], bounds[1:])]


def _mu_from_lists(X64: torch.Tensor, sq: torch.Tensor, dist: torch.Tensor, ind: torch.Tensor,
                   S: torch.Tensor, member: torch.Tensor,
                   slices: list[tuple[int, int, torch.Tensor]] | None = None) -> torch.Tensor:
    """mu = r2 / r1 of every member z of the neighbourhoods ``S`` (B, k), one row
    per neighbourhood N_k(x), read off the sorted kNN lists instead of recomputing
    distances.

    ``dist``/``ind`` (N, m >= k) are every point's exact nearest neighbours,
    ascending. Within N_k(x), the nearest and second nearest other members of z
    are the first two entries of z's own list L(z) that belong to N_k(x): L(z)
    holds every point closer to z than its last entry, in order (points of L(z)
    outside N_k(x) are skipped, so the lists may be longer than k or hold points
    left out of the data). Membership is a lookup in ``member``, a zeroed flat
    (B * N) bitmap that is set for the batch and cleared again. L(z) is scanned
    in slices (positions 0-7, 8-15, 16-31, 32-63, then the rest; ``slices``
    from :func:`_list_slices`, made here when not given), each pair
    (x, z) only until two members are found; the few z whose whole list holds
    fewer than two members get their distances to the k members in float64 by
    the same formula as the lists (:func:`_exact_sq` on the centred ``X64``,
    squared norms ``sq``). Exact, and O(k s) lookups per point, s the mean
    position of the second member (~15 at k = 100 in 20 dimensions), instead
    of O(k^2 D) arithmetic.
    """
    N, m = ind.shape
    B, k = S.shape
    dev = ind.device
    slices = _list_slices(ind, len(member)) if slices is None else slices
    base = torch.arange(B, device=dev)[:, None] * N                  # row offset in the bitmap
    flat_members = (base + S).reshape(-1)
    member[flat_members] = True
    z = S.reshape(-1)                                                 # (B k,) pairs (x, z)
    zbase = base.expand(-1, k).reshape(-1).to(slices[0][2].dtype)
    pos = torch.zeros(2, len(z), dtype=torch.int64, device=dev)      # first, second member positions
    found = torch.zeros(len(z), dtype=torch.int64, device=dev)
    todo = torch.arange(len(z), device=dev)
    for p0, p1, part in slices:
        hit = member[zbase[todo, None] + part[z[todo]]]                # (P, p1 - p0)
        r, c = hit.nonzero(as_tuple=True)
        count = torch.bincount(r, minlength=len(todo))
        start = torch.cumsum(count, 0) - count
        for nth in (0, 1):                                            # nth hit in this slice
            sel = (count > nth).nonzero().squeeze(1)
            slot = found[todo[sel]] + nth
            keep = slot < 2
            sel, slot = sel[keep], slot[keep]
            pos[slot, todo[sel]] = c[start[sel] + nth] + p0
        found[todo] = (found[todo] + count).clamp_max_(2)
        todo = todo[found[todo] < 2]
        if len(todo) == 0:
            break
    member[flat_members] = False
    r1, r2 = dist[z, pos[0]], dist[z, pos[1]]
    if len(todo):
        r1[todo], r2[todo] = _two_nearest_members(X64, sq, S, todo)
    return (r2 / r1.clamp_min(_TINY)).clamp_min(1.0).reshape(B, k)


def _two_nearest_members(X64: torch.Tensor, sq: torch.Tensor, S: torch.Tensor,
                         pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances from z to its nearest and second nearest other member of N_k(x),
    for the pairs ``pairs`` (flat index ``b * k + j``: z = ``S[b, j]``), by
    :func:`_exact_sq` against the k members (dot products of the requested pairs
    only, no (pairs, k, D) temporaries)."""
    k = S.shape[1]
    b, j = pairs // k, pairs % k
    cols, order = torch.sort(S[b], dim=1)                             # ascending within a row (CSR)
    zs = S[b, j]
    crow = torch.arange(0, len(pairs) * k + 1, k, device=S.device)
    d2 = _exact_sq(X64, sq, crow, zs.repeat_interleave(k), cols.reshape(-1), left=X64[zs]).reshape(len(pairs), k)
    d2[order == j[:, None]] = float("inf")                            # z itself
    two = torch.topk(d2, 2, dim=-1, largest=False, sorted=True).values.sqrt()
    return two[:, 0], two[:, 1]


def local_twonn_from_knn(X: ArrayLike, dist: np.ndarray, ind: np.ndarray,
                         discard_fraction: float = 0.1, convention: Convention = "skdim-0.5",
                         batch_size: int = 512, device: str | None = None,
                         n_threads: int | None = None,
                         neighborhoods: np.ndarray | None = None) -> np.ndarray:
    """Pointwise TwoNN given every point's exact sorted kNN (``knn(X, k)``):
    LID(x) = TwoNN slope of the ratios mu_z, z in N_k(x) (see :class:`LocalTwoNN`).
    ``neighborhoods`` (B, k): the neighbourhoods to evaluate, one per row (default
    ``ind``, every point's own); ``dist``/``ind`` may then be longer lists (used
    for the lookups, see :func:`_mu_from_lists`). On CPU the batches of rows run
    on ``n_threads`` threads (default as :func:`knn`), each with torch on one
    thread and its own membership bitmap; the result does not depend on ``n_threads``."""
    _check_convention(convention)
    X64 = _as_centered64(_as_numpy(X), _device(device))
    return _local_twonn(X64, (X64 * X64).sum(dim=1), dist, ind, discard_fraction, convention, batch_size,
                        n_threads, neighborhoods)


def _local_twonn(X64: torch.Tensor, sq: torch.Tensor, dist: np.ndarray, ind: np.ndarray, discard_fraction: float,
                 convention: Convention, batch_size: int, n_threads: int | None,
                 neighborhoods: np.ndarray | None) -> np.ndarray:
    """:func:`local_twonn_from_knn` on the centred float64 ``X64`` (on its device), squared norms ``sq``."""
    dev = X64.device
    D, I = torch.as_tensor(dist, device=dev), torch.as_tensor(ind, device=dev)
    H = I if neighborhoods is None else torch.as_tensor(neighborhoods, device=dev)
    # rows per batch: at most batch_size, and on CPU a membership bitmap of at most
    # 4 MiB, so its random lookups hit the cache (at N = 100,000 a 51 MB bitmap made
    # the lookups DRAM-latency bound, ~10x slower)
    step = min(batch_size, len(H)) if dev.type != "cpu" else max(1, min(batch_size, 2**22 // len(I)))
    local = threading.local()
    slices = _list_slices(I, step * len(I))

    def work(s: int) -> torch.Tensor:
        if not hasattr(local, "member"):
            local.member = torch.zeros(step * len(I), dtype=torch.bool, device=dev)
        return twonn_from_mu(_mu_from_lists(X64, sq, D, I, H[s:s + step], local.member, slices),
                             discard_fraction, convention)

    if len(H) == 0:
        return np.empty(0)
    starts = list(range(0, len(H), step))
    if dev.type != "cpu":
        out = [work(s) for s in starts]
    else:
        out = _thread_map(work, starts, _n_threads(n_threads, dev))
    return torch.cat(out).cpu().numpy()


def _n_threads(n_threads: int | None, dev: torch.device) -> int:
    """Threads for the CPU steps after the candidate search: ``n_threads`` when
    given, else ``OMP_NUM_THREADS`` when set, else every usable core;
    1 on CUDA."""
    if dev.type != "cpu":
        return 1
    if n_threads is None:
        return _default_threads()
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    return n_threads


def _thread_map(fn: Callable[[_T], object], items: Sequence[_T], n_threads: int) -> list:
    """``[fn(x) for x in items]`` on ``n_threads`` Python threads (torch kernels
    release the GIL), each running torch on ONE thread: torch's own OpenMP team
    per op ran 10x slower whenever another process held a core (2-core machine),
    while independent single-threaded workers only share the cores. The caller's
    torch thread setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if n_threads <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        # OpenMP's thread count is per thread: set it in every worker too
        with ThreadPoolExecutor(min(n_threads, len(items)), initializer=torch.set_num_threads,
                                initargs=(1,)) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


class LocalTwoNN:
    """Pointwise TwoNN on kNN neighbourhoods (Ruppik et al., 2025, arXiv:2506.01034).

    Pipeline: drop duplicate rows (bitwise equal, see :func:`_dedup`; first occurrence
    kept, count in ``n_duplicates_``); subsample to ``max_points`` rows
    (seeded, without replacement); for each remaining point x take its
    ``n_neighbors`` nearest neighbours N_k(x) (x itself excluded, as
    ``skdim.asPointwise``) and run :class:`TwoNN` on those k points, i.e.
    for every member z of N_k(x), mu_z = r2(z) / r1(z) with r1, r2 the
    distances to z's 1st and 2nd nearest neighbours within N_k(x); then
    LID(x) = slope of -log(1 - F_i) on log(mu_(i)) (see :func:`twonn_from_mu`).
    ``n_threads``: CPU threads of the steps after the faiss search (see
    :func:`knn`; default every usable core); results do not depend on it.

    Attributes
    ----------
    dimension_pw_ : ndarray (n_points,), LID per retained point
    dimension_ : float, mean of ``dimension_pw_``
    n_duplicates_ : int
    sample_indices_ : ndarray (n_points,), rows of X that were used (ascending)
    neighbors_ : ndarray (n_points, n_neighbors), kNN indices into the used rows
    distances_ : ndarray (n_points, n_neighbors), their exact distances (float64)

    ``n_spare``: extra neighbours kept per point, so that :meth:`without` can
    leave out up to that many points without a new search.
    """

    def __init__(self, n_neighbors: int = 128, discard_fraction: float = 0.1,
                 convention: Convention = "skdim-0.5", max_points: int | None = 60000,
                 seed: int = 0, batch_size: int = 512, block: int = 4096,
                 device: str | None = None, n_threads: int | None = None, n_spare: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.discard_fraction = discard_fraction
        self.convention = convention
        self.max_points = max_points
        self.seed = seed
        self.batch_size = batch_size
        self.block = block
        self.device = device
        self.n_threads = n_threads
        self.n_spare = n_spare

    def fit(self, X: ArrayLike, y: None = None) -> "LocalTwoNN":
        _check_convention(self.convention)
        _n_fit(self.n_neighbors, self.discard_fraction, self.convention)  # validate early
        if self.n_spare < 0:
            raise ValueError(f"n_spare must be >= 0, got {self.n_spare}")
        Xn = _as_numpy(X)
        self._X, self._first = Xn, _first_equal(Xn)
        first = np.flatnonzero(self._first == np.arange(len(Xn)))
        self.n_duplicates_ = len(Xn) - len(first)
        self.sample_indices_ = _subsample(first, self.max_points, self.seed)
        Xs = Xn[self.sample_indices_]
        k = self.n_neighbors
        if not 1 <= k <= len(Xs) - 1:
            raise ValueError(f"need 1 <= k <= n_samples - 1, got k={k}, n={len(Xs)}")
        if not np.isfinite(Xs).all():
            raise ValueError("X has non-finite values (nan or inf); distances are undefined")
        X64 = _as_centered64(Xs, _device(self.device))
        dist, ind, sq = _knn(X64, min(k + self.n_spare, len(Xs) - 1), self.block, self.n_threads)
        self._lists = (dist, ind)
        self.distances_, self.neighbors_ = (a[:, :k] for a in self._lists)
        self.dimension_pw_ = _local_twonn(X64, sq, *self._lists, self.discard_fraction, self.convention,
                                          self.batch_size, self.n_threads, self.neighbors_)
        self.dimension_ = float(self.dimension_pw_.mean())
        return self

    def without(self, rows: ArrayLike) -> "LocalTwoNN":
        """The estimator fitted to the data of :meth:`fit` with the rows ``rows`` left
        out: the values of ``LocalTwoNN(same parameters).fit(np.delete(X, rows, 0))``
        (to float64 rounding: that fit centres the data on another mean). A point
        whose neighbourhood held no removed point keeps its value (TwoNN on N_k(x)
        reads only distances within N_k(x)); the others get their new k nearest
        from the lists of the fit (``n_spare`` extra neighbours) and are
        recomputed. A new fit when more distinct points go than ``n_spare`` or
        the fit subsampled (``max_points``)."""
        Xn, k = self._X, self.n_neighbors
        drop = np.zeros(len(Xn), dtype=bool)
        drop[np.asarray(rows, dtype=np.int64)] = True
        kept = np.flatnonzero(~drop)
        groups, at = np.unique(self._first[kept], return_index=True)  # distinct rows left, first kept copy
        if len(groups) <= k:
            raise ValueError(f"need 1 <= k <= n_samples - 1, got k={k}, n={len(groups)} distinct rows left")
        gone = ~np.isin(self.sample_indices_, groups)
        subsampled = len(self.sample_indices_) < len(Xn) - self.n_duplicates_
        if subsampled or self._lists is None or self._lists[1].shape[1] - gone.sum() < k:
            return _refit(self, np.delete(Xn, np.flatnonzero(drop), axis=0))
        dist, ind = self._lists
        stay = np.flatnonzero(~gone)
        hit = stay[gone[self.neighbors_[stay]].any(axis=1)]            # neighbourhoods that held a removed point
        pw, nbrs, nd = self.dimension_pw_.copy(), self.neighbors_.copy(), self.distances_.copy()
        if len(hit):
            left = ~gone[ind[hit]]
            take = np.argsort(~left, axis=1, kind="stable")[:, :k]      # the first k entries still there
            nbrs[hit], nd[hit] = np.take_along_axis(ind[hit], take, 1), np.take_along_axis(dist[hit], take, 1)
            pw[hit] = local_twonn_from_knn(Xn[self.sample_indices_], dist, ind, self.discard_fraction,
                                           self.convention, self.batch_size, self.device, self.n_threads,
                                           nbrs[hit])
        new_rows = at                                                 # each group's first row in the reduced data
        rank = np.empty(len(Xn), dtype=np.int64)
        rank[self.sample_indices_[stay]] = np.arange(len(stay))
        order = np.argsort(new_rows, kind="stable")                   # fresh fit: by first kept copy
        keep_pos = rank[groups[order]]                                # positions in ``stay`` of the new order
        renumber = np.full(len(self.sample_indices_), -1, dtype=np.int64)
        renumber[stay[keep_pos]] = np.arange(len(keep_pos))
        out = _refit(self, None)
        out._X = np.delete(Xn, np.flatnonzero(drop), axis=0)
        out._first = _first_equal(out._X)
        out.n_duplicates_ = len(kept) - len(groups)
        out.sample_indices_ = new_rows[order]
        out.dimension_pw_ = pw[stay[keep_pos]]
        out.neighbors_ = renumber[nbrs[stay[keep_pos]]]
        out.distances_ = nd[stay[keep_pos]]
        out._lists = None
        out.dimension_ = float(out.dimension_pw_.mean())
        return out


def _refit(est: LocalTwoNN, X: np.ndarray | None) -> LocalTwoNN:
    """A new estimator with ``est``'s parameters, fitted to ``X`` (unfitted when None)."""
    new = LocalTwoNN(est.n_neighbors, est.discard_fraction, est.convention, est.max_points, est.seed,
                     est.batch_size, est.block, est.device, est.n_threads, est.n_spare)
    return new if X is None else new.fit(X)


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
                 device: str | None = None, n_threads: int | None = None) -> None:
        self.n_neighbors = n_neighbors
        self.block = block
        self.device = device
        self.n_threads = n_threads

    def fit(self, X: ArrayLike, y: None = None) -> "MLE":
        if self.n_neighbors < 2:
            raise ValueError("n_neighbors must be >= 2")
        Xn = _as_numpy(X)
        self.sample_indices_, self.n_duplicates_ = _dedup(Xn)
        T, _ = knn(Xn[self.sample_indices_], self.n_neighbors, block=self.block,
                   device=self.device, n_threads=self.n_threads)
        T = np.maximum(T, np.finfo(np.float64).tiny)
        inv = np.log(T[:, -1:] / T[:, :-1]).mean(axis=1)  # 1 / m_k(x)
        inv = np.maximum(inv, np.finfo(np.float64).tiny)
        self.dimension_pw_ = 1.0 / inv
        self.dimension_ = float(1.0 / inv.mean())
        return self
