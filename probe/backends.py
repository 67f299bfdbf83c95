"""Adapters to the TransformerLens and nnsight engines used by :mod:`probe.capture`.

TransformerLens 4 has no ``HookedTransformer``; it wraps an already loaded HF model in a
``TransformerBridge`` whose hook names match ours. The bridge switches attention to eager and
edits its model in place, so it always gets a copy. nnsight wraps the HF model and records
module inputs/outputs inside ``model.trace``; trace bodies must live in a real file (this one).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from probe.capture import _device
from probe.hookpoints import HookPoint


def as_bridge(model: Any) -> Any:
    """``model`` itself if it is a ``TransformerBridge``, else a bridge over a deep copy of it."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return model
    hf = copy.deepcopy(model)
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf, tokenizer=None, device=str(_device(model)), dtype=next(model.parameters()).dtype
    )
    return bridge


def as_nnsight(model: Any) -> Any:
    """``model`` itself if it is an nnsight model, else ``nnsight.NNsight(model)``."""
    from nnsight import NNsight

    if isinstance(model, NNsight):
        return model
    return NNsight(model)


def module_paths(model: nn.Module) -> dict[int, str]:
    """``id(module) -> dotted path`` for every submodule of ``model``."""
    return {id(m): name for name, m in model.named_modules()}


def nnsight_trace(
    wrapped: Any, model: nn.Module, points: list[HookPoint], input_ids: torch.Tensor, kwargs: dict
) -> dict[str, torch.Tensor]:
    """Run one ``wrapped.trace`` and return each point's tensor (points in forward order)."""
    paths = module_paths(model)
    saved: dict[str, Any] = {}
    with wrapped.trace(input_ids, **kwargs):
        for point in points:
            envoy = wrapped
            path = paths[id(point.module)]
            for part in path.split(".") if path else []:
                envoy = getattr(envoy, part)
            value = point.get(((envoy.input,), {})) if point.side == "input" else point.get(envoy.output)
            saved[point.name] = value.save()
    return {name: value.detach() for name, value in saved.items()}
