"""Ablation modes, registered: each one says, side by side, which plans it makes from a scan,
how a plan edits the weights (:func:`analyses.ablate.weights.applied`) and which in-trace
steps do the same to the activations (:func:`analyses.ablate.traced.steps`).

A new mode is one class decorated with ``@mode("name")`` (in this module or any module that
:mod:`analyses.ablate` imports). House of Cards (arXiv 2410.01866, §3-4) for the row ablations,
the Super Weight paper (Yu et al. 2024) for ``super``, Sun et al. 2024 for the residual edits.
"""

from __future__ import annotations

import random
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from analyses.ablate.data import Plan, Step, check_indices
from probe.arch import arch_for, d_ff, layer, weight_view
from probe.backends import module_paths, portable
from probe.edit import edit_residual, keep_rows, zero_rows
from probe.errors import ProbeError
from probe.hookpoints import resolve

_REGISTRY: dict[str, "Mode"] = {}


@dataclass(frozen=True)
class Target:
    """What a mode aims at: ``layer``, its top FFN neurons at the carrier token (largest first,
    at least ``max(ks)``), the FFN width, the carrier (``position``, ``dim``) and the massive
    values of that layer seen in the scan."""

    layer: int
    top: list[int]
    width: int
    position: int
    dim: int
    massive: list[dict[str, Any]]


class Mode:
    """One ablation mode. ``plans`` from a :class:`Target`; ``edits``: the reversible edits of
    ``model`` (context managers) for one plan; ``steps``: the same as in-trace :class:`Step` s."""

    name = ""

    def plans(self, target: Target, ks: list[int], seeds: int) -> list[Plan]:
        raise NotImplementedError

    def edits(self, model: nn.Module, plan: Plan) -> list[AbstractContextManager[Any]]:
        raise NotImplementedError

    def steps(self, model: nn.Module, plan: Plan, seq_len: int) -> list[Step]:
        raise NotImplementedError

    def first_layer(self, plan: Plan) -> int:
        """The first block whose computation ``plan`` changes: blocks in front of it compute what
        they compute without the plan (shared by :func:`analyses.ablate.run.run_plans`). Every mode
        here edits block ``plan.layer``: its FFN weights, or its output (the residual edits hook
        ``blocks.{layer}.hook_resid_post``, so block ``layer`` must still run)."""
        return plan.layer


def mode(name: str) -> Callable[[type[Mode]], type[Mode]]:
    """Register the decorated :class:`Mode` subclass under ``name``."""

    def register(cls: type[Mode]) -> type[Mode]:
        instance = cls()
        instance.name = name
        _REGISTRY[name] = instance
        return cls

    return register


