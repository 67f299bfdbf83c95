"""Massive activations: where they sit, the layer they come from, the weights behind them.

- :mod:`.locate` — :func:`scan` streams the corpus once and returns a :class:`MassiveScan` (origin
  layer, massive dims, carriers, massive neurons and weights, super weight, window protocol);
- :mod:`.origin` — :func:`origin_detail`: full tensors of the carrier window at one layer;
- :mod:`.prepend` — :func:`compare_prepend`: the same scan under other window protocols;
- :mod:`.figures` — the Plotly figures of all three.
"""

from analyses.massive.locate import RATIOS, LayerScan, MassiveScan, scan, scan_windows, read_weights
from analyses.massive.origin import OriginDetail, carrier_ids, origin_detail
from analyses.massive.figures import residual_profile, ratio_profile, massive_tokens, origin_heatmap, neuron_profile, weight_row_norms
from analyses.massive.prepend import DEFAULT_PREPENDS, PrependComparison, alternatives, compare_prepend, label, others

__all__ = [
    "RATIOS",
    "LayerScan",
    "MassiveScan",
    "scan",
    "scan_windows",
    "read_weights",
    "OriginDetail",
    "carrier_ids",
    "origin_detail",
    "residual_profile",
    "ratio_profile",
    "massive_tokens",
    "origin_heatmap",
    "neuron_profile",
    "weight_row_norms",
    "DEFAULT_PREPENDS",
    "PrependComparison",
    "alternatives",
    "compare_prepend",
    "label",
    "others",
]
