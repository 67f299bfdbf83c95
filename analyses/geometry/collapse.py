"""Streaming neural-collapse metrics, scikit-learn style (``partial_fit`` / ``fit`` / ``metrics``).

References:

- Papyan, Han & Donoho 2020, "Prevalence of neural collapse during the terminal phase of deep
  learning training" (PNAS): NC1-NC4.
- Wu & Papyan 2024, "Linguistic Collapse: Neural Collapse in (Large) Language Models": the same
  metrics with next tokens as classes, and their CDNV variant (``cdnv_wu_papyan``).
- Galanti, Gyorgy & Hutter 2022, "On the Role of Neural Collapse in Transfer Learning": CDNV.
- "Exploring Weight Balancing on Long-Tailed Recognition Problem" (ICLR 2024): Fisher ratio
  on unnormalised scatter matrices and the cone effect (mean cosine of raw features).

Notation, on the *used* classes ``c = 1..C`` (count ``n_c >= min_count``, optionally only the
``top_classes`` most frequent), ``N = sum_c n_c``:

- ``mu_c`` class mean, ``mu_G = (1/C) sum_c mu_c`` (unweighted), ``mu = (1/N) sum_c n_c mu_c``.
- ``S_W = sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``, ``Sigma_W = S_W / N``.
- ``Sigma_B = (1/C) sum_c (mu_c - mu_G)(mu_c - mu_G)^T``;
  ``S_B = sum_c n_c (mu_c - mu)(mu_c - mu)^T``.
- ``M`` the ``(C, D)`` stack of centred means ``mu_c - mu_G``.

Metrics returned by :meth:`CollapseStats.metrics`:

- ``nc1 = Tr(Sigma_W Sigma_B^+) / C``.
- ``nc2_equinorm = std_c ||mu_c - mu_G|| / mean_c ||mu_c - mu_G||``.
- ``nc2_equiangular = std_{c != c'} cos(mu_c - mu_G, mu_c' - mu_G)``;
  ``nc2_maxangle = mean_{c != c'} |cos(...) + 1/(C-1)|``.
- ``nc3 = || W/||W||_F - M/||M||_F ||_F^2`` (only with ``classifier``; rows of the used classes).
- ``nc4`` = fraction of samples whose nearest class mean equals the model's prediction
  (:meth:`CollapseStats.nc4`, or ``metrics(..., features=, predictions=)``).
- ``cdnv = mean_{i<j} (s_i^2 + s_j^2) / (2 ||mu_i - mu_j||^2)``,
  ``s_c^2 = (1/n_c) sum_{x in c} ||x - mu_c||^2``; ``cdnv_wu_papyan`` has ``||mu_i - mu_j||^4``
  in the denominator instead.
- ``fisher_ratio = Tr(S_W^+ S_B)`` (warns when ``S_W`` is singular).
- ``cone``: mean cosine over all unordered pairs of raw samples (the cone effect);
  ``cone_same`` / ``cone_diff``: mean cosine over unordered pairs of raw samples of the same /
  different classes; ``cone_means``: mean cosine over pairs of raw class means.

Streaming state (float64): per-class count, mean, sum of ``||x - mu_c||^2``, sum of unit vectors
``u = x/||x||`` and sum of ``||u||^2`` (0 for a zero vector, else 1); one pooled ``(D, D)``
within-class scatter. Batches are merged with Chan et al.'s parallel update:
``M2 = M2_a + M2_b + n_a n_b / (n_a + n_b) d d^T``, ``d = mean_b - mean_a``. Memory is
``O(C*D + D^2)``. The pooled scatter is exact for any selection that only drops classes with
fewer than 2 samples (they have zero scatter); for ``min_count > 2`` or ``top_classes`` the
per-class ``(D, D)`` scatters are kept instead (``O(C*D^2)``, ``per_class_scatter``).

Cone effect from unit-vector sums: for a class ``c`` with sum ``s_c = sum_i u_i``,
``sum_{i<j in c} cos(x_i, x_j) = (||s_c||^2 - sum_i ||u_i||^2) / 2``; the same with the total sum
over all used samples gives all pairs, and different-class pairs = all pairs - same-class pairs.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

__all__ = ["CollapseStats"]

Array = np.ndarray


def _as_numpy(x: Any) -> Array:
    """Torch tensor or array-like to a NumPy array (torch tensors are detached and moved to CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "double") and x.is_floating_point():
            x = x.double()
        x = x.numpy()
    return np.asarray(x)


