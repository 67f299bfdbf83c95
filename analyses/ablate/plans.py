"""Ablation plans as data (House of Cards, arXiv 2410.01866, §3-4; Sun et al. 2024).

A :class:`Plan` names one edit:

- ``zero``: zero rows ``neurons`` of ``W_up`` and ``W_gate`` (``W_in``) at ``layer``;
- ``retain``: keep only those rows, zero every other gate/up row of the layer;
- ``random``: zero ``k`` random rows of the same layer (seeded, never a massive neuron);
- ``super``: zero the single weight ``W_down[dim, neuron]``;
- ``residual-zero`` / ``residual-mean``: set the residual stream at the massive (position, dim)
  after ``layer`` to zero / to the mean of the massive values seen in the scan.

:func:`make_plans` builds them from a :class:`~analyses.massive.locate.MassiveScan`.
"""

from __future__ import annotations
import torch
from torch import nn
from analyses.ablate.data import Plan
from analyses.ablate.modes import Target, get_mode
from analyses.massive.locate import MassiveScan
from probe.arch import d_ff
from probe.backends import hf_module
from probe.capture import one_sequence
from probe.errors import ProbeError



def neurons_at(model: nn.Module, windows: torch.Tensor, layer: int, batch: int, position: int, k: int,
               backend: str = "torch", remote: bool | str = False) -> list[int]:
    """The ``k`` intermediate dims with the largest ``|value|`` at ``layer`` for one token."""
    point = f"blocks.{layer}.mlp.hook_post"
    post = one_sequence(model, windows[batch, : position + 1], [point], backend=backend, remote=remote)[point]
    return post[position].abs().topk(k).indices.tolist()


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


def make_plans(model: nn.Module, windows: torch.Tensor | None, result: MassiveScan, mode: str, ks: list[int],
               layer: str | int = "auto", seeds: int = 3, backend: str = "torch", remote: bool | str = False) -> list[Plan]:
    """Plans for ``mode`` and each ``k`` in ``ks`` (``random``: one plan per seed), aimed at the
    scan's carrier (``result.carrier``). ``windows``: the scan's windows (``None``: those kept on
    ``result``). ``backend`` and ``remote`` are those of the capture that finds the top neurons of
    a layer other than the origin."""
    chosen = get_mode(mode)
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
        windows = result.windows if windows is None else windows
        if windows is None:
            raise ProbeError("make_plans needs the scan's windows (windows) for a layer other than the origin")
        top = neurons_at(model, windows, l, carrier["batch"], carrier["position"], kmax, backend, remote)
    target = Target(l, top, width, carrier["position"], carrier["dim"], result.layers[l].massive)
    return chosen.plans(target, ks, seeds)
