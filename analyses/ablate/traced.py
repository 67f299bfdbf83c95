"""Ablation plans as interventions inside an nnsight trace: the weights are never touched.

Weight edits (:func:`analyses.ablate.weights.applied`) change weights in place and restore them. A model served by NDIF
is shared and a request can fail halfway, so there the same plans run as edits of the
activations inside the trace (House of Cards, arXiv 2410.01866, §3-4, for the ablations). Per
token, with ``x`` the FFN input and ``h`` the FFN intermediate state (input of ``W_down``):

- ``zero`` / ``random`` (rows ``N`` of ``W_gate`` and ``W_up``, or ``W_in``, set to 0): row ``n``
  gives the pre-activation ``(W x + b)[n] = b[n]``, so the projections' outputs at ``N`` are set
  to ``b[N]`` (0 without a bias). Exact: a zero row's dot product is exactly 0 and the other
  outputs do not depend on it (``tests`` compare bit for bit).
- ``retain``: the same on every row not in ``N``.
- ``super`` (``W_down[d, n] = 0``): output ``d`` of the down projection is recomputed from its
  input by what the module's forward runs (``F.linear``, or ``addmm`` for GPT-2's ``Conv1D``) on a
  copy of ``W_down`` with the entry zeroed (:func:`zeroed_forward`): the same kernel on the same
  shapes as a weight-edited forward, so equal to it bit for bit on the CPU (tested), at the price
  of one more down projection and a copy of ``W_down`` per batch.
- ``residual-zero`` / ``residual-mean``: ``hook_resid_post[:, p, d] = value`` after the block,
  as :func:`probe.edit.edit_residual`.

The perplexity (protocol of :mod:`analyses.evaluate`) is summed inside the trace
(:func:`analyses.evaluate.likelihood.sum_nll`), so a request sends back one number per batch of rows; one
request per plan and batch, or several batched into one (:func:`traced_perplexities`,
``per_request``). Biases and ``W_down`` rows are read inside the trace, i.e. from the server's
weights when remote; the edits are plain data (:class:`Step`), resolved on the model's meta copy
before any request.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from analyses.ablate.data import Plan, Step
from analyses.ablate.modes import get_mode
from analyses.evaluate.likelihood import Perplexity, sum_nll
from probe.arch import arch_for, get_path, input_device, layer
from probe.backends import as_nnsight, envoy_at, hf_module, shipped
from probe.errors import ProbeError
from probe.offload import held



def steps(model: nn.Module, plan: Plan, seq_len: int) -> list[Step]:
    """The :class:`Step` s (in forward order) equivalent to ``plan`` on ``model`` (an HF module,
    possibly on the meta device), from its mode (:mod:`analyses.ablate.modes`); out-of-range
    layers, rows, dims or positions raise."""
    layer(model, plan.layer)  # a layer out of range raises here, whatever the mode
    return get_mode(plan.mode).steps(model, plan, seq_len)


def apply(runner: Any, step: Step) -> None:
    """Carry out ``step`` inside a trace of ``runner`` (called in the trace body, in forward order)."""
    envoy = envoy_at(runner, step.path)
    root = runner._module
    if step.kind == "fill":
        out = envoy.output
        cols = torch.tensor(step.cols, device=out.device)
        module = get_path(root, step.path)
        with held(root, module):  # weights offloaded by accelerate are meta outside their forward
            bias = None if getattr(module, "bias", None) is None else module.bias[cols.to(module.bias.device)].to(out)
        out[..., cols] = 0.0 if bias is None else bias
    elif step.kind == "recompute":
        h = envoy.input
        out = envoy.output
        module = get_path(root, step.path)
        with held(root, module):  # the loaded weights
            new = zeroed_forward(module, h, step.cols, step.zeroed, arch_for(root).conv1d)
        cols = torch.tensor(step.cols, device=out.device)
        out[..., cols] = new[..., cols].to(out)
    else:
        assert step.point is not None
        resid = step.point.get(envoy.output)
        pos = torch.tensor(step.positions, device=resid.device)
        dims = torch.tensor(step.cols, device=resid.device)
        resid[:, pos[:, None], dims[None, :]] = step.value


def zeroed_forward(module: nn.Module, x: torch.Tensor, rows: Sequence[int], cols: Sequence[int],
                   conv1d: bool = False) -> torch.Tensor:
    """``module``'s output on ``x`` with ``W[rows, cols]`` zero (``nn.Linear`` layout: row = output,
    col = input), computed as its ``forward`` computes it (``F.linear``; ``Conv1D``, stored ``in x
    out``: ``addmm``) on a copy of its weight: a weight-edited forward, bit for bit, the module untouched."""
    weight = module.weight.detach().clone()
    r, c = torch.tensor(list(rows)), torch.tensor(list(cols))
    if conv1d:
        weight[c[:, None], r[None, :]] = 0
        return torch.addmm(module.bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[1])
    weight[r[:, None], c[None, :]] = 0
    return F.linear(x, weight, module.bias)


def traced_perplexities(model: Any, windows: torch.Tensor, plans: Sequence[Plan | None], remote: bool | str = False,
                        tokenizer: Any = None, batch_size: int = 8, per_request: int = 1, corpus: str = "stdlib",
                        progress: Callable[[int], None] | None = None) -> list[Perplexity]:
    """:func:`analyses.evaluate.likelihood.perplexity` of ``model`` with each plan of ``plans`` (``None``: the
    model as it is) applied as interventions inside nnsight traces (module docstring). Each equals
    the perplexity of the weight-edited model (:func:`analyses.ablate.measure`).

    ``remote``: ``True`` runs on NDIF (``model`` from :func:`probe.models.load_remote`),
    ``"local"`` simulates it. The work is one job per plan and batch of ``batch_size`` windows;
    ``per_request`` jobs share a trace (one nnsight invoke each, run as one forward pass: one NDIF
    request), so ``P`` plans over ``B`` batches take ``ceil(P * B / per_request)`` requests (more
    than 1 needs ``remote``). Every job sums its own batch, so the numbers do not depend on
    ``per_request``. ``progress(1)`` as each plan is done."""
    if per_request < 1 or (per_request > 1 and not remote):
        raise ProbeError(f"per_request={per_request}: give 1, or more with remote (jobs batched into one request)")
    runner = as_nnsight(model, remote, tokenizer)
    todo = [steps(hf_module(runner), plan, windows.shape[1]) if plan is not None else [] for plan in plans]
    device = torch.device("cpu") if remote else input_device(hf_module(runner))
    starts = range(0, windows.shape[0], batch_size)
    jobs = [(i, start) for i in range(len(plans)) for start in starts]
    totals, left = [0.0] * len(plans), [len(starts)] * len(plans)
    with shipped("probe", "analyses") if remote else nullcontext(), torch.no_grad():
        for first in range(0, len(jobs), per_request):
            chunk = jobs[first : first + per_request]
            work = [(windows[start : start + batch_size].to(device), todo[i]) for i, start in chunk]
            for (i, _), total in zip(chunk, _nlls(runner, work, {"remote": remote} if remote else {}), strict=True):
                totals[i] += float(total)
                left[i] -= 1
                if progress and not left[i]:
                    progress(1)
    return [Perplexity.of(total, windows[:, 1:].numel(), corpus, windows) for total in totals]


def traced_perplexity(model: Any, windows: torch.Tensor, plan: Plan | None = None, remote: bool | str = False,
                      tokenizer: Any = None, batch_size: int = 8, corpus: str = "stdlib") -> Perplexity:
    """:func:`traced_perplexities` of one plan."""
    return traced_perplexities(model, windows, [plan], remote, tokenizer, batch_size, corpus=corpus)[0]


def _nlls(runner: Any, work: list[tuple[torch.Tensor, list[Step]]], options: dict[str, Any]) -> list[torch.Tensor]:
    """One trace, one invoke per ``(batch, steps)``: the edits, then the summed negative
    log-likelihood of the batch."""
    import nnsight

    with runner.trace(**options) as tracer:
        sums = nnsight.save([])
        for batch, todo in work:
            with tracer.invoke(batch):
                for step in todo:
                    apply(runner, step)
                sums.append(sum_nll(runner.output.logits, batch))
    return sums