def get_mode(name: str) -> Mode:
    """The registered mode ``name``; an unknown name raises a :class:`ProbeError` listing them."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ProbeError(f"unknown ablation mode {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def mode_names() -> tuple[str, ...]:
    """The registered modes, in registration order."""
    return tuple(_REGISTRY)


def _ffn_rows(model: nn.Module, layer_index: int, rows: list[int]) -> list[Step]:
    """``fill`` steps that set the outputs ``rows`` of every FFN input projection (gate and up, or
    in; a fused gate/up matrix gets both halves) to their bias."""
    arch = arch_for(model)
    paths = module_paths(model)
    cols: dict[str, list[int]] = {}
    for name in arch.ffn_in_names:
        view = weight_view(model, layer_index, name, arch)
        cols.setdefault(paths[id(view.module)], []).extend(view.row_offset + n for n in rows)
    return [Step("fill", path, layer_index, tuple(c)) for path, c in cols.items()]


def _row_edits(model: nn.Module, plan: Plan, edit: Callable[..., AbstractContextManager[Any]]) -> list[Any]:
    return [edit(model, f"blocks.{plan.layer}.mlp.{n}", list(plan.neurons)) for n in arch_for(model).ffn_in_names]


@mode("zero")
class Zero(Mode):
    """Zero rows ``neurons`` of ``W_up`` and ``W_gate`` (``W_in``): the top-``k`` massive weights."""

    def plans(self, target: Target, ks: list[int], seeds: int) -> list[Plan]:
        return [Plan(self.name, target.layer, k, tuple(target.top[:k])) for k in ks]

    def edits(self, model: nn.Module, plan: Plan) -> list[Any]:
        return _row_edits(model, plan, zero_rows)

    def steps(self, model: nn.Module, plan: Plan, seq_len: int) -> list[Step]:
        check_indices(plan.neurons, d_ff(model), "FFN row")
        return _ffn_rows(model, plan.layer, list(plan.neurons))


@mode("retain")
class Retain(Zero):
    """Keep only rows ``neurons`` of ``W_up`` and ``W_gate``; zero every other row of the layer
    (the plans of ``zero``, the opposite edit)."""

    def edits(self, model: nn.Module, plan: Plan) -> list[Any]:
        return _row_edits(model, plan, keep_rows)

    def steps(self, model: nn.Module, plan: Plan, seq_len: int) -> list[Step]:
        width = d_ff(model)
        check_indices(plan.neurons, width, "FFN row")
        chosen = set(plan.neurons)
        return _ffn_rows(model, plan.layer, [n for n in range(width) if n not in chosen])


@mode("random")
class RandomRows(Zero):
    """The control of ``zero``: ``k`` random rows of the same layer, never a top-``k`` one; one plan per seed."""

    def plans(self, target: Target, ks: list[int], seeds: int) -> list[Plan]:
        plans = []
        for k in ks:
            pool = [n for n in range(target.width) if n not in set(target.top[:k])]
            plans += [Plan(self.name, target.layer, k, tuple(sorted(random.Random(seed).sample(pool, k))), seed=seed)
                      for seed in range(seeds)]
        return plans


@mode("super")
class Super(Mode):
    """Zero the single weight ``W_down[dim, neuron]`` joining the top neuron to the massive dim.
    In the trace, output ``dim`` of the down projection is recomputed without it (the module's own
    arithmetic on a zeroed copy of ``W_down``: equal to the weight edit bit for bit)."""

    def plans(self, target: Target, ks: list[int], seeds: int) -> list[Plan]:
        return [Plan(self.name, target.layer, 1, (target.top[0],), dims=(target.dim,))]

    def edits(self, model: nn.Module, plan: Plan) -> list[Any]:
        return [zero_rows(model, f"blocks.{plan.layer}.mlp.W_down", list(plan.dims), cols=list(plan.neurons))]

    def steps(self, model: nn.Module, plan: Plan, seq_len: int) -> list[Step]:
        check_indices(plan.neurons, d_ff(model), "FFN row")
        view = weight_view(model, plan.layer, "W_down")
        check_indices(plan.dims, view.n_rows, "residual dim")
        return [Step("recompute", module_paths(model)[id(view.module)], plan.layer, tuple(plan.dims),
                     tuple(plan.neurons))]


@mode("residual-zero")
class ResidualZero(Mode):
    """Set the residual stream after ``layer`` at the carrier (position, dim) to 0."""

    def value(self, target: Target) -> float:
        return 0.0

    def plans(self, target: Target, ks: list[int], seeds: int) -> list[Plan]:
        return [Plan(self.name, target.layer, 1, dims=(target.dim,), positions=(target.position,),
                     value=self.value(target))]

    def edits(self, model: nn.Module, plan: Plan) -> list[Any]:
        return [edit_residual(model, f"blocks.{plan.layer}.hook_resid_post", list(plan.positions), list(plan.dims),
                              plan.value)]

    def steps(self, model: nn.Module, plan: Plan, seq_len: int) -> list[Step]:
        (point,) = resolve(model, f"blocks.{plan.layer}.hook_resid_post")
        check_indices(plan.dims, weight_view(model, plan.layer, "W_down").n_rows, "residual dim")
        check_indices(plan.positions, seq_len, "position")
        return [Step("set", module_paths(model)[id(layer(model, plan.layer))], plan.layer, tuple(plan.dims),
                     positions=tuple(plan.positions), value=plan.value, point=portable(point))]


@mode("residual-mean")
class ResidualMean(ResidualZero):
    """Set the residual stream after ``layer`` at the carrier (position, dim) to the mean of the
    massive values the scan saw there."""

    def value(self, target: Target) -> float:
        values = [e["value"] for e in target.massive
                  if e["position"] == target.position and e["dim"] == target.dim] or [0.0]
        return sum(values) / len(values)
