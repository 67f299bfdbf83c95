"""Ablation experiments: plans as data, applied as weight edits or inside nnsight traces, re-evaluated.

- :mod:`.data` — :class:`Plan` and the in-trace :class:`Step` as plain data;
- :mod:`.modes` — the registered modes (``@mode("zero")``): plans, weight edits, in-trace steps;
- :mod:`.plans` — :func:`make_plans` from a scan;
- :mod:`.weights` — a plan as a reversible weight edit (:func:`applied`);
- :mod:`.traced` — a plan as interventions inside an nnsight trace (NDIF or local);
- :mod:`.run` — :func:`measure`, :func:`run_plans` and the :class:`Ablation` table;
- :mod:`.on_ray` — the same table with the plans spread over Ray workers;
- :mod:`.figures` — :func:`ablation_figure`.
"""

from analyses.ablate.data import Plan, Step
from analyses.ablate.modes import Mode, get_mode, mode, mode_names
from analyses.ablate.plans import make_plans, neurons_at, resolve_layer
from analyses.ablate.weights import applied
from analyses.ablate.run import NO_TASKS, Ablation, measure, run_plans, tabulate
from analyses.ablate.traced import traced_perplexities, traced_perplexity
from analyses.ablate.figures import ablation_figure
from analyses.ablate.on_ray import run_plans_ray

MODES = mode_names()  # the registered modes (a tuple, in order)

__all__ = [
    "MODES",
    "Mode",
    "Plan",
    "Step",
    "get_mode",
    "mode",
    "mode_names",
    "make_plans",
    "neurons_at",
    "resolve_layer",
    "applied",
    "NO_TASKS",
    "Ablation",
    "measure",
    "run_plans",
    "tabulate",
    "traced_perplexities",
    "traced_perplexity",
    "ablation_figure",
    "run_plans_ray",
]
