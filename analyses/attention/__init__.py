"""Attention sinks and the outlier lifecycle (issue 18).

- :mod:`.sinks` — :func:`sinks`: per layer and head, the attention on the first token (and on the
  massive-activation carriers of a scan), Gu et al.'s ``Sink^eps``, the onset layer and the
  key-bias decomposition, streamed through reducers;
- :mod:`.figures` — the layer x head heatmap with ``sink_frac`` per layer (``Sinks.figure()``).
"""

from analyses.attention.sinks import (KeyAttention, KeyBias, LayerSinks, Sinks, carrier_positions, eager_taps, onset,
                                      qkv, sinks)
from analyses.attention.figures import sinks_figure

__all__ = ["KeyAttention", "KeyBias", "LayerSinks", "Sinks", "carrier_positions", "eager_taps", "onset", "qkv",
           "sinks", "sinks_figure"]
