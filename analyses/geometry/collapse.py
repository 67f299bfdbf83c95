"""Streaming neural-collapse metrics, scikit-learn style (``partial_fit`` / ``fit`` / ``metrics``).

References:

- Papyan, Han & Donoho 2020, "Prevalence of neural collapse during the terminal phase of deep
  learning training" (PNAS): NC1-NC4.
- Wu & Papyan 2024, "Linguistic Collapse: Neural Collapse in (Large) Language Models"
  (NeurIPS 2024, arXiv 2405.17767): the same metrics with next tokens as classes, GNC2
  (hyperspherical uniformity) and UNC3 (uniform duality). Their measurements come from the
  ``neural_collapse`` library (github.com/rhubarbwu/neural-collapse, c05a0b8) called by the
  paper's ``analyze.py`` (github.com/rhubarbwu/linguistic-collapse, 9e25020, the NeurIPS
  version); the definitions below follow that code (lines cited), not a re-derivation. The
  July 2024 code (47d2fe9) stored standard deviations where the final one stores variances.
- Liu et al. 2023, "Generalizing and Decoupling Neural Collapse via Hyperspherical Uniformity
  Gap" (ICLR 2023): the logarithmic kernel behind GNC2.
- Galanti, Gyorgy & Hutter 2022, "On the Role of Neural Collapse in Transfer Learning": CDNV.
- "Exploring Weight Balancing on Long-Tailed Recognition Problem" (ICLR 2024): Fisher ratio
  on unnormalised scatter matrices and the cone effect (mean cosine of raw features).

Notation, on the *used* classes ``c = 1..C`` (count ``n_c >= min_count``, optionally only the
``top_classes`` most frequent), ``N = sum_c n_c``:

- ``mu_c`` class mean, ``mu_G = (1/C) sum_c mu_c`` (unweighted), ``mu = (1/N) sum_c n_c mu_c``.
- ``S_W = sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``, ``Sigma_W = S_W / N``.
- ``Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T``;
  ``S_B = sum_c n_c (mu_c - mu)(mu_c - mu)^T``.
- ``M`` the ``(C, D)`` stack of centred means ``mu_c - mu_G``; ``u_c = M_c / ||M_c||``.

Metrics returned by :meth:`CollapseStats.metrics`:

- ``nc1 = Tr(Sigma_W Sigma_B^+) / C``.
- ``nc2_equinorm = std_c ||mu_c - mu_G|| / mean_c ||mu_c - mu_G||``.
- ``nc2_equiangular = std_{c != c'} cos(mu_c - mu_G, mu_c' - mu_G)``;
  ``nc2_maxangle = mean_{c != c'} |cos(...) + 1/(C-1)|``.
- ``gnc2`` (hyperspherical uniformity, Wu & Papyan's GNC2): the variance, over the unordered
  pairs ``c < c'``, of the logarithmic inverse-distance kernel ``k_cc' = log(1/||u_c - u_c'||)``
  (population variance, i.e. divided by the number of pairs); ``gnc2_mean`` is its mean (the
  log energy: low = uniform on the sphere). Library: ``kernel_stats(M, m_G, log_kernel)``
  (``neural_collapse/kernels.py`` l. 76, 122, 151: ``kernel_grid`` normalises ``M - m_G``,
  ``m_G`` the unweighted mean of the class means; ``symm_reduce`` averages the upper
  triangle), called as ``kernel_grid(M, mG, log_kernel)`` in ``analyze.py`` l. 207 (``-kern
  log``: "Hyperspherical Uniformity (GNC2)") and stored as ``log_kern_mean`` /
  ``log_kern_var``; the library's README names the variance ``nc2g_log``. The library adds machine epsilon to the norms;
  here a zero ``M_c`` gives ``u_c = 0`` and no epsilon (equal up to rounding otherwise).
- ``nc3 = || W/||W||_F - M/||M||_F ||_F^2`` (only with ``classifier``; rows of the used classes).
- ``unc3`` (uniform duality, Wu & Papyan's UNC3; only with ``classifier``): the sample variance
  (``ddof = 1``, as ``torch.var``) over classes of ``cos(w_c, mu_c - mu_G)``; ``unc3_mean`` is
  their mean. ``analyze.py`` l. 220 (``-dual``, "Self/Uniform-Duality ((U)NC3)") stores
  ``similarities(W, M, mG, cos=True)`` as ``simcos_mean`` / ``simcos_var``
  (``neural_collapse/measure.py`` l. 132); the library's README example ``nc3u_uni_dual``
  takes the variance of the dot products instead (``cos=False``).
- ``nc4`` = fraction of samples whose nearest class mean equals the model's prediction
  (:meth:`CollapseStats.nc4`, or ``metrics(..., features=, predictions=)``).
- ``cdnv = mean_{i<j} (s_i^2 + s_j^2) / (2 ||mu_i - mu_j||^2)``,
  ``s_c^2 = (1/n_c) sum_{x in c} ||x - mu_c||^2``: Galanti et al.'s CDNV, the library's
  ``variability_cdnv(V, M)`` with its default ``dist_exp=1`` (``kernels.py`` l. 44,
  ``class_dist_norm_vars``: ``var_avgs / M_diff_norm_sq**dist_exp``).
  ``cdnv_dist4`` has ``||mu_i - mu_j||^4`` in the denominator instead: ``dist_exp=2``, which is
  what Wu & Papyan's ``analyze.py`` l. 187 computes for their CDNV (``variability_cdnv(V, M, 2,
  tile_size)``; the July 2024 ``lib/utils.py`` l. 222 ``class_dist_norm_var`` returned
  ``var_avgs / inner / inner``). The library documents ``dist_exp=1`` as Galanti et al.'s CDNV
  and a larger power as further discounting already-distant pairs.
- ``fisher_ratio = Tr(S_W^+ S_B)`` (warns when ``S_W`` is singular).
- ``cone``: mean cosine over all unordered pairs of raw samples (the cone effect);
  ``cone_same`` / ``cone_diff``: mean cosine over unordered pairs of raw samples of the same /
  different classes; ``cone_means``: mean cosine over pairs of raw class means.

Streaming state (float64): per-class count, mean, sum of ``||x - mu_c||^2``, sum of unit vectors
``u = x/||x||`` and sum of ``||u||^2`` (0 for a zero vector, else 1); one pooled ``(D, D)``
within-class scatter. Batches are merged with Chan et al.'s parallel update:
``M2 = M2_a + M2_b + n_a n_b / (n_a + n_b) d d^T``, ``d = mean_b - mean_a``; :meth:`remove`
runs it backwards (exact downdate), :meth:`CollapseStats.merged` runs it across accumulators.
Memory is ``O(C*D + D^2)``. The pooled scatter is exact for any selection that only drops
classes with fewer than 2 samples (they have zero scatter); for ``min_count > 2`` or
``top_classes`` the per-class ``(D, D)`` scatters are kept instead (``O(C*D^2)``,
``per_class_scatter``).

Cone effect from unit-vector sums: for a class ``c`` with sum ``s_c = sum_i u_i``,
``sum_{i<j in c} cos(x_i, x_j) = (||s_c||^2 - sum_i ||u_i||^2) / 2``; the same with the total sum
over all used samples gives all pairs, and different-class pairs = all pairs - same-class pairs.

Bootstrap (:func:`bootstrap_intervals`): the data are split into ``G`` groups of windows, one
accumulator each (``G`` times the memory: ``O(G (C*D + D^2))``, so ``G`` is small, e.g. 8; with
few groups the percentile intervals are coarse, a block bootstrap with ``G`` blocks). A replicate
draws multinomial weights ``w ~ Mult(G, 1/G)`` and merges the groups with them (group ``g``
counted ``w_g`` times). The merge is exact and cheap: with ``r_c`` the full-data class means,
each group keeps ``T_g = S_g + sum_c n_gc (mu_gc - r_c)(mu_gc - r_c)^T`` and then
``S_W(w) = sum_g w_g T_g - sum_c n_c(w) (mu_c(w) - r_c)(mu_c(w) - r_c)^T`` (parallel-axis theorem).

Cost of :meth:`CollapseStats.metrics`: one ``C x C`` Gram matrix of the centred means feeds NC2,
GNC2, CDNV and the cone of the means; ``Sigma_B^+`` acts through the Gram matrix
(``(M^T M)^+ = M^T K^{+2} M``, ``K = M M^T``, and ``K^+ = (K + s 1 1^T/C)^{-1} - 1 1^T/(s C)``
when ``K`` has rank ``C - 1``); ``S_W`` is factored once (Cholesky) for both NC1 and the Fisher
ratio. The eigenvalue cut-off ``rtol`` is certified with norm bounds
(``lambda_min(A) >= 1/||A^{-1}||_F``, ``lambda_max <= ||A||_F``), else decided by the
eigenvalues, so every value equals the pseudo-inverse definition up to float64 rounding.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from scipy.linalg import blas, lapack
from threadpoolctl import ThreadpoolController

__all__ = ["CollapseStats", "bootstrap_intervals", "jackknife_intervals", "merged_with_jackknife"]

Array = np.ndarray


def _as_numpy(x: Any) -> Array:
    """Torch tensor or array-like to a NumPy array (torch tensors are detached and moved to CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "double") and x.is_floating_point():
            x = x.double()
        x = x.numpy()
    return np.asarray(x)


