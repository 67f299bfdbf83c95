"""Evaluate plans: :func:`measure` one, :func:`run_plans` the baseline and every plan, each applied
and restored, as one :class:`Ablation` table.

With ``backend="nnsight"`` (and ``remote``, for NDIF or its offline simulation) the plans run as
interventions inside the trace instead of weight edits, with the same results
(:mod:`analyses.ablate.traced`).

Shared prefixes (``run_plans(..., share_prefix=True)``, the default): a plan that first changes
block ``L`` (:meth:`analyses.ablate.modes.Mode.first_layer`) leaves blocks ``0..L-1`` as they are,
so the baseline's forwards record the residual stream entering each such ``L`` once per batch and
the plan's forwards run blocks ``L..`` only (:class:`probe.prefix.SharedPrefix`). The table is the
same, float for float; not with ``tasks`` (lm-eval runs its own forwards), the nnsight backend, or
an offloaded (``device_map``) model, which run full forwards.
"""

from __future__ import annotations
from contextlib import nullcontext
from typing import Any, Callable
import torch
from torch import nn
from analyses.evaluate.likelihood import perplexity
from probe.arch import n_layers
from probe.backends import check_backend
from probe.display import Figured
from probe.errors import ProbeError
from analyses.ablate.data import Plan
from analyses.ablate.modes import get_mode
from analyses.ablate.weights import applied
from probe.prefix import SharedPrefix, can_share


NO_TASKS = ("zero-shot tasks run lm-eval on a model in this process; with backend nnsight (or remote) "
            "evaluate perplexity only (--eval ppl)")


class Ablation(dict, Figured):
    """What :func:`run_plans` returns: ``{"baseline": ..., "results": [...]}`` (a plain dict,
    JSON-ready) that also draws itself (:func:`analyses.ablate.figures.ablation_figure`)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


def measure(model: nn.Module, eval_windows: torch.Tensor, plan: Plan | None = None, tokenizer: Any = None,
            tasks: list[str] | None = None, limit: int | None = None, backend: str = "torch",
            remote: bool | str = False) -> dict[str, Any]:
    """One evaluation of ``model`` with ``plan`` applied (``None``: as it is), restored on return:
    :class:`analyses.evaluate.likelihood.Perplexity` as a dict, plus ``tasks`` (zero-shot accuracies through
    lm-eval, :func:`analyses.evaluate.tasks.zero_shot`) when ``tasks`` are given. The unit of work of
    :func:`run_plans` and of the Ray workers of :mod:`analyses.ablate.on_ray`.

    ``backend="nnsight"``: the plan runs as interventions inside traces, ``remote`` ones
    (``True``: NDIF, ``"local"``: its simulation) included (:func:`analyses.ablate.traced.traced_perplexity`);
    perplexity only."""
    from analyses.evaluate.tasks import zero_shot

    backend, remote = check_backend(backend, remote, allowed=("torch", "nnsight"))
    if backend == "nnsight":
        from analyses.ablate.traced import traced_perplexity

        if tasks:
            raise ProbeError(NO_TASKS)
        return traced_perplexity(model, eval_windows, plan, remote, tokenizer).to_dict()
    with applied(model, plan) if plan is not None else nullcontext():
        row: dict[str, Any] = perplexity(model, eval_windows).to_dict()
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


def run_plans(model: nn.Module, eval_windows: torch.Tensor, plans: list[Plan], progress: Callable[[int], None] | None = None,
              tokenizer: Any = None, tasks: list[str] | None = None, limit: int | None = None,
              backend: str = "torch", remote: bool | str = False, per_request: int = 1,
              share_prefix: bool = True) -> Ablation:
    """Baseline, then each plan applied, evaluated (perplexity; zero-shot accuracy on ``tasks``
    through lm-eval when given) and restored: a tidy table, one row per plan.
    :func:`analyses.ablate.on_ray.run_plans_ray` gives the same table, the plans spread over Ray workers;
    ``backend="nnsight"`` with ``remote`` gives it for a model on NDIF (see :func:`measure`),
    ``per_request`` (plan, batch) jobs per request
    (:func:`analyses.ablate.traced.traced_perplexities`). ``share_prefix``: run the blocks in front
    of each plan's first edited layer once, in the baseline (module docstring); the same table."""
    backend, remote = check_backend(backend, remote, allowed=("torch", "nnsight"))
    if backend == "nnsight":
        from analyses.ablate.traced import traced_perplexities

        if tasks:
            raise ProbeError(NO_TASKS)
        found = traced_perplexities(model, eval_windows, [None, *plans], remote, tokenizer,
                                    per_request=per_request, progress=progress)
        return tabulate(found[0].to_dict(), plans, [p.to_dict() for p in found[1:]])
    opts = dict(tokenizer=tokenizer, tasks=tasks, limit=limit, backend=backend, remote=remote)
    first = [get_mode(plan.mode).first_layer(plan) for plan in plans]
    sharing = share_prefix and not tasks and can_share(model)
    layers = {L for L in first if 0 < L < n_layers(model)} if sharing else set()
    shared = SharedPrefix(model, layers) if layers else None
    with shared.recording() if shared else nullcontext():
        baseline = measure(model, eval_windows, None, **opts)
    if progress:
        progress(1)
    measured = []
    for plan, layer in zip(plans, first):
        with shared.replaying(layer) if shared and layer in layers else nullcontext():
            measured.append(measure(model, eval_windows, plan, **opts))
        if progress:
            progress(1)
    return tabulate(baseline, plans, measured)