def _pinv(a: Array, rtol: float) -> Array:
    """Pseudo-inverse of a symmetric PSD matrix, eigenvalues below ``rtol * max`` dropped."""
    return np.linalg.pinv(a, rtol=rtol, hermitian=True)


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


def _pair_cosines(v: Array) -> Array:
    """Cosines of the unordered pairs ``i < j`` of the rows of ``v``."""
    norms = np.linalg.norm(v, axis=1)
    u = v / np.where(norms > 0, norms, 1.0)[:, None]
    iu = np.triu_indices(len(v), k=1)
    return (u @ u.T)[iu]


def _pair_sq_dists(mu: Array) -> Array:
    """Squared Euclidean distances of the unordered pairs ``i < j`` of the rows of ``mu``
    (Gram form on the centred rows: ``|a|^2 + |b|^2 - 2 a.b``)."""
    c = mu - mu.mean(0)
    sq = (c * c).sum(1)
    iu = np.triu_indices(len(mu), k=1)
    return np.maximum(sq[iu[0]] + sq[iu[1]] - 2.0 * (c @ c.T)[iu], 0.0)


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
        fresh = [int(l) for l in new_labels if int(l) not in self._index]
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
    @_one_blas_thread
    def partial_fit(self, features: Any, labels: Any) -> CollapseStats:
        """Merge a batch (``features (n, D)``, integer ``labels (n,)``) into the statistics."""
        x = _as_numpy(features).astype(np.float64, copy=False)
        y = _as_numpy(labels).astype(np.int64, copy=False).reshape(-1)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"need features (n, D) and labels (n,), got {x.shape} and {y.shape}")
        if len(y) == 0:
            return self
        uniq, inv = np.unique(y, return_inverse=True)
        self._grow(uniq, x.shape[1])
        idx = np.array([self._index[int(l)] for l in uniq])
        self._merge(x, inv, idx)
        return self

    def _merge(self, x: Array, inv: Array, idx: Array) -> None:
        """Chan/Welford merge of the batch classes ``idx`` (``inv`` maps samples to them)."""
        k = len(idx)
        n_b = np.bincount(inv, minlength=k).astype(np.float64)
        mean_b = _group_sum(x, inv, k) / n_b[:, None]
        centred = x - mean_b[inv]
        n_a = self.counts_[idx]
        n = n_a + n_b
        delta = mean_b - self.means_[idx]
        w = n_a * n_b / n
        self.scatter_ += centred.T @ centred + (delta * w[:, None]).T @ delta
        self.m2_trace_[idx] += np.bincount(inv, (centred**2).sum(1), k) + w * (delta**2).sum(1)
        if self.class_scatter_ is not None:
            for j, c in enumerate(idx):
                cj = centred[inv == j]
                self.class_scatter_[c] += cj.T @ cj + w[j] * np.outer(delta[j], delta[j])
        self.means_[idx] += delta * (n_b / n)[:, None]
        self.counts_[idx] = n
        self._merge_units(x, inv, idx)

    def _merge_units(self, x: Array, inv: Array, idx: Array) -> None:
        """Accumulate per-class sums of unit vectors ``x/||x||`` and of their squared norms."""
        norms = np.linalg.norm(x, axis=1)
        nz = norms > 0
        u = np.where(nz[:, None], x / np.where(nz, norms, 1.0)[:, None], 0.0)
        self.unit_sum_[idx] += _group_sum(u, inv, len(idx))
        self.unit_sq_[idx] += np.bincount(inv, nz.astype(np.float64), len(idx))

    def fit(self, features: Any, labels: Any) -> CollapseStats:
        """Reset, then :meth:`partial_fit` on the whole data; returns ``self``."""
        return self.reset().partial_fit(features, labels)

    # ---------------------------------------------------------------- selection
    def used_classes(self) -> Array:
        """Internal indices of the used classes, ordered by label.

        Eligible: ``count >= min_count``; with ``top_classes`` only the most frequent
        ``top_classes`` of them (ties: smaller label first). Raises ``ValueError`` if fewer
        than 2 classes are left.
        """
        idx = np.flatnonzero(self.counts_ >= self.min_count)
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

        ``nc3`` is included when ``classifier`` (``(C_all, D)``, row ``label`` = class
        ``label``) is given; ``nc4`` when both ``features`` and ``predictions`` are given.
        """
        idx = self.used_classes()
        mu = self.means_[idx]
        centred = mu - mu.mean(0)
        s_w = self._within_scatter(idx)
        out: dict[str, float] = {"n_classes": float(len(idx)), "n_samples": float(self.counts_[idx].sum())}
        out["nc1"] = self._nc1(s_w, centred, idx)
        out.update(self._nc2(centred))
        out.update(self._cdnv(idx))
        out["fisher_ratio"] = self._fisher(s_w, idx)
        out.update(self._cone(idx))
        if classifier is not None:
            out["nc3"] = self.nc3(classifier)
        if (features is None) != (predictions is None):
            raise ValueError("nc4 needs both features and predictions")
        if features is not None:
            out["nc4"] = self.nc4(features, predictions)
        return out

    def _nc1(self, s_w: Array, centred: Array, idx: Array) -> float:
        """``Tr(Sigma_W Sigma_B^+) / C`` (Papyan et al. 2020)."""
        sigma_w = s_w / self.counts_[idx].sum()
        sigma_b = centred.T @ centred / len(idx)
        return float(np.trace(sigma_w @ _pinv(sigma_b, self.rtol)) / len(idx))

    @staticmethod
    def _nc2(centred: Array) -> dict[str, float]:
        """Equinorm (CV of centred-mean norms), equiangularity and max-angle (Papyan et al.)."""
        norms = np.linalg.norm(centred, axis=1)
        cos = _pair_cosines(centred)
        c = len(centred)
        return {
            "nc2_equinorm": float(norms.std() / norms.mean()),
            "nc2_equiangular": float(cos.std()),
            "nc2_maxangle": float(np.abs(cos + 1.0 / (c - 1)).mean()),
        }

    def _cdnv(self, idx: Array) -> dict[str, float]:
        """CDNV (Galanti et al. 2022) and the ``||mu_i - mu_j||^4`` variant (Wu & Papyan)."""
        var = self.m2_trace_[idx] / self.counts_[idx]
        iu = np.triu_indices(len(idx), k=1)
        num = var[iu[0]] + var[iu[1]]
        d2 = _pair_sq_dists(self.means_[idx])
        return {
            "cdnv": float(np.mean(num / (2.0 * d2))),
            "cdnv_wu_papyan": float(np.mean(num / (2.0 * d2**2))),
        }

    def _fisher(self, s_w: Array, idx: Array) -> float:
        """``Tr(S_W^+ S_B)`` on unnormalised scatters; warns when ``S_W`` is singular."""
        n = self.counts_[idx]
        mu = self.means_[idx]
        dev = mu - (n @ mu) / n.sum()
        s_b = (dev * n[:, None]).T @ dev
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
        v = vec[:, keep]  # Tr(S_W^+ S_B) = sum_i v_i^T S_B v_i / lambda_i over kept eigenpairs
        return float((((s_b @ v) * v).sum(0) / ev[keep]).sum())

    def _cone(self, idx: Array) -> dict[str, float]:
        """Mean pairwise cosine of same-class / different-class samples and of class means."""
        n = self.counts_[idx]
        s = self.unit_sum_[idx]
        sq = self.unit_sq_[idx]
        same_sum = float((((s**2).sum(1) - sq) / 2.0).sum())
        same_pairs = float((n * (n - 1) / 2.0).sum())
        tot = s.sum(0)
        all_sum = float((tot @ tot - sq.sum()) / 2.0)
        all_pairs = float(n.sum() * (n.sum() - 1) / 2.0)
        diff_pairs = all_pairs - same_pairs
        return {
            "cone": all_sum / all_pairs,
            "cone_same": same_sum / same_pairs if same_pairs > 0 else float("nan"),
            "cone_diff": (all_sum - same_sum) / diff_pairs,
            "cone_means": float(_pair_cosines(self.means_[idx]).mean()),
        }

    def nc3(self, classifier: Any) -> float:
        """``|| W/||W||_F - M/||M||_F ||_F^2``, ``W`` the classifier rows of the used labels."""
        w = _as_numpy(classifier).astype(np.float64)
        idx = self.used_classes()
        w = w[self.labels_[idx]]
        mu = self.means_[idx]
        m = mu - mu.mean(0)
        return float(((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2).sum())

    def nc4(self, features: Any, predictions: Any) -> float:
        """Fraction of samples whose nearest used class mean (Euclidean) is the prediction."""
        x = _as_numpy(features).astype(np.float64)
        pred = _as_numpy(predictions).astype(np.int64).reshape(-1)
        idx = self.used_classes()
        mu = self.means_[idx]
        d2 = (x**2).sum(1)[:, None] - 2.0 * x @ mu.T + (mu**2).sum(1)[None, :]
        nearest = self.labels_[idx][np.argmin(d2, axis=1)]
        return float(np.mean(nearest == pred))