_BLAS = ThreadpoolController()
F = TypeVar("F", bound=Callable[..., Any])


def _one_blas_thread(fn: F) -> F:
    """Run ``fn`` with NumPy's BLAS on one thread: on a busy 2-core machine (torch already uses
    both cores) threaded OpenBLAS makes a 576 x 576 ``eigh`` 50x slower, not faster."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _BLAS.limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _group_sum(x: Array, inv: Array, k: int) -> Array:
    """Row sums of ``x`` per group: ``out[g] = sum_{i: inv[i] = g} x[i]`` (``np.add.at`` is
    ~50x slower; this sorts once and uses ``np.add.reduceat``)."""
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    out = np.zeros((k, x.shape[1]))
    out[inv[order][starts]] = np.add.reduceat(x[order], starts, axis=0)
    return out


@functools.lru_cache(maxsize=8)
def _pairs(c: int) -> tuple[Array, Array]:
    """Row and column indices of the unordered pairs ``i < j`` of ``c`` items."""
    i, j = np.triu_indices(c, k=1)
    return i, j


class _Pairs:
    """Entries ``i < j`` of the Gram matrix ``K`` of the centred means, shared by NC2, GNC2, CDNV
    and the cone of the means."""

    def __init__(self, gram: Array) -> None:
        self.i, self.j = _pairs(len(gram))
        self.sq = np.diag(gram).copy()  # ||M_c||^2
        self.dot = gram[self.i, self.j]  # M_i . M_j


def _cholesky(a: Array) -> Array | None:
    """Lower Cholesky factor of a symmetric matrix, ``None`` if it is not positive definite."""
    low, info = lapack.dpotrf(a, lower=1)
    return low if info == 0 else None


def _inverse_if_certified(low: Array, a: Array, rtol: float) -> Array | None:
    """``L^{-1}`` if ``lambda_min(L L^T) > rtol * lambda_max(a)`` (``a`` symmetric; usually
    ``a = L L^T``) follows from norm bounds: ``1/lambda_min(L L^T) = ||L^{-1}||_2^2 <=
    min(||L^{-1}||_F^2, ||L^{-1}||_1 ||L^{-1}||_inf)`` and ``lambda_max(a) <= min(||a||_F,
    ||a||_1)``; ``None`` when the bounds do not settle it."""
    inv, info = lapack.dtrtri(low, lower=1)
    if info != 0:
        return None
    flat, a_flat = inv.ravel(), a.ravel()
    a_norm = float(np.sqrt(a_flat @ a_flat))
    if 1.0 > rtol * float(flat @ flat) * a_norm:
        return inv
    absinv = np.abs(inv)
    inv_norm2 = float(absinv.sum(0).max() * absinv.sum(1).max())
    a_norm = min(a_norm, float(np.abs(a).sum(0).max()))
    return inv if 1.0 > rtol * inv_norm2 * a_norm else None


class CollapseStats:
    """Streaming neural-collapse statistics (see the module docstring for every formula).

    Args:
        min_count: classes with fewer samples are ignored by :meth:`metrics`.
        top_classes: if given, only the ``top_classes`` most frequent eligible classes are
            used (ties broken by the smaller label).
        rtol: relative eigenvalue cut-off of the pseudo-inverses and the rank test.
        per_class_scatter: keep a ``(D, D)`` scatter per class (exact for any class
            selection, memory ``O(C*D^2)``). ``None`` (default): only when ``min_count > 2``
            or ``top_classes`` is set; otherwise one pooled scatter suffices.
    """

    def __init__(
        self,
        min_count: int = 2,
        top_classes: int | None = None,
        rtol: float = 1e-10,
        per_class_scatter: bool | None = None,
    ) -> None:
        self.min_count = min_count
        self.top_classes = top_classes
        self.rtol = rtol
        self.per_class_scatter = per_class_scatter
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> CollapseStats:
        """Forget everything seen so far."""
        self.labels_: Array = np.zeros(0, dtype=np.int64)
        self._index: dict[int, int] = {}
        self.counts_: Array = np.zeros(0)
        self.means_: Array | None = None
        self.m2_trace_: Array = np.zeros(0)
        self.unit_sum_: Array | None = None
        self.unit_sq_: Array = np.zeros(0)
        self.scatter_: Array | None = None
        self.class_scatter_: Array | None = None
        self.dim_: int | None = None
        return self

    def _params(self) -> dict[str, Any]:
        return {"min_count": self.min_count, "top_classes": self.top_classes, "rtol": self.rtol,
                "per_class_scatter": self.per_class_scatter}

    @property
    def _keep_class_scatter(self) -> bool:
        if self.per_class_scatter is not None:
            return self.per_class_scatter
        return self.min_count > 2 or self.top_classes is not None

    def _grow(self, new_labels: Array, dim: int) -> None:
        """Register unseen labels, extending every per-class array with zeros."""
        if self.dim_ is None:
            self.dim_ = dim
            self.means_ = np.zeros((0, dim))
            self.unit_sum_ = np.zeros((0, dim))
            self.scatter_ = np.zeros((dim, dim))
            if self._keep_class_scatter:
                self.class_scatter_ = np.zeros((0, dim, dim))
        if dim != self.dim_:
            raise ValueError(f"feature dim {dim} != {self.dim_} seen before")
        fresh = list(dict.fromkeys(int(l) for l in new_labels if int(l) not in self._index))
        if not fresh:
            return
        k = len(fresh)
        for l in fresh:
            self._index[l] = len(self._index)
        self.labels_ = np.concatenate([self.labels_, np.asarray(fresh, dtype=np.int64)])
        self.counts_ = np.concatenate([self.counts_, np.zeros(k)])
        self.m2_trace_ = np.concatenate([self.m2_trace_, np.zeros(k)])
        self.unit_sq_ = np.concatenate([self.unit_sq_, np.zeros(k)])
        self.means_ = np.concatenate([self.means_, np.zeros((k, dim))])
        self.unit_sum_ = np.concatenate([self.unit_sum_, np.zeros((k, dim))])
        if self.class_scatter_ is not None:
            self.class_scatter_ = np.concatenate([self.class_scatter_, np.zeros((k, dim, dim))])

    # ---------------------------------------------------------------- fitting
    @staticmethod
    def _batch(features: Any, labels: Any) -> tuple[Array, Array]:
        x = _as_numpy(features).astype(np.float64, copy=False)
        y = _as_numpy(labels).astype(np.int64, copy=False).reshape(-1)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"need features (n, D) and labels (n,), got {x.shape} and {y.shape}")
        return x, y

    @_one_blas_thread
    def partial_fit(self, features: Any, labels: Any) -> CollapseStats:
        """Merge a batch (``features (n, D)``, integer ``labels (n,)``) into the statistics."""
        x, y = self._batch(features, labels)
        if len(y) == 0:
            return self
        uniq, inv = np.unique(y, return_inverse=True)
        self._grow(uniq, x.shape[1])
        idx = np.array([self._index[int(l)] for l in uniq])
        self._merge(x, inv, idx, 1.0)
        return self

    @_one_blas_thread
    def remove(self, features: Any, labels: Any) -> CollapseStats:
        """Take samples that were added before out of the statistics (exact downdate: the
        inverse of :meth:`partial_fit`, Chan et al.'s update solved for the remaining part)."""
        x, y = self._batch(features, labels)
        if len(y) == 0:
            return self
        if self.dim_ is not None and x.shape[1] != self.dim_:
            raise ValueError(f"feature dim {x.shape[1]} != {self.dim_} seen before")
        uniq, inv = np.unique(y, return_inverse=True)
        unknown = [int(l) for l in uniq if int(l) not in self._index]
        if unknown:
            raise ValueError(f"cannot remove samples of labels never added: {unknown[:10]}")
        idx = np.array([self._index[int(l)] for l in uniq])
        short = np.bincount(inv, minlength=len(idx)) > self.counts_[idx]
        if short.any():
            raise ValueError(f"removing more samples than were added for labels {uniq[short][:10].tolist()}")
        self._merge(x, inv, idx, -1.0)
        return self

    def _merge(self, x: Array, inv: Array, idx: Array, sign: float) -> None:
        """Chan/Welford merge (``sign = 1``) or downdate (``sign = -1``) of the batch classes
        ``idx`` (``inv`` maps samples to them). Downdate: ``n = n_a - n_b``,
        ``mean = (n_a mean_a - n_b mean_b)/n``, ``M2 = M2_a - M2_b - n n_b/n_a d d^T`` with
        ``d = mean_b - mean``."""
        k = len(idx)
        n_b = np.bincount(inv, minlength=k).astype(np.float64)
        mean_b = _group_sum(x, inv, k) / n_b[:, None]
        centred = x - mean_b[inv]
        n_a = self.counts_[idx]
        if sign > 0:
            n = n_a + n_b
            delta = mean_b - self.means_[idx]
            w = n_a * n_b / n
            new_mean = self.means_[idx] + delta * (n_b / n)[:, None]
        else:
            n = n_a - n_b
            live = n > 0
            new_mean = np.where(live[:, None], (self.means_[idx] * n_a[:, None] - mean_b * n_b[:, None])
                                / np.where(live, n, 1.0)[:, None], 0.0)
            delta = mean_b - new_mean
            w = n * n_b / n_a
        seen = w > 0  # classes new to the accumulator add no between-part (w = 0): skip their rows
        # two in-place updates, no (D, D) temporaries summed: half the time of scatter += sign * (A + B)
        update = np.add if sign > 0 else np.subtract
        update(self.scatter_, centred.T @ centred, out=self.scatter_)
        update(self.scatter_, (delta[seen] * w[seen, None]).T @ delta[seen], out=self.scatter_)
        m2 = self.m2_trace_[idx] + sign * (np.bincount(inv, (centred**2).sum(1), k) + w * (delta**2).sum(1))
        self.m2_trace_[idx] = np.where(n > 0, np.maximum(m2, 0.0), 0.0)
        if self.class_scatter_ is not None:
            for j, c in enumerate(idx):
                cj = centred[inv == j]
                self.class_scatter_[c] += sign * (cj.T @ cj + w[j] * np.outer(delta[j], delta[j]))
                if n[j] == 0:
                    self.class_scatter_[c] = 0.0
        self.means_[idx] = new_mean
        self.counts_[idx] = n
        self._merge_units(x, inv, idx, sign)

    def _merge_units(self, x: Array, inv: Array, idx: Array, sign: float) -> None:
        """Accumulate per-class sums of unit vectors ``x/||x||`` and of their squared norms."""
        norms = np.linalg.norm(x, axis=1)
        nz = norms > 0
        u = np.where(nz[:, None], x / np.where(nz, norms, 1.0)[:, None], 0.0)
        self.unit_sum_[idx] += sign * _group_sum(u, inv, len(idx))
        self.unit_sq_[idx] += sign * np.bincount(inv, nz.astype(np.float64), len(idx))

    def fit(self, features: Any, labels: Any) -> CollapseStats:
        """Reset, then :meth:`partial_fit` on the whole data; returns ``self``."""
        return self.reset().partial_fit(features, labels)

    # ---------------------------------------------------------------- merging
    @classmethod
    @_one_blas_thread
    def merged(cls, stats: Sequence[CollapseStats], weights: Sequence[float] | None = None) -> CollapseStats:
        """A new accumulator equal to fitting the data of all ``stats``, ``stats[g]``'s data
        counted ``weights[g]`` times (default 1; 0 leaves it out). Chan et al.'s parallel update
        over the accumulators: ``n_c = sum_g w_g n_gc``, ``mu_c = sum_g w_g n_gc mu_gc / n_c``,
        ``S = sum_g w_g (S_g + sum_c n_gc d_gc d_gc^T)``, ``d_gc = mu_gc - mu_c``. Parameters
        (``min_count``, ...) are those of ``stats[0]``; the inputs are not changed."""
        parts = _Aligned.of(stats)
        w = parts.weights(weights)
        out = cls(**stats[0]._params())
        if parts.dim is None:
            return out
        n = w @ parts.counts
        mean = parts.weighted_means(w, n)
        d = parts.means - mean[None]  # (G, C, D)
        rows = np.sqrt(w[:, None] * parts.counts)[..., None] * d
        flat = rows.reshape(-1, parts.dim)
        scatter = np.tensordot(w, parts.scatter, axes=1) + flat.T @ flat
        m2 = w @ parts.m2_trace + (rows**2).sum(2).sum(0)
        class_scatter = None
        if parts.class_scatter is not None:
            class_scatter = np.tensordot(w, parts.class_scatter, axes=1) + np.einsum("gcd,gce->cde", rows, rows)
        parts.fill(out, n, mean, m2, w @ parts.unit_sum.reshape(len(w), -1), w @ parts.unit_sq, scatter,
                   class_scatter)
        return out

    def __add__(self, other: CollapseStats) -> CollapseStats:
        """``a + b == CollapseStats.merged([a, b])``."""
        if not isinstance(other, CollapseStats):
            return NotImplemented
        return CollapseStats.merged([self, other])

    # ---------------------------------------------------------------- selection
    def used_classes(self) -> Array:
        """Internal indices of the used classes, ordered by label.

        Eligible: ``count >= min_count``; with ``top_classes`` only the most frequent
        ``top_classes`` of them (ties: smaller label first). Raises ``ValueError`` if fewer
        than 2 classes are left.
        """
        idx = np.flatnonzero(self.counts_ >= max(self.min_count, 1))
        if self.top_classes is not None:
            order = np.lexsort((self.labels_[idx], -self.counts_[idx]))
            idx = idx[order[: self.top_classes]]
        idx = idx[np.argsort(self.labels_[idx])]
        if len(idx) < 2:
            raise ValueError(
                f"need at least 2 classes with count >= min_count={self.min_count}"
                f" (top_classes={self.top_classes}); have {len(idx)} of {len(self.counts_)} seen"
            )
        return idx

    def used_labels(self) -> Array:
        """Labels of the used classes (sorted)."""
        return self.labels_[self.used_classes()]

    def _within_scatter(self, idx: Array) -> Array:
        """``S_W`` over the classes ``idx`` (pooled scatter when that is exact)."""
        if self.class_scatter_ is not None:
            return self.class_scatter_[idx].sum(0)
        dropped = np.setdiff1d(np.arange(len(self.counts_)), idx)
        if np.any(self.counts_[dropped] >= 2):
            raise RuntimeError("pooled scatter includes dropped classes; use per_class_scatter")
        return self.scatter_.copy()

    # ---------------------------------------------------------------- metrics
    @_one_blas_thread
    def metrics(
        self,
        classifier: Any | None = None,
        predictions: Any | None = None,
        features: Any | None = None,
    ) -> dict[str, float]:
        """All metrics of the module docstring on the used classes, as a dict of floats.

        ``nc3``, ``unc3`` and ``unc3_mean`` are included when ``classifier`` (``(C_all, D)``,
        row ``label`` = class ``label``) is given; ``nc4`` when both ``features`` and
        ``predictions`` are given.
        """
        if (features is None) != (predictions is None):
            raise ValueError("nc4 needs both features and predictions")
        idx = self.used_classes()
        mu = self.means_[idx]
        mu_g = mu.mean(0)
        centred = mu - mu_g
        gram = centred @ centred.T
        s_w = self._within_scatter(idx)
        low = _cholesky(s_w)
        n = self.counts_[idx]
        out: dict[str, float] = {"n_classes": float(len(idx)), "n_samples": float(n.sum())}
        out["nc1"] = self._nc1(s_w, low, centred, gram, float(n.sum()))
        pairs = _Pairs(gram)
        out.update(self._nc2(pairs))
        out.update(self._cdnv(idx, pairs))
        out["fisher_ratio"] = self._fisher(s_w, low, n, mu)
        out.update(self._cone(idx, pairs, centred, mu_g))
        if classifier is not None:
            w = self._classifier_rows(classifier, idx)
            out["nc3"] = self._nc3(w, centred)
            out.update(self._unc3(w, centred))
        if features is not None:
            out["nc4"] = self.nc4(features, predictions)
        return out

    def _range_pinv_times(self, centred: Array, gram: Array) -> Array:
        """``X = K^+ M`` (``K = M M^T``, eigenvalues below ``rtol * max`` dropped), so that
        ``(M^T M)^+ = X^T X``. Fast path when ``K`` has rank ``C - 1`` (its null vector is
        ``1``, the means being centred): ``A = K + s 1 1^T / C`` is then positive definite and
        ``A^{-1} M = K^+ M``."""
        c = len(gram)
        s = float(np.trace(gram)) / c
        if s > 0:
            a = gram + s / c
            low = _cholesky(a)
            inv = None if low is None else _inverse_if_certified(low, gram, self.rtol)
            if inv is not None:
                y = blas.dtrmm(1.0, inv, centred, lower=1)  # L^{-1} M
                return blas.dtrmm(1.0, inv, y, lower=1, trans_a=1)  # L^{-T} L^{-1} M
        ev, vec = np.linalg.eigh(gram)
        keep = ev > self.rtol * max(float(ev.max()), 0.0)
        v = vec[:, keep]
        return (v / ev[keep]) @ (v.T @ centred)

    def _nc1(self, s_w: Array, low: Array | None, centred: Array, gram: Array, n_total: float) -> float:
        """``Tr(Sigma_W Sigma_B^+) / C = Tr(S_W (M^T M)^+) / N = Tr(X S_W X^T) / N`` (Papyan et al.
        2020), ``X = K^+ M``; with ``S_W = L L^T`` it is ``||X L||_F^2 / N``."""
        x = self._range_pinv_times(centred, gram)
        if low is not None:
            xl = blas.dtrmm(1.0, low, x, side=1, lower=1)
            return float((xl * xl).sum() / n_total)
        return float(((x @ s_w) * x).sum() / n_total)

    @staticmethod
    def _nc2(pairs: _Pairs) -> dict[str, float]:
        """Equinorm (CV of centred-mean norms), equiangularity and max-angle (Papyan et al.), and
        GNC2, the log inverse-distance kernel of the unit centred means (Wu & Papyan 2024):
        ``||u_i - u_j||^2 = ||u_i||^2 + ||u_j||^2 - 2 cos_ij``, ``||u||^2`` 1 (0 for a zero mean)."""
        norms = np.sqrt(pairs.sq)
        safe = np.where(norms > 0, norms, 1.0)
        cos = pairs.dot / (safe[pairs.i] * safe[pairs.j])
        c = len(norms)
        on = (norms > 0).astype(np.float64)
        dist2 = np.maximum(on[pairs.i] + on[pairs.j] - 2.0 * cos, 0.0)
        with np.errstate(divide="ignore"):
            kern = -0.5 * np.log(dist2)  # log(1 / ||u_i - u_j||)
        kmean = kern.mean()
        return {
            "nc2_equinorm": float(norms.std() / norms.mean()),
            "nc2_equiangular": float(cos.std()),
            "nc2_maxangle": float(np.abs(cos + 1.0 / (c - 1)).mean()),
            "gnc2": float(((kern - kmean) ** 2).mean()),
            "gnc2_mean": float(kmean),
        }

    def _cdnv(self, idx: Array, pairs: _Pairs) -> dict[str, float]:
        """CDNV (Galanti et al. 2022; ``||mu_i - mu_j||^2``) and ``cdnv_dist4``
        (``||mu_i - mu_j||^4``, the power Wu & Papyan's code uses); pair distances from the Gram
        matrix of the centred means, ``|a|^2 + |b|^2 - 2 a.b``."""
        var = self.m2_trace_[idx] / self.counts_[idx]
        num = var[pairs.i] + var[pairs.j]
        d2 = np.maximum(pairs.sq[pairs.i] + pairs.sq[pairs.j] - 2.0 * pairs.dot, 0.0)
        return {
            "cdnv": float(np.mean(num / (2.0 * d2))),
            "cdnv_dist4": float(np.mean(num / (2.0 * d2**2))),
        }

    def _fisher(self, s_w: Array, low: Array | None, n: Array, mu: Array) -> float:
        """``Tr(S_W^+ S_B)`` on unnormalised scatters; warns when ``S_W`` is singular. With
        ``S_B = B^T B`` (``B_c = sqrt(n_c) (mu_c - mu)``) and ``S_W = L L^T`` of full rank it is
        ``||B L^{-T}||_F^2``; otherwise the eigenpairs of ``S_W`` above ``rtol * max``."""
        dev = mu - (n @ mu) / n.sum()
        b = dev * np.sqrt(n)[:, None]
        if low is not None:
            inv = _inverse_if_certified(low, s_w, self.rtol)
            if inv is None:
                ev = np.linalg.eigvalsh(s_w)
                if ev.min() > self.rtol * max(float(ev.max()), 0.0):
                    inv, _ = lapack.dtrtri(low, lower=1)
            if inv is not None:
                y = blas.dtrmm(1.0, inv, b, side=1, lower=1, trans_a=1)  # B L^{-T}
                return float((y * y).sum())
        ev, vec = np.linalg.eigh(s_w)
        keep = ev > self.rtol * max(float(ev.max()), 0.0)
        rank = int(keep.sum())
        if rank < s_w.shape[0]:
            warnings.warn(
                f"within-class scatter is singular (rank {rank} < D={s_w.shape[0]});"
                " fisher_ratio uses its pseudo-inverse",
                RuntimeWarning,
                stacklevel=3,
            )
        v = vec[:, keep]  # Tr(S_W^+ S_B) = sum_i ||B v_i||^2 / lambda_i over kept eigenpairs
        return float((((b @ v) ** 2).sum(0) / ev[keep]).sum())

    def _cone(self, idx: Array, pairs: _Pairs, centred: Array, mu_g: Array) -> dict[str, float]:
        """Mean pairwise cosine of same-class / different-class samples and of class means (raw
        means ``M_c + mu_G``: ``(M_i + mu_G).(M_j + mu_G) = M_i.M_j + a_i + a_j + |mu_G|^2``,
        ``a = M mu_G``)."""
        n = self.counts_[idx]
        s = self.unit_sum_[idx]
        sq = self.unit_sq_[idx]
        same_sum = float((((s**2).sum(1) - sq) / 2.0).sum())
        same_pairs = float((n * (n - 1) / 2.0).sum())
        tot = s.sum(0)
        all_sum = float((tot @ tot - sq.sum()) / 2.0)
        all_pairs = float(n.sum() * (n.sum() - 1) / 2.0)
        diff_pairs = all_pairs - same_pairs
        a = centred @ mu_g
        g2 = float(mu_g @ mu_g)
        rn = np.sqrt(np.maximum(pairs.sq + 2.0 * a + g2, 0.0))
        rn = np.where(rn > 0, rn, 1.0)
        raw = pairs.dot + a[pairs.i] + a[pairs.j] + g2
        return {
            "cone": all_sum / all_pairs,
            "cone_same": same_sum / same_pairs if same_pairs > 0 else float("nan"),
            "cone_diff": (all_sum - same_sum) / diff_pairs,
            "cone_means": float((raw / (rn[pairs.i] * rn[pairs.j])).mean()),
        }

    def _classifier_rows(self, classifier: Any, idx: Array) -> Array:
        """Rows ``label`` of the used classes, as float64 (indexed before converting)."""
        rows = self.labels_[idx]
        picked = classifier[rows.tolist()] if hasattr(classifier, "detach") else np.asarray(classifier)[rows]
        return _as_numpy(picked).astype(np.float64)

    @staticmethod
    def _nc3(w: Array, centred: Array) -> float:
        return float(((w / np.linalg.norm(w) - centred / np.linalg.norm(centred)) ** 2).sum())

    @staticmethod
    def _unc3(w: Array, centred: Array) -> dict[str, float]:
        wn = np.linalg.norm(w, axis=1)
        mn = np.linalg.norm(centred, axis=1)
        cos = (w * centred).sum(1) / np.where(wn > 0, wn, 1.0) / np.where(mn > 0, mn, 1.0)
        return {"unc3": float(cos.var(ddof=1)), "unc3_mean": float(cos.mean())}

    def nc3(self, classifier: Any) -> float:
        """``|| W/||W||_F - M/||M||_F ||_F^2``, ``W`` the classifier rows of the used labels."""
        idx = self.used_classes()
        mu = self.means_[idx]
        return self._nc3(self._classifier_rows(classifier, idx), mu - mu.mean(0))

    def unc3(self, classifier: Any) -> float:
        """Uniform duality (Wu & Papyan 2024): ``var_c cos(w_c, mu_c - mu_G)`` (``ddof = 1``)."""
        idx = self.used_classes()
        mu = self.means_[idx]
        return self._unc3(self._classifier_rows(classifier, idx), mu - mu.mean(0))["unc3"]

    def nc4(self, features: Any, predictions: Any) -> float:
        """Fraction of samples whose nearest used class mean (Euclidean) is the prediction."""
        x = _as_numpy(features).astype(np.float64)
        pred = _as_numpy(predictions).astype(np.int64).reshape(-1)
        idx = self.used_classes()
        mu = self.means_[idx]
        d2 = (x**2).sum(1)[:, None] - 2.0 * x @ mu.T + (mu**2).sum(1)[None, :]
        nearest = self.labels_[idx][np.argmin(d2, axis=1)]
        return float(np.mean(nearest == pred))


class _Aligned:
    """The states of several accumulators on one label index (``G`` groups, ``C`` labels)."""

    def __init__(self, stats: Sequence[CollapseStats]) -> None:
        self.stats = list(stats)
        if not self.stats:
            raise ValueError("need at least one CollapseStats to merge")
        dims = {s.dim_ for s in self.stats if s.dim_ is not None}
        if len(dims) > 1:
            raise ValueError(f"cannot merge accumulators of different feature dims {sorted(dims)}")
        self.dim = dims.pop() if dims else None
        self.labels = np.asarray(list(dict.fromkeys(int(l) for s in self.stats for l in s.labels_)), dtype=np.int64)
        per_class = {s.class_scatter_ is not None for s in self.stats if s.dim_ is not None}
        if len(per_class) > 1:
            raise ValueError("cannot merge accumulators with and without per_class_scatter")
        g, c, d = len(self.stats), len(self.labels), self.dim or 0
        self.counts, self.m2_trace, self.unit_sq = np.zeros((g, c)), np.zeros((g, c)), np.zeros((g, c))
        self.means, self.unit_sum = np.zeros((g, c, d)), np.zeros((g, c, d))
        self.scatter = np.zeros((g, d, d))
        self.class_scatter = np.zeros((g, c, d, d)) if per_class == {True} else None
        self.sums: Array | None = None  # (G, C*D): n_gc mu_gc, made on first use
        pos = {int(l): i for i, l in enumerate(self.labels)}
        for k, s in enumerate(self.stats):
            if s.dim_ is None:
                continue
            at = np.array([pos[int(l)] for l in s.labels_], dtype=np.int64)
            self.counts[k, at], self.m2_trace[k, at], self.unit_sq[k, at] = s.counts_, s.m2_trace_, s.unit_sq_
            self.means[k, at], self.unit_sum[k, at] = s.means_, s.unit_sum_
            self.scatter[k] = s.scatter_
            if self.class_scatter is not None:
                self.class_scatter[k, at] = s.class_scatter_

    @classmethod
    def of(cls, stats: Sequence[CollapseStats]) -> _Aligned:
        return cls(stats)

    def weights(self, weights: Sequence[float] | None) -> Array:
        w = np.ones(len(self.stats)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(w) != len(self.stats) or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"need {len(self.stats)} finite non-negative weights, got {list(w)}")
        return w

    def weighted_means(self, w: Array, n: Array) -> Array:
        """``mu_c = sum_g w_g n_gc mu_gc / n_c`` (0 for an empty class)."""
        if self.sums is None:
            self.sums = (self.counts[..., None] * self.means).reshape(len(w), -1)
        tot = (w @ self.sums).reshape(self.means.shape[1:])
        return tot / np.where(n > 0, n, 1.0)[:, None]

    def fill(self, out: CollapseStats, n: Array, mean: Array, m2: Array, unit_sum: Array, unit_sq: Array,
             scatter: Array, class_scatter: Array | None) -> None:
        """Set ``out``'s state to the merged arrays."""
        out.dim_, out.labels_ = self.dim, self.labels.copy()
        out._index = {int(l): i for i, l in enumerate(self.labels)}
        out.counts_, out.means_, out.m2_trace_ = n, mean, np.where(n > 0, np.maximum(m2, 0.0), 0.0)
        out.unit_sum_, out.unit_sq_ = unit_sum.reshape(len(n), self.dim), unit_sq
        out.scatter_, out.class_scatter_ = scatter, class_scatter


class _Resampler:
    """The groups' states on one label index with each group's scatter taken about the class means
    of all groups (``tee``): the accumulator of the groups merged with weights ``w`` (:meth:`stats`)
    then costs one ``C x D`` rank update, ``S(w) = sum_g w_g T_g - E^T E`` with
    ``E_c = sqrt(n_c(w)) (mu_c(w) - mu_c)`` (0 for ``w = 1``: the plain merge)."""

    def __init__(self, groups: Sequence[CollapseStats]) -> None:
        parts = _Aligned.of(groups)
        if parts.dim is None:
            raise ValueError("the groups hold no samples")
        self.parts, self.template, g = parts, groups[0], len(groups)
        with _BLAS.limit(limits=1, user_api="blas"):
            self.ref = parts.weighted_means(np.ones(g), parts.counts.sum(0))
            rows = np.sqrt(parts.counts)[..., None] * (parts.means - self.ref[None])
            self.tee = parts.scatter + np.stack([r.T @ r for r in rows])
            self.m2t = parts.m2_trace + (rows**2).sum(2)
            self.cls_tee = None
            if parts.class_scatter is not None:
                self.cls_tee = parts.class_scatter + np.einsum("gcd,gce->gcde", rows, rows)
            self.flat_unit = parts.unit_sum.reshape(g, -1)

    def stats(self, w: Array) -> CollapseStats:
        """The groups merged with weights ``w`` (``stats[g]``'s data counted ``w[g]`` times)."""
        parts = self.parts
        n = w @ parts.counts
        mean = parts.weighted_means(w, n)
        e = np.where((n > 0)[:, None], mean - self.ref, 0.0) * np.sqrt(n)[:, None]
        scatter = np.tensordot(w, self.tee, axes=1)
        if np.any(w != 1.0):  # E = 0 for the plain merge
            scatter -= e.T @ e
        m2 = w @ self.m2t - (e**2).sum(1)
        class_scatter = None
        if self.cls_tee is not None:
            class_scatter = np.tensordot(w, self.cls_tee, axes=1) - np.einsum("cd,ce->cde", e, e)
        out = CollapseStats(**self.template._params())
        parts.fill(out, n, mean, m2, w @ self.flat_unit, w @ parts.unit_sq, scatter, class_scatter)
        return out

    def metrics(self, w: Array, classifier: Any | None) -> dict[str, float] | None:
        """:meth:`CollapseStats.metrics` of :meth:`stats` (``None`` with fewer than 2 usable classes)."""
        try:
            return self.stats(w).metrics(classifier=classifier)
        except ValueError:
            return None


def _replicates(groups: Sequence[CollapseStats] | _Resampler, weights: Array, classifier: Any | None,
                n_jobs: int | None) -> list[dict[str, float] | None]:
    """The metrics of the groups merged with each row of ``weights`` (``None`` where they fail)."""
    resampler = groups if isinstance(groups, _Resampler) else _Resampler(groups)
    with _BLAS.limit(limits=1, user_api="blas"):
        jobs = n_jobs if n_jobs is not None else min(2, os.cpu_count() or 1)
        with warnings.catch_warnings():  # here, not per replicate: the filters are global, not per thread
            warnings.simplefilter("ignore", RuntimeWarning)
            if jobs > 1:
                with ThreadPoolExecutor(jobs) as pool:
                    return list(pool.map(lambda w: resampler.metrics(w, classifier), weights))
            return [resampler.metrics(w, classifier) for w in weights]


def bootstrap_intervals(
    groups: Sequence[CollapseStats],
    n_boot: int = 50,
    seed: int = 0,
    level: float = 0.95,
    classifier: Any | None = None,
    n_jobs: int | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric of :meth:`CollapseStats.metrics` by a block bootstrap
    over the groups (blocks of windows): each of ``n_boot`` replicates merges the groups with
    multinomial weights ``Mult(G, 1/G)`` (drawn from ``numpy.random.default_rng(seed)``) and
    computes the metrics; a metric's interval is the ``(1 - level)/2`` and ``(1 + level)/2``
    percentiles over the replicates where it is finite (a replicate with fewer than 2 usable
    classes is skipped). Memory is one accumulator per group, ``O(G (C*D + D^2))``, so ``G`` is
    kept small (e.g. 8); with ``G`` blocks the intervals resolve only block-to-block variation.

    Replicates reuse a per-group ``(D, D)`` scatter about the full-data class means (module
    docstring), so a replicate costs one ``C x D`` rank update plus :meth:`CollapseStats.metrics`;
    they run on ``n_jobs`` threads (default: up to 2), each with one BLAS thread.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    g = len(groups)
    draws = np.random.default_rng(seed).multinomial(g, np.full(g, 1.0 / g), size=n_boot).astype(np.float64)
    results = _replicates(groups, draws, classifier, n_jobs)
    done = [r for r in results if r is not None]
    keys = list(dict.fromkeys(k for r in done for k in r))
    lo, hi = 50.0 * (1.0 - level), 50.0 * (1.0 + level)
    out: dict[str, tuple[float, float]] = {}
    for k in keys:
        vals = np.array([r.get(k, np.nan) for r in done])
        vals = vals[np.isfinite(vals)]
        if len(vals):
            out[k] = (float(np.percentile(vals, lo)), float(np.percentile(vals, hi)))
    return out


def jackknife_intervals(
    groups: Sequence[CollapseStats],
    level: float = 0.95,
    classifier: Any | None = None,
    n_jobs: int | None = None,
    full: dict[str, float] | None = None,
) -> dict[str, tuple[float, float]]:
    """Delete-one-group jackknife intervals (Quenouille-Tukey) of every metric: with ``theta`` the
    metric on all ``G`` groups and ``theta_i`` without group ``i``,
    ``SE = sqrt((G - 1)/G * sum_i (theta_i - mean_i theta_i)^2)`` and the interval is
    ``theta +- t_{G-1, (1+level)/2} SE``.

    Why not the percentile bootstrap of :func:`bootstrap_intervals` for the per-layer curves: a
    bootstrap replicate that repeats a group holds fewer distinct tokens, and NC1 (like CDNV and
    the Fisher ratio) moves with the number of distinct samples per class when classes are
    many, so nearly every replicate falls on one side of the full-data value (on SmolLM2, layer 0:
    NC1 603 with a bootstrap interval [183, 603]). Every jackknife replicate drops the same share of
    the windows; the spread of the ``G`` leave-one-out values measures window-to-window variation,
    and costs ``G`` metric evaluations (``G + 1`` unless ``full``, the metrics of all groups, is given).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    g = len(groups)
    if g < 2:
        raise ValueError(f"the jackknife needs at least 2 groups, got {g}")
    full = CollapseStats.merged(groups).metrics(classifier=classifier) if full is None else full
    return _jackknife(full, _replicates(groups, 1.0 - np.eye(g), classifier, n_jobs), level)


def merged_with_jackknife(groups: Sequence[CollapseStats], level: float = 0.95, classifier: Any | None = None,
                          n_jobs: int | None = None) -> tuple[CollapseStats, dict[str, float], dict[str, tuple[float, float]]]:
    """``(merged, metrics, intervals)``: the groups merged (as :meth:`CollapseStats.merged`, to
    rounding: from the same per-group scatters about the overall class means as the replicates), its
    metrics and the :func:`jackknife_intervals` of every metric, sharing one alignment of the groups."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    g = len(groups)
    if g < 2:
        raise ValueError(f"the jackknife needs at least 2 groups, got {g}")
    resampler = _Resampler(groups)
    with _BLAS.limit(limits=1, user_api="blas"):
        merged = resampler.stats(np.ones(g))
    full = merged.metrics(classifier=classifier)
    return merged, full, _jackknife(full, _replicates(resampler, 1.0 - np.eye(g), classifier, n_jobs), level)


def _jackknife(full: dict[str, float], replicates: list[dict[str, float] | None],
               level: float) -> dict[str, tuple[float, float]]:
    """The t intervals of :func:`jackknife_intervals` from the full-data metrics and the ``G``
    leave-one-out replicates."""
    from scipy.stats import t as student

    g = len(replicates)
    done = [r for r in replicates if r is not None]
    q = float(student.ppf((1.0 + level) / 2.0, g - 1))
    out: dict[str, tuple[float, float]] = {}
    for k, theta in full.items():
        vals = np.array([r.get(k, np.nan) for r in done])
        if len(vals) == g and np.isfinite(vals).all() and np.isfinite(theta):
            se = float(np.sqrt((g - 1) / g * ((vals - vals.mean()) ** 2).sum()))
            out[k] = (float(theta - q * se), float(theta + q * se))
    return out
