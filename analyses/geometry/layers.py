"""Geometry of the residual stream, layer by layer: local intrinsic dimension and neural collapse,
with error bars, across scales, and with and without the massive-activation tokens.

One streaming pass over ``n_seqs`` windows of a corpus (protocol of :mod:`probe.data`) feeds, per
layer of ``blocks.{l}.hook_resid_post``, the reducers of :class:`GeometryPass`; the massive scan
(:func:`analyses.massive.locate.scan`) rides on the same forward passes (``riders``), so the scan and
the geometry cost one pass over the windows, in ``probe geometry`` and in ``probe report``.

- **LID** (Ruppik et al. 2025, "Less is More", arXiv:2506.01034): a uniform reservoir sample of
  ``lid_points`` token vectors; duplicate vectors are removed (``np.unique`` on rows: the same
  token in the same context gives the same vector, e.g. a prepended first token), then
  :class:`analyses.geometry.lid.LocalTwoNN` with ``k`` neighbours gives one value per token; the
  headline is their mean, with a percentile bootstrap interval (``n_boot`` resamples of the
  per-token values, seeded; the neighbourhoods are those of the whole sample).
- **LID across scales**: Gride (Denti et al. 2022, Sci. Rep. 12:20005) on the same sample for
  ``(n1, n2) = (1, 2), (2, 4), (4, 8), ...`` (:func:`analyses.geometry.gride.gride_scale_curve`),
  so a flat curve says the estimate does not hinge on the neighbourhood size.
- **Neural collapse with next tokens as classes** (Wu & Papyan 2024, "Linguistic Collapse"):
  the feature of position ``t`` is labelled with token ``t+1``; the classes are the
  ``top_classes`` most frequent next tokens of the corpus with at least ``min_count``
  occurrences, chosen from the token ids before the pass, so that only their features are
  accumulated (:class:`analyses.geometry.collapse.CollapseStats`, memory ``O(C*D + D^2)`` per
  layer and group, independent of the token count). The windows are dealt into ``groups``
  groups (window ``i`` into group ``i mod groups``), one accumulator each; their exact merge gives
  the metrics, and leaving one group out at a time gives delete-one-group jackknife intervals
  (:func:`analyses.geometry.collapse.jackknife_intervals`: a percentile bootstrap over the groups is
  biased here, every replicate that repeats a group lowers NC1; ``groups`` trades memory against
  the degrees of freedom of the interval). NC3 and UNC3 compare the
  class means with the unembedding rows of the same tokens; NC4 is measured on the LID sample
  against the model's own argmax predictions.
- **Without the massive tokens**: the *carrier tokens* are the (window, position) pairs that
  carry a massive activation at any layer by the scan's rule (Sun et al. 2024: ``|v| > 100`` and
  ``> 1000 x`` the layer median). Every metric is given again with those tokens left out: the LID
  on the reservoir sample minus them (a uniform sample of the other tokens), the collapse metrics
  from the accumulators with their features removed exactly (``CollapseStats.remove``). Which
  tokens they are is known only once the scan is done, so during the pass every token whose
  residual exceeds ``abs_threshold`` in some layer keeps its features (a few per window); after
  each forward pass the layers' outputs are dropped again, so memory does not grow with the
  windows.
"""

from __future__ import annotations

import warnings
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from analyses.geometry.collapse import CollapseStats, merged_with_jackknife
from analyses.geometry.gride import gride_scale_curve
from analyses.geometry.lid import LocalTwoNN, _dedup, _n_threads, _thread_map
from probe.arch import n_layers
from probe.capture import Capture, capture
from probe.data import load_corpus, token_windows, window_protocol
from probe.display import Figured
from probe.errors import LayerError, ProbeError
from probe.reducers import Batch, Reducer, Reservoir


