"""Ablation plans as data, applied with reversible edits, evaluated, restored.

A :class:`Plan` names one edit (House of Cards, arXiv 2410.01866, §3-4; Sun et al. 2024):

- ``zero``: zero rows ``neurons`` of ``W_up`` and ``W_gate`` (``W_in``) at ``layer``;
- ``retain``: keep only those rows, zero every other gate/up row of the layer;
- ``random``: zero ``k`` random rows of the same layer (seeded, never a massive neuron);
- ``super``: zero the single weight ``W_down[dim, neuron]``;
- ``residual-zero`` / ``residual-mean``: set the residual stream at the massive (position, dim)
  after ``layer`` to zero / to the mean of the massive values seen in the scan.

With ``backend="nnsight"`` (and ``remote``, for NDIF or its offline simulation) the plans run as
interventions on the activations inside the trace instead of weight edits, with the same
results (:mod:`analyses.intervene`).
"""

from __future__ import annotations

import random as _random
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from analyses.evaluate import perplexity
from analyses.massive import MassiveScan
from probe.arch import arch_for, d_ff
from probe.backends import check_remote, hf_module
from probe.capture import capture
from probe.edit import edit_residual, keep_rows, zero_rows
from probe.display import Figured
from probe.errors import ProbeError
from probe.reducers import Full

MODES = ("zero", "retain", "random", "super", "residual-zero", "residual-mean")
NO_TASKS = ("zero-shot tasks run lm-eval on a model in this process; with backend nnsight (or remote) "
            "evaluate perplexity only (--eval ppl)")


@dataclass(frozen=True)
class Plan:
    """One ablation: ``mode`` at ``layer`` on ``neurons`` (FFN rows) or residual ``dims`` at ``positions``."""

    mode: str
    layer: int
    k: int
    neurons: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    value: float = 0.0
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def applied(model: nn.Module, plan: Plan) -> Iterator[None]:
    """The model with ``plan`` applied; restored bit-exactly on exit."""
    names = arch_for(model).ffn_in_names
    with ExitStack() as stack:
        target = lambda n: f"blocks.{plan.layer}.mlp.{n}"  # noqa: E731
        if plan.mode in ("zero", "random"):
            for n in names:
                stack.enter_context(zero_rows(model, target(n), list(plan.neurons)))
        elif plan.mode == "retain":
            for n in names:
                stack.enter_context(keep_rows(model, target(n), list(plan.neurons)))
        elif plan.mode == "super":
            stack.enter_context(zero_rows(model, target("W_down"), list(plan.dims), cols=list(plan.neurons)))
        elif plan.mode in ("residual-zero", "residual-mean"):
            stack.enter_context(edit_residual(model, f"blocks.{plan.layer}.hook_resid_post", list(plan.positions),
                                              list(plan.dims), plan.value))
        else:
            raise ProbeError(f"unknown ablation mode {plan.mode!r}; choose one of {', '.join(MODES)}")
        yield


def neurons_at(model: nn.Module, rows: torch.Tensor, layer: int, batch: int, position: int, k: int,
               backend: str = "torch", remote: bool | str = False) -> list[int]:
    """The ``k`` intermediate dims with the largest ``|value|`` at ``layer`` for one token."""
    with capture(model, f"blocks.{layer}.mlp.hook_post", reduce=Full(), backend=backend, remote=remote) as cap:
        cap.run(rows[batch : batch + 1, : position + 1])
    return cap[f"blocks.{layer}.mlp.hook_post"][0, position].abs().topk(k).indices.tolist()


def resolve_layer(result: MassiveScan, layer: str | int) -> int:
    """``auto`` = the origin layer, ``precursor`` = the precursor layer of the top massive dim, or an index."""
    if result.origin_layer is None:
        raise ProbeError("the scan found no massive activations; pass thresholds with --ratio/--abs or an explicit --layer")
    if layer == "auto":
        return result.origin_layer
    if layer == "precursor":
        return result.precursors[0]["layer"]
    try:
        index = int(layer)
    except ValueError:
        raise ProbeError(f"--layer must be auto, precursor or an integer, not {layer!r}") from None
    if not 0 <= index < len(result.layers):
        raise ProbeError(f"layer {index} is out of range: the model has {len(result.layers)} layers (0..{len(result.layers) - 1})")
    return index


