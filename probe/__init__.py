"""probe: reach into causal language models.

Mechanics only (models, hook points, reducers, edits, data); the science lives in ``analyses``.
"""

from probe.capture import Capture, capture
from probe.display import Figured, show
from probe.edit import edit_residual, edit_weight, keep_rows, scale, set_mean, zero_rows
from probe.errors import (
    EditError,
    EmptyInputError,
    HookPointError,
    LayerError,
    ProbeError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from probe.hookpoints import hook_points, resolve
from probe.models import LoadedModel, available_models, load_model
from probe.reducers import DimMax, Exceed, Full, MaxMedian, Moments, Reservoir, TopK

__all__ = [
    "Capture", "capture", "edit_residual", "edit_weight", "keep_rows", "scale", "set_mean", "zero_rows",
    "EditError", "EmptyInputError", "HookPointError", "LayerError", "ProbeError", "UnknownModelError",
    "UnsupportedArchitectureError", "hook_points", "resolve", "LoadedModel", "available_models", "load_model",
    "DimMax", "Exceed", "Full", "MaxMedian", "Moments", "Reservoir", "TopK", "Figured", "show",
]