class NextTokenCollapse(Reducer):
    """Feeds ``groups`` :class:`CollapseStats` (window ``i`` into group ``i mod groups``) with the
    features of positions ``t`` labelled by token ``t+1``, keeping only labels in ``classes`` (and
    real, unpadded positions). The result is the list of group accumulators.

    The float64 updates (``CollapseStats.partial_fit``, a ``D x D`` product per group and batch)
    run on one worker thread, in order, while the forward pass goes on (they use NumPy's BLAS, the
    forward torch's MKL): the same accumulators, float for float, as updating in the hook."""

    name = "collapse"

    def __init__(self, classes: torch.Tensor, min_count: int = 2, groups: int = 1) -> None:
        if groups < 1:
            raise ProbeError(f"groups must be at least 1, got {groups}")
        self.classes = classes
        self._groups = [CollapseStats(min_count=min_count, per_class_scatter=False) for _ in range(groups)]
        self._worker: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []

    @property
    def groups(self) -> list[CollapseStats]:
        """The group accumulators, once every queued update is in."""
        self._drain()
        return self._groups

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        try:
            for job in pending:
                job.result()  # in order; re-raises a failed update here
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None

    def update(self, x: torch.Tensor, batch: Batch) -> None:
        if batch.tokens is None:
            raise ProbeError("next-token collapse needs the input ids of the batch")
        if self._groups[0].dim_ is None:  # all classes up front: the state has its final size from the start
            for stats in self._groups:
                stats._grow(self.classes.numpy(), x.shape[-1])
        labels = batch.tokens[:, 1:].to(x.device)
        keep = torch.isin(labels, self.classes.to(x.device))
        if batch.mask is not None:
            mask = batch.mask.to(device=x.device, dtype=torch.bool)
            keep &= mask[:, 1:] & mask[:, :-1]
        group = (torch.arange(x.shape[0]) + batch.offset) % len(self._groups)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="collapse")
        for g in group.unique().tolist():
            rows = (group == g).to(x.device)
            sel = keep[rows]
            features, targets = x[rows][:, :-1][sel].double().cpu(), labels[rows][sel].cpu()  # copies: the hook's x may go
            self._pending.append(self._worker.submit(self._groups[g].partial_fit, features, targets))

    @property
    def stats(self) -> CollapseStats:
        """All windows: the exact merge of the groups."""
        return CollapseStats.merged(self.groups)

    def result(self) -> list[CollapseStats]:
        return self.groups


class _Last(Reducer):
    """The current forward pass's tensor, by reference, until :class:`GeometryPass` drops it."""

    name = "last"

    def update(self, x: torch.Tensor, batch: Batch) -> None:
        self.x, self.batch = x.detach(), batch

    def result(self) -> None:
        return None


def next_token_classes(windows: torch.Tensor, top_classes: int | None, min_count: int) -> torch.Tensor:
    """Labels used as classes: next tokens (``windows[:, 1:]``) seen at least ``min_count`` times,
    the ``top_classes`` most frequent of them (ties: smaller id), sorted."""
    counts = torch.bincount(windows[:, 1:].reshape(-1))
    ids = torch.nonzero(counts >= min_count).squeeze(1)
    order = sorted(ids.tolist(), key=lambda i: (-int(counts[i]), i))
    chosen = sorted(order[:top_classes] if top_classes else order)
    if len(chosen) < 2:
        raise ProbeError(f"fewer than 2 next-token classes occur {min_count}+ times; use more text (--n-seqs)")
    return torch.tensor(chosen, dtype=torch.long)


@dataclass
class LayerGeometry:
    """One layer: LID summary of the sampled tokens with its interval (``lid_ci``), the collapse
    metrics (``collapse``) with theirs (``collapse_ci``), Gride across scales (``gride``: ``n2``,
    ``id``, ``err`` per scale) and the same without the carrier tokens (``without_carriers``:
    ``lid_mean``, ``lid_median``, ``lid_ci``, ``n_points``, ``collapse``)."""

    layer: int
    lid_mean: float
    lid_median: float
    lid_std: float
    n_points: int
    n_duplicates: int
    collapse: dict[str, float] = field(default_factory=dict)
    lid_ci: tuple[float, float] | None = None
    collapse_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    gride: list[dict[str, float]] = field(default_factory=list)
    without_carriers: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str, variant: str = "all") -> float | None:
        """One metric (``lid_mean``, ``nc1``, ...) on all tokens or ``"without_carriers"``."""
        if variant == "without_carriers":
            part = self.without_carriers
            return part.get(key) if key.startswith("lid_") else part.get("collapse", {}).get(key)
        return getattr(self, key) if key.startswith("lid_") else self.collapse.get(key)

    def interval(self, key: str) -> tuple[float, float] | None:
        return self.lid_ci if key == "lid_mean" else self.collapse_ci.get(key)


