"""Reversible, in-place edits of weights and of the residual stream, as context managers.

Weight targets are ``blocks.{l}.mlp.W_gate|W_up|W_in|W_down|W_out`` (``nn.Linear`` layout, see
:mod:`probe.arch`) or any parameter name from ``model.named_parameters()``. Only the touched
slice is copied aside (no model copy); it is written back bit-exactly when the block exits,
whether normally, by an exception or by Ctrl-C.

>>> with zero_rows(model, "blocks.3.mlp.W_up", [12, 99]), zero_rows(model, "blocks.3.mlp.W_gate", [12, 99]):
...     ...  # the model without two FFN neurons
>>> with zero_rows(model, "blocks.3.mlp.W_down", rows=[d], cols=[n]):
...     ...  # one weight (e.g. a super weight) set to zero
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from probe.arch import weight_view
from probe.errors import EditError
from probe.hookpoints import record_shapes, resolve
from probe.offload import held

_BLOCK_WEIGHT = re.compile(r"^blocks\.(-?\d+)\.mlp\.(W_\w+)$")


def matrix(model: nn.Module, target: str) -> torch.Tensor:
    """The matrix named ``target`` as a view into the model's storage (2-D: rows x cols)."""
    match = _BLOCK_WEIGHT.match(target)
    if match:
        return weight_view(model, int(match.group(1)), match.group(2)).matrix
    params = dict(model.named_parameters())
    if target not in params:
        raise EditError(f"unknown weight {target!r}; use blocks.{{l}}.mlp.W_up/W_gate/W_down or a parameter name")
    data = params[target].data
    return data if data.dim() == 2 else data.reshape(data.shape[0], -1)


def _index(m: torch.Tensor, rows: Sequence[int] | None, cols: Sequence[int] | None, target: str) -> tuple:
    def check(ix: Sequence[int] | None, size: int, what: str) -> torch.Tensor | slice:
        if ix is None:
            return slice(None)
        t = torch.as_tensor(list(ix), dtype=torch.long)
        if t.numel() and (int(t.max()) >= size or int(t.min()) < -size):
            raise EditError(f"{target}: {what} {t.tolist()} out of range 0..{size - 1}")
        return t.to(m.device)

    r, c = check(rows, m.shape[0], "rows"), check(cols, m.shape[1], "cols")
    if isinstance(r, torch.Tensor) and isinstance(c, torch.Tensor):
        return (r[:, None], c[None, :])
    return (r, c)


@contextmanager
def edit_weight(
    model: nn.Module,
    target: str,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rows: Sequence[int] | None = None,
    cols: Sequence[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Set ``target[rows, cols] = fn(selected, whole_matrix)`` for the block; restore bit-exactly after.

    ``rows``/``cols`` of ``None`` mean all. Yields the edited matrix view. A matrix that accelerate
    offloads is held loaded meanwhile (:func:`probe.offload.held`), so the edit reaches every
    forward pass inside the block.
    """
    _index(matrix(model, target), rows, cols, target)  # check before loading anything
    with held(model, _owner(model, target)):
        m = matrix(model, target)
        index = _index(m, rows, cols, target)
        saved = m[index].clone()
        try:
            with torch.no_grad():
                m[index] = fn(m[index], m).to(m.dtype)
            yield m
        finally:
            with torch.no_grad():
                m[index] = saved


def _owner(model: nn.Module, target: str) -> nn.Module:
    """The module holding the matrix named ``target``."""
    match = _BLOCK_WEIGHT.match(target)
    if match:
        return weight_view(model, int(match.group(1)), match.group(2)).module
    return model.get_submodule(target.rpartition(".")[0])


def zero_rows(model: nn.Module, target: str, rows: Sequence[int], cols: Sequence[int] | None = None):
    """Zero ``target[rows]`` (or the entries ``rows x cols``)."""
    return edit_weight(model, target, lambda sel, m: torch.zeros_like(sel), rows, cols)


def keep_rows(model: nn.Module, target: str, rows: Sequence[int]):
    """Zero every row of ``target`` except ``rows`` (House of Cards' "keep only massive weights")."""
    m = matrix(model, target)
    _index(m, rows, None, target)
    keep = set(int(r) % m.shape[0] for r in rows)
    others = [r for r in range(m.shape[0]) if r not in keep]
    return edit_weight(model, target, lambda sel, m: torch.zeros_like(sel), others)


def scale(model: nn.Module, target: str, rows: Sequence[int] | None, factor: float, cols: Sequence[int] | None = None):
    """Multiply ``target[rows, cols]`` by ``factor``."""
    return edit_weight(model, target, lambda sel, m: sel * factor, rows, cols)


def set_mean(model: nn.Module, target: str, rows: Sequence[int]):
    """Replace ``target[rows]`` by the mean row of the whole matrix."""
    return edit_weight(model, target, lambda sel, m: m.mean(0, keepdim=True).expand_as(sel), rows)


@contextmanager
def edit_residual(
    model: nn.Module,
    point: str,
    positions: Sequence[int] | None,
    dims: Sequence[int] | None,
    value: float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] = 0.0,
) -> Iterator[None]:
    """While the block runs, set the tensor at hook point ``point`` (e.g.
    ``blocks.2.hook_resid_post``) at ``[:, positions, dims]`` to ``value`` (a number, a tensor
    broadcastable to ``(batch, len(positions), len(dims))``, or a function of the selected values).
    ``None`` selects every position or dim. The hook is removed on exit, also on errors."""
    (hp,) = resolve(model, [point]) if "*" not in point else (None,)
    if hp is None:
        raise EditError(f"edit_residual needs one hook point, not a pattern: {point!r}")

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        pos = slice(None) if positions is None else torch.as_tensor(list(positions), device=tensor.device)
        dim = slice(None) if dims is None else torch.as_tensor(list(dims), device=tensor.device)
        ix = (slice(None), pos[:, None], dim[None, :]) if positions is not None and dims is not None else (slice(None), pos, dim)
        if positions is not None and max(positions) >= tensor.shape[1]:
            raise EditError(f"{point}: position {max(positions)} beyond the sequence length {tensor.shape[1]}")
        if dims is not None and max(dims) >= tensor.shape[-1]:
            raise EditError(f"{point}: dim {max(dims)} beyond the width {tensor.shape[-1]}")
        out = tensor.clone()
        new = value(out[ix]) if callable(value) else value
        out[ix] = torch.as_tensor(new, dtype=out.dtype, device=out.device) if not isinstance(new, torch.Tensor) else new.to(out)
        return out

    handles = record_shapes([hp])
    if hp.side == "input":
        handle = hp.module.register_forward_pre_hook(
            lambda m, args, kwargs: hp.put((args, kwargs), apply(hp.get((args, kwargs)))), with_kwargs=True
        )
    else:
        handle = hp.module.register_forward_hook(lambda m, args, out: hp.put(out, apply(hp.get(out))))
    try:
        yield
    finally:
        for h in [handle, *handles]:
            h.remove()
