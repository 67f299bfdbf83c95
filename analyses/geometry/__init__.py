"""Geometry of hidden states: local intrinsic dimension, neural collapse, and both per layer.

- :mod:`.lid` — TwoNN, local TwoNN and MLE estimators (scikit-learn style);
- :mod:`.collapse` — :class:`CollapseStats`: NC1-NC4, CDNV, Fisher ratio, cone effect;
- :mod:`.layers` — :func:`geometry`: both, layer by layer, in one pass over a corpus;
- :mod:`.figures` — their Plotly figures (``Geometry.figure()``, and LID or collapse alone).
"""

from analyses.geometry.lid import MLE, LocalTwoNN, TwoNN, knn, local_twonn_from_knn, twonn_from_mu
from analyses.geometry.collapse import CollapseStats
from analyses.geometry.layers import Geometry, LayerGeometry, NextTokenCollapse, geometry, next_token_classes
from analyses.geometry.figures import collapse_figure, geometry_figure, lid_figure

__all__ = [
    "MLE",
    "LocalTwoNN",
    "TwoNN",
    "knn",
    "local_twonn_from_knn",
    "twonn_from_mu",
    "CollapseStats",
    "Geometry",
    "LayerGeometry",
    "NextTokenCollapse",
    "geometry",
    "next_token_classes",
    "collapse_figure",
    "geometry_figure",
    "lid_figure",
]