@dataclass
class Geometry(Figured):
    """Result of :func:`geometry`; ``to_dict()`` is JSON-safe, ``figure()`` draws the curves.

    ``carriers``: the tokens left out of ``without_carriers`` (rule, count, positions);
    ``massive_max``: per layer the largest ``|value|`` of the residual stream (from the scan);
    ``ablations``: the same pass on an edited model per plan (:func:`under_ablation`)."""

    model: str
    corpus: str
    n_seqs: int
    seq_len: int
    n_tokens: int
    k: int
    lid_points: int
    n_classes: int
    min_count: int
    layers: list[LayerGeometry]
    protocol: dict[str, Any] = field(default_factory=dict)
    carriers: dict[str, Any] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    massive_max: list[float] = field(default_factory=list)
    ablations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def curve(self, key: str, variant: str = "all") -> list[float | None]:
        """Per-layer values of one metric (``lid_mean``, ``nc1``, ...) on all tokens or ``"without_carriers"``."""
        return [g.value(key, variant) for g in self.layers]

    def band(self, key: str) -> tuple[list[float | None], list[float | None]]:
        """Per-layer lower and upper ends of the bootstrap interval of ``key``."""
        ends = [g.interval(key) for g in self.layers]
        return [e[0] if e else None for e in ends], [e[1] if e else None for e in ends]


def carrier_tokens(scan: Any) -> set[tuple[int, int]]:
    """The (window, position) pairs that carry a massive activation at any layer of ``scan``."""
    return {(e["batch"], e["position"]) for layer in scan.layers for e in layer.massive}


