"""Named hook points, spelled as in TransformerLens, resolved to HF modules by the adapter.

==================================  ============================================================
name                                tensor
==================================  ============================================================
``hook_embed``                      token embeddings (output of the input embedding)
``blocks.{l}.hook_resid_pre``       residual stream entering block ``l`` (input of the block)
``blocks.{l}.attn.hook_pattern``    attention probabilities (needs ``attn_implementation="eager"``)
``blocks.{l}.hook_attn_out``        output of the attention module
``blocks.{l}.hook_resid_mid``       residual stream between attention and FFN (input of ``ln2``;
                                    sequential blocks only)
``blocks.{l}.mlp.hook_pre``         FFN pre-activation: ``W_gate x`` (gated) or ``W_in x``
``blocks.{l}.mlp.hook_pre_linear``  ``W_up x`` (gated MLPs only)
``blocks.{l}.mlp.hook_post``        FFN intermediate state, the input of the down projection:
                                    ``act(W_gate x) * (W_up x)`` or ``act(W_in x)``
``blocks.{l}.mlp.hook_out``         output of the down projection (alias ``blocks.{l}.hook_mlp_out``)
``blocks.{l}.hook_resid_post``      residual stream leaving block ``l`` (output of the block;
                                    alias ``blocks.{l}.hook_out``)
``ln_final.hook_normalized``        output of the final norm (input of the unembedding)
==================================  ============================================================

Patterns use shell globs (``blocks.*.mlp.hook_post``, ``blocks.1?.hook_resid_post``).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
from torch import nn

from probe import arch as archs
from probe.errors import HookPointError, LayerError

ALIASES = {"hook_out": "hook_resid_post", "hook_mlp_out": "mlp.hook_out"}

# (suffix, role, side, tuple item, which half of a fused gate/up output, forward order)
_BLOCK_POINTS: tuple[tuple[str, str, str, int | None, int | None, int], ...] = (
    ("hook_resid_pre", "", "input", None, None, 0),
    ("attn.hook_pattern", "attn", "output", 1, None, 1),
    ("hook_attn_out", "attn", "output", 0, None, 2),
    ("hook_resid_mid", "ln2", "input", None, None, 3),
    ("mlp.hook_pre", "gate", "output", None, 0, 4),
    ("mlp.hook_pre_linear", "up", "output", None, 1, 5),
    ("mlp.hook_post", "down", "input", None, None, 6),
    ("mlp.hook_out", "down", "output", None, None, 7),
    ("hook_resid_post", "", "output", 0, None, 8),
)


@dataclass(frozen=True)
class HookPoint:
    """Where a named tensor lives: the module, whether it is that module's input or output,
    the item of a tuple output, and for fused gate/up projections which half of the last dim."""

    name: str
    module: nn.Module
    side: Literal["input", "output"]
    item: int | None
    half: int | None
    layer: int
    order: int
    flat_block: nn.Module | None = None  # the block whose input shape undoes a flattening (OPT's FFN)

    def get(self, value: Any) -> torch.Tensor:
        """The tensor inside a module's ``(args, kwargs)`` (input side) or its output."""
        if self.side == "input":
            args, kwargs = value
            return self._unflatten(args[0] if args else kwargs["hidden_states"])
        tensor = value[self.item or 0] if isinstance(value, (tuple, list)) else value
        if tensor is None:
            raise HookPointError(
                f"{self.name} produced no tensor; attention patterns need "
                "load_model(..., attn_implementation='eager')"
            )
        if self.half is not None:
            tensor = tensor.chunk(2, dim=-1)[self.half]
        return self._unflatten(tensor)

    def put(self, value: Any, tensor: torch.Tensor) -> Any:
        """``value`` with the tensor replaced (the inverse of :meth:`get`)."""
        if self.half is not None:
            raise HookPointError(f"{self.name} is half of a fused projection and cannot be replaced")
        if self.side == "input":
            args, kwargs = value
            if args:
                return (self._flatten_like(tensor, args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self._flatten_like(tensor, kwargs["hidden_states"])}
        if isinstance(value, tuple):
            item = self.item or 0
            return (*value[:item], self._flatten_like(tensor, value[item]), *value[item + 1 :])
        return self._flatten_like(tensor, value)

    def _unflatten(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(batch * position, d)`` back to ``(batch, position, d)`` inside a flattening block (OPT)."""
        lead = getattr(self.flat_block, _LEAD_SHAPE, None) if self.flat_block is not None else None
        if lead is not None and tensor.dim() == 2 and math.prod(lead) == tensor.shape[0]:
            return tensor.reshape(*lead, tensor.shape[-1])
        return tensor

    def _flatten_like(self, tensor: torch.Tensor, original: Any) -> torch.Tensor:
        if self.flat_block is not None and isinstance(original, torch.Tensor) and original.dim() == 2 and tensor.dim() == 3:
            return tensor.reshape(original.shape[0], tensor.shape[-1])
        return tensor


def _canonical(name: str) -> str:
    """Expand a block-level alias (``blocks.{l}.hook_out``); ``blocks.{l}.mlp.hook_out`` is no alias."""
    prefix, _, last = name.rpartition(".")
    if last in ALIASES and re.fullmatch(r"blocks\.[^.]+", prefix):
        return f"{prefix}.{ALIASES[last]}"
    return name


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of ``model`` in forward order, keyed by name."""
    arch = archs.arch_for(model)
    layers = archs.decoder_layers(model, arch)
    points = [HookPoint("hook_embed", model.get_input_embeddings(), "output", None, None, -1, 0)]
    for index, block in enumerate(layers):
        for suffix, role, side, item, half, order in _BLOCK_POINTS:
            module = _role_module(block, arch, role, half)
            if module is None:
                continue
            half_used = half if arch.fused_gate_up and role in ("gate", "up") else None
            flat = block if arch.flat_ffn and role in _FLAT_ROLES else None
            points.append(HookPoint(f"blocks.{index}.{suffix}", module, side, item, half_used, index, order, flat))
    try:
        norm = archs.final_norm(model, arch)
        points.append(HookPoint("ln_final.hook_normalized", norm, "output", None, None, len(layers), 0))
    except Exception:
        pass
    return {p.name: p for p in points}


_FLAT_ROLES = ("ln2", "gate", "up", "down")
_LEAD_SHAPE = "_probe_lead_shape"


def record_shapes(points: Iterable[HookPoint]) -> list[Any]:
    """Register, for each flattening block among ``points`` (OPT), a pre-hook that remembers its
    input shape so :meth:`HookPoint.get` can unflatten; returns the handles to remove."""
    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            setattr(module, _LEAD_SHAPE, tuple(hidden.shape[:-1]))

    blocks = {id(p.flat_block): p.flat_block for p in points if p.flat_block is not None}
    return [block.register_forward_pre_hook(record, with_kwargs=True) for block in blocks.values()]


def _role_module(block: nn.Module, arch: archs.Arch, role: str, half: int | None) -> nn.Module | None:
    if role == "":
        return block
    if role == "ln2" and not arch.sequential:
        return None
    if arch.fused_gate_up and role in ("gate", "up"):
        return archs.get_path(block, arch.up)
    if role == "gate" and arch.gate is None:
        role = "up"  # non-gated: hook_pre is W_in x
    elif role == "up" and arch.gate is None:
        return None  # non-gated: no hook_pre_linear
    try:
        return archs.get_path(block, getattr(arch, role))
    except AttributeError:
        return None


def resolve(model: nn.Module, patterns: str | Iterable[str]) -> list[HookPoint]:
    """Hook points matching ``patterns`` (names or globs), deduplicated, in forward order.

    Raises :class:`LayerError` for a block index past the last layer and :class:`HookPointError`
    for a name or pattern that matches nothing.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    available = hook_points(model)
    n = archs.n_layers(model)
    chosen: dict[str, HookPoint] = {}
    for raw in patterns:
        pattern = _canonical(raw)
        match = re.match(r"blocks\.(\d+)\.", pattern)
        if match and int(match.group(1)) >= n:
            raise LayerError(f"{raw!r}: layer {match.group(1)} is out of range, the model has {n} layers (0..{n - 1})")
        hits = [name for name in available if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            examples = ", ".join(sorted({re.sub(r"blocks\.\d+\.", "blocks.{l}.", k) for k in available}))
            raise HookPointError(f"no hook point matches {raw!r}; available: {examples}")
        for name in hits:
            chosen[name] = available[name]
    return sorted(chosen.values(), key=lambda p: (p.layer, p.order))
