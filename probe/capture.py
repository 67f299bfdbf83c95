"""One capture API over named hook points, three backends.

>>> with capture(model, ["blocks.*.mlp.hook_post"], reduce=TopK(5)) as cap:
...     cap.run(input_ids)              # or call the model yourself (torch backend)
>>> cap["blocks.3.mlp.hook_post"].values

``reduce`` is one reducer (``cap[name]`` is its result) or a dict of them (``cap[name][key]``);
each hook point gets its own fresh copy. Backends:

- ``"torch"`` (default): PyTorch forward hooks on the HF modules; the fastest.
- ``"transformer_lens"``: hooks on a TransformerLens ``TransformerBridge``. Pass a bridge as
  ``model``, or an HF model, which is deep-copied first because the bridge edits its model.
- ``"nnsight"``: one ``model.trace`` per :meth:`Capture.run`; the reducers run inside the trace
  (:func:`probe.backends.nnsight_reduce`), so only their states leave it. ``remote=True`` runs
  the trace on NDIF (``model`` from :func:`probe.models.load_remote`), ``remote="local"`` runs
  nnsight's offline simulation of that path (serialize, deserialize, run here).

Several captures on one model are fed by one forward pass with :func:`run_all` (the torch
backends: calling the model feeds every open capture; nnsight: one trace for all of them).
Hooks are removed when the block exits, also on exceptions and Ctrl-C.

Models spread over devices (``load_model(..., device_map="auto")``): every hook point has its
own reducers, which keep their state on the device of that point's tensor; only results move to
the CPU. The input ids go to the device of the first parameter (the CPU when that is ``meta``,
i.e. offloaded: accelerate's hooks move them), and the padding mask handed to reducers stays on
the CPU, which indexes a tensor on any device.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from probe.arch import first_position_id, input_device
from probe.backends import check_backend
from probe.errors import EmptyInputError, ProbeError
from probe.hookpoints import HookPoint, record_shapes, resolve
from probe.reducers import Batch, Full, Reducer



class Capture:
    """Reducers fed from hook points while the context is open. Create with :func:`capture`."""

    def __init__(
        self,
        model: nn.Module,
        points: str | Iterable[str],
        reduce: Reducer | Mapping[str, Reducer],
        backend: str = "torch",
        remote: bool | str = False,
    ) -> None:
        backend, remote = check_backend(backend, remote)
        self.backend = backend
        self.remote = remote
        self.runner: Any = model
        if backend == "transformer_lens":
            from probe.backends import as_bridge

            self.runner = as_bridge(model)
            model = self.runner.original_model
        elif backend == "nnsight":
            from probe.backends import as_nnsight

            self.runner = as_nnsight(model, remote)
            model = self.runner._module
        self.model = model
        self.points: list[HookPoint] = resolve(model, points)
        self._single = isinstance(reduce, Reducer)
        protos = {"": reduce} if isinstance(reduce, Reducer) else dict(reduce)
        self.reducers: dict[str, dict[str, Reducer]] = {
            p.name: {key: r.fresh() for key, r in protos.items()} for p in self.points
        }
        self._handles: list[Any] = []
        self._open = False
        self._batch = Batch()
        self.n_sequences = 0

    # --- context -------------------------------------------------------------------------
    def __enter__(self) -> "Capture":
        self._open = True
        if self.backend == "nnsight":  # the trace feeds the reducers itself
            return self
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._record_inputs, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._advance))
            self._handles.extend(record_shapes(self.points))
            if self.backend == "torch":
                for point in self.points:
                    self._handles.append(_register(point, self._feeder(point)))
            elif self.backend == "transformer_lens":
                for point in self.points:
                    hook = self.runner.hook_dict[point.name]
                    hook.add_hook(self._tl_feeder(point))
                    self._handles.append(_TLHandle(hook))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        self._open = False
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()

    # --- running -------------------------------------------------------------------------
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """One forward pass over ``input_ids`` ``(batch, position)`` feeding every reducer."""
        run_all([self], input_ids, attention_mask)

    # --- results -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [p.name for p in self.points]

    def __getitem__(self, name: str) -> Any:
        if name not in self.reducers:
            raise KeyError(f"{name!r} was not captured; captured: {', '.join(self.names)}")
        results = {key: r.result() for key, r in self.reducers[name].items()}
        return results[""] if self._single else results

    @property
    def results(self) -> dict[str, Any]:
        return {name: self[name] for name in self.names}

    # --- plumbing ------------------------------------------------------------------------
    def _record_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.dtype in (torch.int64, torch.int32):
            self._batch = Batch(ids, self.n_sequences, _token_mask(mask, ids))
        else:
            self._batch = Batch(None, self.n_sequences, None)

    def _advance(self, module: nn.Module, args: tuple, output: Any) -> None:
        tokens = self._batch.tokens
        self.n_sequences += tokens.shape[0] if tokens is not None else _batch_size(output)

    def _feed(self, point: HookPoint, tensor: torch.Tensor) -> None:
        for reducer in self.reducers[point.name].values():
            reducer.update(tensor, self._batch)

    def _feeder(self, point: HookPoint) -> Callable[..., None]:
        if point.side == "input":
            return lambda module, args, kwargs: self._feed(point, point.get((args, kwargs)))
        return lambda module, args, output: self._feed(point, point.get(output))

    def _tl_feeder(self, point: HookPoint) -> Callable[..., None]:
        def hook(tensor: torch.Tensor, hook: Any) -> None:
            if point.half is not None:
                tensor = tensor.chunk(2, dim=-1)[point.half]
            self._feed(point, tensor)

        return hook


def capture(
    model: nn.Module,
    points: str | Iterable[str],
    reduce: Reducer | Mapping[str, Reducer],
    backend: str = "torch",
    remote: bool | str = False,
) -> Capture:
    """Capture ``points`` (names or globs, see :mod:`probe.hookpoints`) of ``model`` through
    ``reduce``; use as a context manager. ``remote`` (``True``: NDIF, ``"local"``: offline
    simulation) needs ``backend="nnsight"``."""
    return Capture(model, points, reduce, backend, remote)


def one_sequence(model: nn.Module, ids: Any, points: Sequence[str], dtype: torch.dtype | None = None,
                 backend: str = "torch", remote: bool | str = False) -> dict[str, torch.Tensor]:
    """Full tensors of ``points`` for one sequence of token ids (``(seq,)`` or ``(1, seq)``), the
    batch axis dropped: one forward pass (:class:`probe.reducers.Full`, cast to ``dtype``)."""
    with capture(model, list(points), reduce=Full(dtype), backend=backend, remote=remote) as cap:
        cap.run(torch.as_tensor(ids).reshape(1, -1))
    return {p: cap[p][0] for p in points}


@torch.no_grad()
def run_all(captures: Sequence[Capture], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
    """One forward pass over ``input_ids`` ``(batch, position)`` feeding every reducer of every
    capture in ``captures`` (open, on the same model, same backend)."""
    first = captures[0]
    for cap in captures:
        if not cap._open:
            raise ProbeError("Capture.run must be called inside the `with capture(...)` block")
        if (cap.backend, cap.remote) != (first.backend, first.remote) or cap.runner is not first.runner \
                or cap.model is not first.model:
            raise ProbeError("run_all needs captures of one model with one backend; for nnsight, wrap the model "
                             "once (probe.backends.as_nnsight) and capture that")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.numel() == 0:
        raise EmptyInputError("no tokens to run: the input is empty")
    device = torch.device("cpu") if first.remote else input_device(first.model)
    input_ids = input_ids.to(device)
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(device)}
    positions = left_pad_positions(attention_mask) if attention_mask is not None else None
    if positions is not None:
        kwargs["position_ids"] = (positions + first_position_id(first.model)).to(device)
    if first.backend != "nnsight":
        first.runner(input_ids, **kwargs)
        return
    from probe.backends import nnsight_reduce

    mask = _token_mask(attention_mask, input_ids)
    feeds = [(p, list(cap.reducers[p.name].values()), Batch(input_ids, cap.n_sequences, mask))
             for cap in captures for p in cap.points]
    feeds.sort(key=lambda feed: (feed[0].layer, feed[0].order))
    nnsight_reduce(first.runner, first.model, feeds, input_ids, kwargs, first.remote)
    for cap in captures:
        cap.n_sequences += input_ids.shape[0]


def left_pad_positions(mask: torch.Tensor) -> torch.Tensor | None:
    """``position_ids`` counting each left-padded row of ``mask`` ``(batch, position)`` from its
    first token, so the row computes what it would alone (as ``generate`` and nnsight's
    ``TransformersModel`` count; other rows keep ``0..T-1``); ``None`` when no row is left-padded
    and the model's own count is right. :func:`run_all` passes them for every backend."""
    mask = mask.long()
    counted = (mask.cumsum(-1) - 1).clamp(min=0)
    plain = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    left_padded = (mask.diff(dim=-1) >= 0).all(-1, keepdim=True)
    positions = torch.where(left_padded, counted, plain)
    return None if torch.equal(positions, plain) else positions


def _register(point: HookPoint, fn: Callable[..., None]) -> Any:
    if point.side == "input":
        return point.module.register_forward_pre_hook(fn, with_kwargs=True)
    return point.module.register_forward_hook(fn)


class _TLHandle:
    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def remove(self) -> None:
        self.hook.remove_hooks()


def _token_mask(mask: Any, ids: torch.Tensor) -> torch.Tensor | None:
    """Padding mask on the CPU: a CPU index works on tensors of every device (``device_map``)."""
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape and not bool(mask.all()):
        return mask.to("cpu", torch.bool)
    return None


def _batch_size(output: Any) -> int:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    return int(logits.shape[0]) if isinstance(logits, torch.Tensor) else 0