class GeometryPass:
    """The geometry's reducers on ``windows`` for ``layers``: feed them with any forward pass over
    those windows in order (:meth:`feeding`, e.g. as a rider of the scan), then :meth:`finish`."""

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, layers: list[int] | None = None,
                 lid_points: int = 4000, k: int = 128, top_classes: int | None = 512, min_count: int = 2,
                 seed: int = 0, groups: int = 4, abs_threshold: float = 100.0, n_threads: int | None = None) -> None:
        L = n_layers(model)
        layers = list(range(L)) if layers is None else list(layers)
        bad = [l for l in layers if not 0 <= l < L]
        if bad or not layers:
            raise LayerError(f"layers {bad or layers} out of range: the model has layers 0..{L - 1}")
        self.model, self.windows, self.layers, self.n_all = model, windows, layers, L
        self.lid_points, self.k, self.min_count, self.seed, self.abs_threshold = lid_points, k, min_count, seed, abs_threshold
        self.n_threads = n_threads  # layers finished in parallel (default every usable core); no effect on the values
        self.classes = next_token_classes(windows, top_classes, min_count)
        self.reduce = {"sample": Reservoir(lid_points, seed), "collapse": NextTokenCollapse(self.classes, min_count, groups)}
        self.points = [f"blocks.{l}.hook_resid_post" for l in layers]
        self.predictions: list[torch.Tensor] = []
        self.held: dict[tuple[int, int], torch.Tensor] = {}  # (window, position) -> (len(layers), D) float64
        self.cap: Capture | None = None

    @contextmanager
    def feeding(self) -> Iterator[Capture]:
        """Open the captures (the reducers on ``layers``; every layer's output by reference until
        its forward pass ends, to keep the features of tokens above ``abs_threshold``), yield the
        first; every forward pass of the model while open feeds them."""
        every = [f"blocks.{l}.hook_resid_post" for l in range(self.n_all)]
        head = self.model.get_output_embeddings()
        with torch.no_grad(), capture(self.model, self.points, reduce=self.reduce) as cap, \
                capture(self.model, every, reduce=_Last()) as last:
            hooks = [head.register_forward_hook(lambda _m, _a, out: self.predictions.append(out.argmax(-1).cpu())),
                     self.model.register_forward_hook(lambda *_: self._keep_large(last))]
            try:
                yield cap
            finally:
                for h in hooks:
                    h.remove()
        self.cap = cap

    def run(self, tokenizer: Any, name: str, corpus: str, prepend: str | int | None = "auto", batch_size: int = 8,
            progress: Callable[[int], None] | None = None, n_boot: int = 1000,
            **scan_options: Any) -> tuple[Any, Geometry]:
        """The massive scan (:func:`analyses.massive.locate.scan`, ``scan_options``) of the windows
        with this pass riding on its forward passes, then :meth:`finish`: ``(MassiveScan, Geometry)``."""
        from analyses.massive.locate import scan

        found = scan(self.model, tokenizer, name=name, corpus=corpus, windows=self.windows, prepend=prepend,
                     batch_size=batch_size, abs_threshold=self.abs_threshold, progress=progress,
                     riders=[self.feeding()], **scan_options)
        protocol = window_protocol(tokenizer, prepend).to_dict()
        return found, self.finish(found, name, corpus, protocol, n_boot)

    def _keep_large(self, last: Capture) -> None:
        """After a forward pass: keep, on ``layers``, the features of the tokens whose residual
        exceeds ``abs_threshold`` in some layer; drop the references to the layers' outputs."""
        reducers = [last.reducers[p.name][""] for p in last.points]
        batch = reducers[0].batch
        peak = torch.stack([torch.linalg.vector_norm(r.x, float("inf"), dim=-1).float().cpu()
                            for r in reducers]).amax(0)  # (batch, position): the largest |value| over dims and layers
        if batch.mask is not None:
            peak[~batch.mask.cpu().bool()] = 0
        b, p = (peak > self.abs_threshold).nonzero(as_tuple=True)
        if len(b):  # one gather per layer for all the tokens: (tokens, layers, D)
            at = b.to(reducers[0].x.device), p.to(reducers[0].x.device)
            kept = torch.stack([reducers[l].x[at] for l in self.layers], dim=1).double().cpu()
            for j, (bj, pj) in enumerate(zip(b.tolist(), p.tolist())):
                self.held[(batch.offset + bj, pj)] = kept[j]
        for r in reducers:
            del r.x

    def finish(self, scan: Any = None, name: str = "model", corpus: str = "stdlib", protocol: dict[str, Any] | None = None,
               n_boot: int = 1000, level: float = 0.95) -> Geometry:
        """The :class:`Geometry` of what was fed; ``scan`` (a ``MassiveScan`` of the same windows)
        names the carrier tokens (none without it)."""
        if self.cap is None or not self.predictions:
            raise ProbeError("GeometryPass.finish: nothing was fed; run the windows inside `feeding()` first")
        carriers = carrier_tokens(scan) if scan is not None else set()
        missing = carriers - self.held.keys()
        if missing:
            raise ProbeError(f"{len(missing)} carrier tokens were not kept during the pass (abs_threshold "
                             f"{self.abs_threshold} above the scan's)")
        results = self.cap.results
        predictions = torch.cat(self.predictions)
        W_U = self.model.get_output_embeddings().weight.detach().double().cpu().numpy()
        # the layers on n_threads threads, each single-threaded (torch, faiss, BLAS): the arithmetic of one
        # layer is many small steps that a second core barely speeds up; every value is the same either way.
        # Warnings are filtered here, once: catch_warnings is not thread-safe. S_W is singular when D > samples
        # (pinv is documented).
        with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("ignore", RuntimeWarning)
            out = _thread_map(lambda il: self._layer(*il, results[self.points[il[0]]], carriers, predictions, W_U,
                                                     n_boot, level),
                              list(enumerate(self.layers)), _n_threads(self.n_threads, torch.device("cpu")))
        positions = Counter(p for _, p in carriers)
        return Geometry(
            name, corpus, self.windows.shape[0], self.windows.shape[1], self.windows.numel(), self.k, self.lid_points,
            len(self.classes), self.min_count, out, protocol or {},
            carriers={"rule": "tokens carrying a massive activation at any layer (the scan's rule)" if scan is not None
                      else "none given (no scan)", "n_tokens": len(carriers),
                      "positions": {str(p): c for p, c in positions.most_common()},
                      "tokens": [list(c) for c in sorted(carriers)]},
            bootstrap={"level": level, "seed": self.seed, "lid": f"{n_boot} resamples of the per-token values",
                       "collapse": f"delete-one-group jackknife over {len(self.reduce['collapse'].groups)} groups of windows "
                                   "(t interval)"},
            massive_max=[scan.layers[l].max for l in self.layers] if scan is not None else [])

    def _layer(self, i: int, l: int, res: dict[str, Any], carriers: set[tuple[int, int]], predictions: torch.Tensor,
               W_U: np.ndarray, n_boot: int, level: float) -> LayerGeometry:
        sample, groups = res["sample"], res["collapse"]
        away = torch.tensor([(int(b), int(p)) not in carriers for b, p in zip(sample.batch, sample.position)], dtype=torch.bool)
        est = _lid(sample.vectors, self.k, self.seed, n_spare=int((~away).sum()))
        lid = est.dimension_pw_
        if len(groups) > 1:
            stats, metrics, ci = merged_with_jackknife(groups, level=level, classifier=W_U, n_jobs=1)
        else:
            stats, ci = CollapseStats.merged(groups), {}
            metrics = stats.metrics(classifier=W_U)
        self._nc4(metrics, stats, sample, None, predictions)
        # the same without the carrier tokens: out of the LID sample, their features out of the statistics
        classes = set(self.classes.tolist())
        drop = [(w, p) for w, p in sorted(carriers) if p + 1 < self.windows.shape[1] and int(self.windows[w, p + 1]) in classes]
        if drop:
            stats.remove(torch.stack([self.held[c][i] for c in drop]),
                         torch.tensor([int(self.windows[w, p + 1]) for w, p in drop]))
        kept: dict[str, float] = {}
        try:
            kept = stats.metrics(classifier=W_U)
            self._nc4(kept, stats, sample, away, predictions)
        except ValueError:  # fewer than 2 classes left: the carriers were (nearly) every token
            pass
        lid_w = lid if away.all() else _lid_without(est, (~away).nonzero().squeeze(1).numpy())
        without: dict[str, Any] = {"n_removed": int((~away).sum()), "collapse": kept}
        missing = [what for what, gone in (("the LID", lid_w is None), ("the collapse metrics", not kept)) if gone]
        if missing:
            without["note"] = f"too few tokens are left without the carriers for {' and '.join(missing)}"
        if lid_w is not None:
            without.update(lid_mean=float(np.mean(lid_w)), lid_median=float(np.median(lid_w)),
                           lid_ci=_mean_interval(lid_w, n_boot, level, self.seed), n_points=int(len(lid_w)))
        return LayerGeometry(l, float(np.mean(lid)), float(np.median(lid)), float(np.std(lid)), int(len(lid)),
                             int(est.n_duplicates_), metrics, _mean_interval(lid, n_boot, level, self.seed),
                             {key: (float(lo), float(hi)) for key, (lo, hi) in ci.items()},
                             _scales(sample.vectors.numpy(), est, self.k), without)

    def _nc4(self, metrics: dict[str, float], stats: CollapseStats, sample: Any, keep: torch.Tensor | None,
             predictions: torch.Tensor) -> None:
        """NC4 on the sampled tokens (those in ``keep``) that have a next token among the classes."""
        has_next = sample.position < self.windows.shape[1] - 1
        if keep is not None:
            has_next &= keep
        b, p = sample.batch[has_next], sample.position[has_next]
        label = self.windows[b, p + 1]
        sel = torch.isin(label, torch.as_tensor(stats.used_labels()))
        if sel.any():
            metrics["nc4"] = stats.nc4(sample.vectors[has_next][sel], predictions[b[sel], p[sel]])