def make_plans(model: nn.Module, rows: torch.Tensor | None, result: MassiveScan, mode: str, ks: list[int],
               layer: str | int = "auto", seeds: int = 3, backend: str = "torch", remote: bool | str = False) -> list[Plan]:
    """Plans for ``mode`` and each ``k`` in ``ks`` (``random``: one plan per seed), aimed at the
    scan's carrier (``result.carrier``). ``rows``: the scan's windows (``None``: those kept on
    ``result``). ``backend`` and ``remote`` are those of the capture that finds the top neurons of
    a layer other than the origin."""
    if mode not in MODES:
        raise ProbeError(f"unknown ablation mode {mode!r}; choose one of {', '.join(MODES)}")
    l = resolve_layer(result, layer)
    width = d_ff(hf_module(model))
    for k in ks:
        if not 1 <= k <= width:
            raise ProbeError(f"k={k} is out of range 1..{width}")
    carrier = result.carrier
    kmax = max(ks)
    if l == result.origin_layer and kmax <= len(result.massive_neurons):
        top = list(result.massive_neurons)
    else:
        rows = result.windows if rows is None else rows
        if rows is None:
            raise ProbeError("make_plans needs the scan's windows (rows) for a layer other than the origin")
        top = neurons_at(model, rows, l, carrier["batch"], carrier["position"], kmax, backend, remote)
    plans: list[Plan] = []
    for k in ks:
        if mode in ("zero", "retain"):
            plans.append(Plan(mode, l, k, tuple(top[:k])))
        elif mode == "random":
            pool = [n for n in range(width) if n not in set(top[:k])]
            plans += [Plan(mode, l, k, tuple(sorted(_random.Random(seed).sample(pool, k))), seed=seed) for seed in range(seeds)]
    dim = carrier["dim"]
    if mode == "super":
        plans.append(Plan(mode, l, 1, (top[0],), dims=(dim,)))
    elif mode.startswith("residual"):
        values = [e["value"] for e in result.layers[l].massive
                  if e["position"] == carrier["position"] and e["dim"] == dim] or [0.0]
        value = 0.0 if mode == "residual-zero" else sum(values) / len(values)
        plans.append(Plan(mode, l, 1, dims=(dim,), positions=(carrier["position"],), value=value))
    return plans


class Ablation(dict, Figured):
    """What :func:`run_plans` returns: ``{"baseline": ..., "results": [...]}`` (a plain dict,
    JSON-ready) that also draws itself (:func:`analyses.figures.ablation_figure`)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    def figure(self) -> Any:
        from analyses.figures import ablation_figure

        return ablation_figure(self)


def measure(model: nn.Module, eval_rows: torch.Tensor, plan: Plan | None = None, tokenizer: Any = None,
            tasks: list[str] | None = None, limit: int | None = None, backend: str = "torch",
            remote: bool | str = False) -> dict[str, Any]:
    """One evaluation of ``model`` with ``plan`` applied (``None``: as it is), restored on return:
    :class:`analyses.evaluate.Perplexity` as a dict, plus ``tasks`` (zero-shot accuracies through
    lm-eval, :func:`analyses.tasks.zero_shot`) when ``tasks`` are given. The unit of work of
    :func:`run_plans` and of the Ray workers of :mod:`analyses.sweep`.

    ``backend="nnsight"``: the plan runs as interventions inside traces, ``remote`` ones
    (``True``: NDIF, ``"local"``: its simulation) included (:func:`analyses.intervene.traced_perplexity`);
    perplexity only."""
    from analyses.tasks import zero_shot

    if backend == "nnsight":
        from analyses.intervene import traced_perplexity

        if tasks:
            raise ProbeError(NO_TASKS)
        return traced_perplexity(model, eval_rows, plan, remote, tokenizer).to_dict()
    if backend != "torch" or remote:
        raise ProbeError(f"ablations run on backend 'torch' or 'nnsight' (remote needs nnsight), not {backend!r}")
    with applied(model, plan) if plan is not None else nullcontext():
        row: dict[str, Any] = perplexity(model, eval_rows).to_dict()
        if tasks:
            row["tasks"] = zero_shot(model, tokenizer, tasks, limit=limit)
    return row


def tabulate(baseline: dict[str, Any], plans: list[Plan], measured: list[dict[str, Any]]) -> Ablation:
    """The table of :func:`run_plans` from the :func:`measure` of the baseline and of each plan (in order)."""
    results = []
    for plan, row in zip(plans, measured, strict=True):
        results.append({**plan.to_dict(), "metric": "ppl", "value": row["ppl"], "baseline": baseline["ppl"],
                        "ratio": row["ppl"] / baseline["ppl"], "ppl": row["ppl"],
                        **({"tasks": row["tasks"]} if "tasks" in row else {})})
    return Ablation(baseline=baseline, results=results)


def run_plans(model: nn.Module, eval_rows: torch.Tensor, plans: list[Plan], progress: Callable[[int], None] | None = None,
              tokenizer: Any = None, tasks: list[str] | None = None, limit: int | None = None,
              backend: str = "torch", remote: bool | str = False, per_request: int = 1) -> Ablation:
    """Baseline, then each plan applied, evaluated (perplexity; zero-shot accuracy on ``tasks``
    through lm-eval when given) and restored: a tidy table, one row per plan.
    :func:`analyses.sweep.run_plans_ray` gives the same table, the plans spread over Ray workers;
    ``backend="nnsight"`` with ``remote`` gives it for a model on NDIF (see :func:`measure`),
    ``per_request`` (plan, batch) jobs per request
    (:func:`analyses.intervene.traced_perplexities`)."""
    if backend == "nnsight":
        from analyses.intervene import traced_perplexities

        if tasks:
            raise ProbeError(NO_TASKS)
        found = traced_perplexities(model, eval_rows, [None, *plans], check_remote(remote), tokenizer,
                                    per_request=per_request, progress=progress)
        return tabulate(found[0].to_dict(), plans, [p.to_dict() for p in found[1:]])
    opts = dict(tokenizer=tokenizer, tasks=tasks, limit=limit, backend=backend, remote=remote)
    baseline = measure(model, eval_rows, None, **opts)
    if progress:
        progress(1)
    measured = []
    for plan in plans:
        measured.append(measure(model, eval_rows, plan, **opts))
        if progress:
            progress(1)
    return tabulate(baseline, plans, measured)
