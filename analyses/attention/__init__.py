"""Attention sinks and the outlier lifecycle (issue 18).

- :mod:`.sinks` — :func:`sinks`: per layer and head, the attention on the first token (and on the
  massive-activation carriers of a scan), Gu et al.'s ``Sink^eps``, the onset layer and the
  key-bias decomposition, streamed through reducers;
- :mod:`.lifecycle` — :func:`lifecycle`: weight edit -> massive activation -> attention sink ->
  loss, for the unedited model and each ablation plan;
- :mod:`.figures` — the layer x head heatmap with ``sink_frac`` per layer (``Sinks.figure()``) and
  the lifecycle panels (``Lifecycle.figure()``).
"""

from analyses.attention.sinks import (KeyAttention, KeyBias, LayerSinks, Sinks, carrier_positions, eager_taps, onset,
                                      qkv, sinks, sustained_onset)
from analyses.attention.lifecycle import Lifecycle, Stage, lifecycle
from analyses.attention.figures import lifecycle_figure, sinks_figure

__all__ = ["KeyAttention", "KeyBias", "LayerSinks", "Lifecycle", "Sinks", "Stage", "carrier_positions", "eager_taps",
           "lifecycle", "lifecycle_figure", "onset", "qkv", "sinks", "sinks_figure", "sustained_onset"]
