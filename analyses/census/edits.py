"""Single-weight ablations of ``W_down`` as activation edits, many per forward pass.

Zeroing ``W_down[d, n]`` of layer ``L`` changes one number per token: output ``d`` of that
layer's down projection, ``y_d(t) = sum_k W[d, k] h_k(t) + b_d``, by ``-W[d, n] h_n(t)``. So it runs
as an edit of ``blocks.{L}.mlp.hook_out``, no weight touched (:func:`zeroed_output`)::

    y_d(t) <- y_d(t) - W[d, n] * h_n(t)        for every t not in ``held``

``held`` positions keep the original ``y_d`` (Yu et al. 2024, §3, "restore the super activation":
the weight is gone but its massive activation at the carrier is held).

**Exactness.** The subtraction is not the matmul without the term (the weight edit sums ``k != n``
in the kernel's order, the subtraction rounds the full sum first): on SmolLM2 (CPU, float32) the
per-window NLL sums differ from a weight edit's by up to ``8e-5`` (about ``2.5e-6`` nats per token,
a few percent of a typical control's effect). So by default (``exact=True``, :func:`recomputed`)
each copy's down projection is recomputed by the module's own ``forward`` on that copy's rows,
with the one weight zeroed in place for that call and restored at once: the same kernel on the
same shapes as a weight-edited forward, bit-identical to it on CPU float32 (every family in
``tests/families.py`` and SmolLM2), at the price of one more down projection of layer ``L`` per
forward. Rows of one batch do not mix, so one forward of the evaluation windows repeated ``k``
times along the batch axis, copy ``c`` carrying edit ``c``, serves ``k`` edits; on this CPU a copy's
numbers equal a forward of the windows alone bit for bit (other kernels, e.g. on a GPU, may pick
another blocking for another batch size and change the last bits).

**Shared prefix.** Blocks ``0..L-1`` compute the same thing for every edit of layer ``L``: the
baseline forwards record their output (:class:`probe.prefix.SharedPrefix`) and the edited forwards
replay it, repeated ``k`` times (``SharedPrefix.replaying(L, copies=k)``), so they run blocks ``L..`` and the
head only.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from analyses.evaluate.likelihood import token_nll
from probe.arch import arch_for, input_device
from probe.hookpoints import record_shapes, resolve
from probe.prefix import SharedPrefix, can_share


@dataclass(frozen=True)
class Zeroed:
    """``W_down[row, col]`` of ``layer`` (its value ``value``) set to zero, as an activation edit;
    ``held``: positions where output ``row`` keeps its original value."""

    layer: int
    row: int
    col: int
    value: float
    held: tuple[int, ...] = ()


def zeroed_output(h: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                  held: torch.Tensor) -> torch.Tensor:
    """``y`` ``(batch, position, d_model)`` with, in each batch row ``b``, ``y[b, t, rows[b]] -=
    values[b] * h[b, t, cols[b]]`` where ``held[b, t]`` is ``False`` (``h``: the down projection's input)."""
    b = torch.arange(y.shape[0], device=y.device)[:, None]
    t = torch.arange(y.shape[1], device=y.device)[None, :]
    d, n = rows.to(y.device)[:, None], cols.to(y.device)[:, None]
    change = (values.to(y)[:, None] * h[b, t, n].to(y)).masked_fill(held.to(y.device), 0)
    out = y.clone()
    out[b, t, d] = y[b, t, d] - change
    return out


def recomputed(module: nn.Module, h: torch.Tensor, y: torch.Tensor, edits: Sequence[Zeroed], held: torch.Tensor,
               flat: bool, transposed: bool) -> torch.Tensor:
    """``y`` with each copy ``c`` (``len(y) // len(edits)`` rows each) recomputed by ``module.forward``
    (no hooks) while ``W_down[row, col]`` of edit ``c`` is zero in place (restored bit-exactly at
    once, also on errors); output ``row`` is taken from it where ``held`` is ``False``. ``flat``:
    the module takes ``(rows * position, d)`` (OPT); ``transposed``: its weight is stored ``in x out`` (GPT-2)."""
    per = y.shape[0] // len(edits)
    stored = module.weight.data.T if transposed else module.weight.data
    out = y.clone()
    for c, e in enumerate(edits):
        rows = slice(c * per, (c + 1) * per)
        part = h[rows].reshape(-1, h.shape[-1]) if flat else h[rows]
        keep = stored[e.row, e.col].clone()
        try:
            stored[e.row, e.col] = 0
            new = module.forward(part).reshape(out[rows].shape)
        finally:
            stored[e.row, e.col] = keep
        out[rows, :, e.row] = torch.where(held[rows].to(out.device), y[rows, :, e.row], new[..., e.row])
    return out


@contextmanager
def editing(model: nn.Module, edits: Sequence[Zeroed], copies_of: int, seq_len: int, exact: bool = False) -> Iterator[None]:
    """While open, forwards of ``len(edits) * copies_of`` rows apply edit ``c`` to rows
    ``c * copies_of .. (c + 1) * copies_of - 1`` (all edits of one layer); ``exact``: by
    :func:`recomputed`, else by :func:`zeroed_output`."""
    (layer,) = {e.layer for e in edits}
    post, out = resolve(model, [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.mlp.hook_out"])
    per_row = [e for e in edits for _ in range(copies_of)]
    rows = torch.tensor([e.row for e in per_row])
    cols = torch.tensor([e.col for e in per_row])
    values = torch.tensor([e.value for e in per_row], dtype=torch.float64)
    held = torch.zeros(len(per_row), seq_len, dtype=torch.bool)
    for i, e in enumerate(per_row):
        held[i, [p for p in e.held if p < seq_len]] = True

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        h, y = post.get((args, kwargs)), out.get(output)
        if exact:
            y = recomputed(module, h, y, edits, held, post.flat_block is not None, arch_for(model).conv1d)
        else:
            y = zeroed_output(h, y, rows, cols, values, held)
        return out.put(output, y)

    handles = [*record_shapes([post, out]), out.module.register_forward_hook(hook, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class WindowLosses:
    """Per-window summed NLL of ``windows`` ``(E, T)`` (:func:`analyses.evaluate.likelihood.token_nll`)
    for the model as it is and with single-weight edits; ``rows`` = rows per forward (``k`` edits
    share a forward of ``k`` copies of a batch of windows); ``share_prefix``, ``exact``: module docstring."""

    def __init__(self, model: nn.Module, windows: torch.Tensor, rows: int = 32, share_prefix: bool = True,
                 exact: bool = True) -> None:
        self.model = model
        self.exact = exact
        self.windows = windows.to(input_device(model))
        self.batch = max(1, min(rows, windows.shape[0]))
        self.copies = max(1, rows // self.batch)
        self.share = share_prefix and can_share(model)
        self.prefix: SharedPrefix | None = None
        self.forwards = 0

    @property
    def batches(self) -> list[torch.Tensor]:
        return list(torch.split(self.windows, self.batch))

    @torch.no_grad()
    def baseline(self, layers: Sequence[int] = ()) -> torch.Tensor:
        """``(E,)`` float64 sums of the unedited model; records the prefixes of ``layers`` (``>= 1``)."""
        shared = [L for L in layers if L >= 1] if self.share else []
        self.prefix = SharedPrefix(self.model, shared) if shared else None
        with self.prefix.recording() if self.prefix else nullcontext():
            sums = [self._sums(batch) for batch in self.batches]
        return torch.cat(sums)

    @torch.no_grad()
    def edited(self, edits: Sequence[Zeroed], progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """``(len(edits), E)`` float64 sums, edit by edit (all of one layer), ``self.copies`` per forward."""
        out = []
        for start in range(0, len(edits), self.copies):
            group = edits[start : start + self.copies]
            out.append(self._group(group))
            if progress:
                progress(len(group))
        return torch.cat(out) if out else torch.zeros(0, self.windows.shape[0], dtype=torch.float64)

    def _group(self, group: Sequence[Zeroed]) -> torch.Tensor:
        layer, k = group[0].layer, len(group)
        prefix = self.prefix
        with ExitStack() as stack:
            if prefix is not None and layer in prefix.layers:
                stack.enter_context(prefix.replaying(layer, copies=k))
            parts = []
            for batch in self.batches:
                with editing(self.model, group, batch.shape[0], batch.shape[1], self.exact):
                    parts.append(self._sums(batch.repeat(k, 1)).view(k, batch.shape[0]))
        return torch.cat(parts, dim=1)

    def _sums(self, batch: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return token_nll(self.model, batch).double().sum(-1).cpu()


def layer_groups(layers: Sequence[int], per_group: int) -> list[list[int]]:
    """``layers`` in groups of ``per_group``: one baseline pass records the prefixes of a group."""
    per_group = max(1, per_group)
    return [list(layers[i : i + per_group]) for i in range(0, len(layers), per_group)]

