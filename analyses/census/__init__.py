"""Causal super-weight census (issue 19): spike candidates per layer, each zeroed alone against
matched controls, with bootstrap intervals and the "restore the super activation" variant.

- :mod:`.spikes` — the spike ranking (one capture pass) and the matched control bands;
- :mod:`.edits` — single ``W_down`` weights zeroed as activation edits, batched, on a shared prefix;
- :mod:`.census` — :func:`census`, the :class:`Census` table (JSON, CSV), published coordinates;
- :mod:`.traced` — the same edits inside nnsight traces (NDIF);
- :mod:`.on_ray` — :func:`census_ray`, the edits on Ray workers (Ray imported only when called);
- :mod:`.figures` — :func:`census_figure`.
"""

from analyses.census.census import COLUMNS, PUBLISHED, Census, bootstrap, census, is_causal, published_for
from analyses.census.edits import WindowLosses, Zeroed, zeroed_output
from analyses.census.spikes import BAND, matched_controls
from analyses.census.figures import census_figure
from analyses.census.on_ray import census_ray

__all__ = ["BAND", "COLUMNS", "Census", "PUBLISHED", "WindowLosses", "Zeroed", "bootstrap", "census", "census_figure", "census_ray",
           "is_causal", "matched_controls", "published_for", "zeroed_output"]
