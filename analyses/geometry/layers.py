"""Geometry of the residual stream, layer by layer: local intrinsic dimension and neural collapse.

One streaming pass over ``n_seqs`` windows of a corpus (protocol of :mod:`probe.data`) feeds two
reducers per layer on ``blocks.{l}.hook_resid_post``:

- **LID** (Ruppik et al. 2025, "Less is More", arXiv:2506.01034): a uniform reservoir sample of
  ``lid_points`` token vectors; duplicate vectors are removed (``np.unique`` on rows: the same
  token in the same context gives the same vector, e.g. a prepended first token), then
  :class:`analyses.geometry.lid.LocalTwoNN` with ``k`` neighbours gives one value per token; the headline
  is their mean.
- **Neural collapse with next tokens as classes** (Wu & Papyan 2024, "Linguistic Collapse"):
  the feature of position ``t`` is labelled with token ``t+1``; the classes are the
  ``top_classes`` most frequent next tokens of the corpus with at least ``min_count``
  occurrences, chosen from the token ids before the pass, so that only their features are
  accumulated (:class:`analyses.geometry.collapse.CollapseStats`, memory ``O(C*D + D^2)`` per layer,
  independent of the token count). NC3 compares the class means with the unembedding rows of the
  same tokens; NC4 is measured on the LID sample against the model's own argmax predictions.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from analyses.geometry.collapse import CollapseStats
from analyses.geometry.lid import LocalTwoNN
from probe.arch import n_layers
from probe.capture import capture
from probe.data import load_corpus, token_windows, window_protocol
from probe.display import Figured
from probe.errors import LayerError, ProbeError
from probe.reducers import Batch, Reducer, Reservoir



class NextTokenCollapse(Reducer):
    """Feeds :class:`CollapseStats` with the features of positions ``t`` labelled by token ``t+1``,
    keeping only labels in ``classes`` (and real, unpadded positions)."""

    name = "collapse"

    def __init__(self, classes: torch.Tensor, min_count: int = 2) -> None:
        self.classes = classes
        self.stats = CollapseStats(min_count=min_count, per_class_scatter=False)

    def update(self, x: torch.Tensor, batch: Batch) -> None:
        if batch.tokens is None:
            raise ProbeError("next-token collapse needs the input ids of the batch")
        if self.stats.dim_ is None:  # all classes up front: the state has its final size from the start
            self.stats._grow(self.classes.numpy(), x.shape[-1])
        labels = batch.tokens[:, 1:].to(x.device)
        keep = torch.isin(labels, self.classes.to(x.device))
        if batch.mask is not None:
            mask = batch.mask.to(device=x.device, dtype=torch.bool)
            keep &= mask[:, 1:] & mask[:, :-1]
        self.stats.partial_fit(x[:, :-1][keep].double().cpu(), labels[keep].cpu())

    def result(self) -> CollapseStats:
        return self.stats


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
    """One layer: LID summary of the sampled tokens and the collapse metrics (``collapse``)."""

    layer: int
    lid_mean: float
    lid_median: float
    lid_std: float
    n_points: int
    n_duplicates: int
    collapse: dict[str, float] = field(default_factory=dict)

    def value(self, key: str) -> float | None:
        return getattr(self, key) if key.startswith("lid_") else self.collapse.get(key)


@dataclass
class Geometry(Figured):
    """Result of :func:`geometry`; ``to_dict()`` is JSON-safe, ``figure()`` draws the curves."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def curve(self, key: str) -> list[float | None]:
        """Per-layer values of one metric (``lid_mean``, ``nc1``, ...)."""
        return [g.value(key) for g in self.layers]


def _lid(sample: torch.Tensor, k: int, seed: int) -> tuple[np.ndarray, int]:
    X = sample.numpy()
    n_unique = len(np.unique(X, axis=0))
    if n_unique <= k + 1:
        raise ProbeError(f"only {n_unique} distinct token vectors for k={k} neighbours; sample more tokens or lower --k")
    est = LocalTwoNN(n_neighbors=k, max_points=None, seed=seed).fit(X)
    return est.dimension_pw_, est.n_duplicates_


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
) -> Geometry:
    """LID and collapse metrics of ``hook_resid_post`` for ``layers`` (default all), one pass;
    windows by the protocol of :mod:`probe.data` (``prepend``)."""
    L = n_layers(model)
    layers = list(range(L)) if layers is None else list(layers)
    bad = [l for l in layers if not 0 <= l < L]
    if bad or not layers:
        raise LayerError(f"layers {bad or layers} out of range: the model has layers 0..{L - 1}")
    windows = token_windows(tokenizer, load_corpus(corpus), seq_len=seq_len, n_seqs=n_seqs, prepend=prepend)
    classes = next_token_classes(windows, top_classes, min_count)
    points = [f"blocks.{l}.hook_resid_post" for l in layers]
    reduce = {"sample": Reservoir(lid_points, seed), "collapse": NextTokenCollapse(classes, min_count)}
    predictions = torch.empty(windows.shape, dtype=torch.long)
    done = 0

    def keep_argmax(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> None:
        predictions[done:done + out.shape[0]] = out.argmax(-1).cpu()

    head = model.get_output_embeddings().register_forward_hook(keep_argmax)
    try:
        with torch.no_grad(), capture(model, points, reduce=reduce) as cap:
            for done in range(0, windows.shape[0], batch_size):
                cap.run(windows[done:done + batch_size])
                if progress:
                    progress(min(batch_size, windows.shape[0] - done))
            results = cap.results
    finally:
        head.remove()
    W_U = model.get_output_embeddings().weight.detach().double().cpu().numpy()
    out = [_layer(l, results[p], windows, predictions, classes, W_U, k, seed) for l, p in zip(layers, points)]
    return Geometry(name, corpus, windows.shape[0], windows.shape[1], windows.numel(), k, lid_points,
                    len(classes), min_count, out, window_protocol(tokenizer, prepend).to_dict())


def _layer(l: int, res: dict[str, Any], windows: torch.Tensor, predictions: torch.Tensor,
           classes: torch.Tensor, W_U: np.ndarray, k: int, seed: int) -> LayerGeometry:
    sample, stats = res["sample"], res["collapse"]
    lid, n_dup = _lid(sample.vectors, k, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # S_W is singular when D > samples; pinv is documented
        metrics = stats.metrics(classifier=W_U)
    # NC4 on the sampled tokens that have a next token among the classes.
    has_next = sample.position < windows.shape[1] - 1
    b, p = sample.batch[has_next], sample.position[has_next]
    label = windows[b, p + 1]
    sel = torch.isin(label, torch.as_tensor(stats.used_labels()))
    if sel.any():
        metrics["nc4"] = stats.nc4(sample.vectors[has_next][sel], predictions[b[sel], p[sel]])
    return LayerGeometry(l, float(np.mean(lid)), float(np.median(lid)), float(np.std(lid)),
                         int(len(lid)), int(n_dup), metrics)
