"""Geometry of hidden states: local intrinsic dimension, neural collapse, and both per layer.

- :mod:`.lid` — TwoNN, local TwoNN and MLE estimators (scikit-learn style);
- :mod:`.collapse` — :class:`CollapseStats`: NC1-NC4, CDNV, Fisher ratio, cone effect;
- :mod:`.gride` — Gride, the multi-scale generalised-ratios estimator, and its LID-vs-scale curve;
- :mod:`.layers` — :func:`geometry`: both, layer by layer, in one pass over a corpus (the massive scan
  rides on it), with bootstrap intervals and without the massive-activation tokens;
- :mod:`.figures` — their Plotly figures (``Geometry.figure()``, and LID or collapse alone).
"""

from analyses.geometry.lid import MLE, LocalTwoNN, TwoNN, knn, local_twonn_from_knn, twonn_from_mu
from analyses.geometry.collapse import CollapseStats
from analyses.geometry.layers import (Geometry, GeometryPass, LayerGeometry, NextTokenCollapse, geometry,
                                     next_token_classes, under_ablation)
from analyses.geometry.figures import collapse_figure, geometry_figure, lid_figure, scale_figure

__all__ = [
    "MLE",
    "LocalTwoNN",
    "TwoNN",
    "knn",
    "local_twonn_from_knn",
    "twonn_from_mu",
    "CollapseStats",
    "Geometry",
    "GeometryPass",
    "LayerGeometry",
    "NextTokenCollapse",
    "geometry",
    "next_token_classes",
    "under_ablation",
    "collapse_figure",
    "geometry_figure",
    "lid_figure",
    "scale_figure",
]