def _lid(sample: torch.Tensor, k: int, seed: int, n_spare: int = 0) -> LocalTwoNN:
    """The local TwoNN fit of the sampled vectors (``n_spare`` extra neighbours kept for :func:`_lid_without`)."""
    X = sample.numpy()
    distinct = len(_dedup(X)[0]) if len(X) else 0  # the estimator's own duplicate rule, checked here for a clear message
    if distinct <= k + 1:
        raise ProbeError(f"only {distinct} distinct token vectors for k={k} neighbours; sample more tokens or lower --k")
    return LocalTwoNN(n_neighbors=k, max_points=None, seed=seed, n_spare=min(n_spare, k), n_threads=1).fit(X)


def _lid_without(est: LocalTwoNN, rows: np.ndarray) -> np.ndarray | None:
    """Per-token values of ``est``'s sample without ``rows`` (:meth:`LocalTwoNN.without`: only the
    tokens whose neighbourhood held a removed one are recomputed); None when too few are left."""
    try:
        return est.without(rows).dimension_pw_
    except ValueError:  # too few distinct tokens left for k neighbours
        return None


def _scales(X: np.ndarray, est: LocalTwoNN, k: int) -> list[dict[str, float]]:
    """Gride per scale ``n2 = 2, 4, ...`` up to the LID's ``k`` on the distinct vectors of the LID fit
    (``X[est.sample_indices_]``, with its neighbour distances: no second search): dimension, error and
    the mean radius."""
    X = X[est.sample_indices_]
    return [{"n1": s.n1, "n2": s.n2, "id": s.dimension, "err": s.error, "scale": s.scale}
            for s in gride_scale_curve(X, max_n2=min(k, len(X) - 1), distances=est.distances_)]


