"""Shared prefixes: run the blocks in front of layer ``L`` once, replay their output afterwards.

When many forwards of the same inputs differ only from block ``L`` on (an edit of block ``L`` or
later), blocks ``0..L-1`` compute the same thing every time. :class:`SharedPrefix` records, during
one ordinary forward per batch, the hidden states entering block 0 and leaving block ``L-1``;
while :meth:`SharedPrefix.replaying` is active, blocks ``0..L-1`` do no work: block 0 checks that
its input is the recorded one (the same batch, in the same order) and every skipped block returns
the recorded output of block ``L-1`` (the same class, so the same output format), so the model's own
code still computes the embeddings, masks, position embeddings, blocks ``L..`` and the head.
Hooks on the skipped blocks still fire, on the replayed values: capture from blocks ``>= L`` only.
Replayed forwards equal full forwards bit for bit (the skipped blocks would compute the same
numbers with the same kernels). Memory: ``batch x position x d`` per forward, per layer, plus the
block-0 inputs once.

Only for models in one process whose blocks run their own ``forward`` (:func:`can_share`): not
accelerate-offloaded (``device_map``) models or nnsight proxies.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from probe.arch import decoder_layers
from probe.errors import ProbeError


def can_share(model: nn.Module) -> bool:
    """``model`` is a plain module in this process whose blocks may be skipped: no accelerate
    device map or offload hooks on the model or its blocks."""
    if not isinstance(model, nn.Module) or getattr(model, "hf_device_map", None):
        return False
    try:
        blocks = decoder_layers(model)
    except ProbeError:
        return False
    return not any(hasattr(m, "_hf_hook") for m in (model, *blocks))


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class SharedPrefix:
    """Recorded prefixes of ``model`` for the blocks ``layers`` (each ``L >= 1``: the output of block
    ``L - 1`` is kept). Use :meth:`recording` around the forwards to share, then
    :meth:`replaying` ``(L)`` around forwards of the same batches, in the same order."""

    def __init__(self, model: nn.Module, layers: Iterable[int]):
        self.model = model
        self.blocks = decoder_layers(model)
        self.layers = sorted(set(layers))
        bad = [L for L in self.layers if not 1 <= L < len(self.blocks)]
        if bad:
            raise ProbeError(f"shared prefixes need layers 1..{len(self.blocks) - 1}, not {bad}")
        mixed = [L for L in self.layers if type(self.blocks[L - 1]) is not type(self.blocks[0])]
        if mixed:
            raise ProbeError(f"blocks 0 and {mixed[0] - 1} are of different classes: their outputs cannot stand in for each other")
        self.inputs: list[torch.Tensor] = []
        self.outputs: dict[int, list[Any]] = {L: [] for L in self.layers}

    @contextmanager
    def recording(self) -> Iterator["SharedPrefix"]:
        """Keep, for every forward run inside, the input of block 0 and the output of each block ``L - 1``."""
        handles = [self.blocks[0].register_forward_pre_hook(
            lambda m, args, kwargs: self.inputs.append(_hidden(args, kwargs).detach().clone()), with_kwargs=True)]
        for L in self.layers:
            handles.append(self.blocks[L - 1].register_forward_hook(
                lambda m, args, out, L=L: self.outputs[L].append(_detached(out))))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def replaying(self, layer: int, copies: int = 1) -> Iterator["SharedPrefix"]:
        """Blocks ``0..layer-1`` skipped: the ``i``-th forward inside gets the ``i``-th recorded
        output of block ``layer - 1``; its block-0 input must equal the ``i``-th recorded one
        (:class:`ProbeError` otherwise: other batches, or an edit in front of ``layer``).
        ``copies``: the forwards run each recorded batch repeated that many times along the batch
        axis (``batch.repeat(copies, 1)``: one copy per edit, rows of a batch do not mix), and get
        the recorded values repeated so."""
        if layer not in self.outputs:
            raise ProbeError(f"no prefix recorded for layer {layer}; recorded: {self.layers}")
        if copies < 1:
            raise ProbeError(f"copies must be at least 1, got {copies}")
        outputs, state = self.outputs[layer], {"i": -1, "out": None}

        def first(*args: Any, **kwargs: Any) -> Any:
            i = state["i"] = state["i"] + 1
            if i >= len(outputs):
                raise ProbeError(f"forward {i + 1} replays a shared prefix, but only {len(outputs)} were recorded")
            if not torch.equal(_hidden(args, kwargs), _repeated(self.inputs[i], copies)):
                raise ProbeError(f"forward {i + 1}: the input of block 0 is not the recorded one (other batches, "
                                 "another order, other copies, or an edit in front of the shared layer)")
            # a copy: block ``layer`` may write into its input
            state["out"] = _detached(outputs[i]) if copies == 1 else _repeated(outputs[i], copies)
            return state["out"]

        def rest(*args: Any, **kwargs: Any) -> Any:
            return state["out"]

        with ExitStack() as stack:
            for index in range(layer):
                stack.enter_context(_forward_replaced(self.blocks[index], first if index == 0 else rest))
            yield self


def _repeated(value: Any, copies: int) -> Any:
    """``value`` (a tensor, or a tuple of them, batch first) repeated ``copies`` times along the batch
    axis, as new tensors; 0-d tensors and other values as they are."""
    if isinstance(value, torch.Tensor):
        return value.repeat(copies, *[1] * (value.dim() - 1)) if value.dim() else value
    if isinstance(value, tuple):
        return tuple(_repeated(v, copies) for v in value)
    return value


def _detached(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, tuple):
        return tuple(_detached(o) for o in out)
    return out


@contextmanager
def _forward_replaced(module: nn.Module, forward: Any) -> Iterator[None]:
    """``module.forward`` is ``forward`` inside (an instance attribute: ``module(...)`` still runs its hooks)."""
    had = "forward" in vars(module)
    old = vars(module).get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had:
            module.forward = old
        else:
            del module.forward