def _mean_interval(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (``n_boot`` resamples with replacement, seeded)."""
    if n_boot < 1 or len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def geometry(
    model: torch.nn.Module,
    tokenizer: Any,
    name: str,
    corpus: str = "stdlib",
    layers: list[int] | None = None,
    n_seqs: int = 32,
    seq_len: int = 128,
    lid_points: int = 4000,
    k: int = 128,
    top_classes: int | None = 512,
    min_count: int = 2,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    prepend: str | int | None = "auto",
    groups: int = 4,
    n_boot: int = 1000,
    abs_threshold: float = 100.0,
    ratio: float = 1000.0,
) -> Geometry:
    """LID and collapse metrics of ``hook_resid_post`` for ``layers`` (default all), with bootstrap
    intervals (``n_boot`` resamples of the LID values; a jackknife over ``groups`` groups of windows
    for the collapse metrics, none with ``groups=1``) and without the massive-activation carrier tokens; the massive scan (``abs_threshold``,
    ``ratio``) rides on the same pass. Windows by the protocol of :mod:`probe.data` (``prepend``)."""
    windows = token_windows(tokenizer, load_corpus(corpus), seq_len=seq_len, n_seqs=n_seqs, prepend=prepend)
    gp = GeometryPass(model, windows, layers, lid_points, k, top_classes, min_count, seed, groups, abs_threshold)
    return gp.run(tokenizer, name, corpus, prepend, batch_size=batch_size, progress=progress, n_boot=n_boot,
                  ratio=ratio)[1]


def under_ablation(model: torch.nn.Module, tokenizer: Any, base: Geometry, plans: list[Any],
                   progress: Callable[[int], None] | None = None, **options: Any) -> Geometry:
    """``base`` with, per plan in ``plans``, the same pass on the model with the plan applied
    (restored after each): per layer its LID and collapse metrics and the largest ``|value|`` of
    the residual stream (the massive activation), appended to ``base.ablations``. ``options``: the
    arguments ``base`` was computed with (those of :func:`geometry`)."""
    from analyses.ablate.weights import applied

    for plan in plans:
        with applied(model, plan):
            edited = geometry(model, tokenizer, base.model, progress=progress, **{**options, "groups": 1})
        base.ablations.append({"plan": plan.to_dict(), "carriers": edited.carriers["n_tokens"],
                               "massive_max": edited.massive_max,
                               "layers": [{"layer": g.layer, "lid_mean": g.lid_mean, "lid_ci": g.lid_ci, **g.collapse}
                                          for g in edited.layers]})
    return base
