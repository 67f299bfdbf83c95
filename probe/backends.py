"""Adapters to the TransformerLens and nnsight engines used by :mod:`probe.capture`.

TransformerLens 4 has no ``HookedTransformer``; it wraps an already loaded HF model in a
``TransformerBridge`` whose hook names match ours. The bridge switches attention to eager and
edits its model in place, so it always gets a copy.

nnsight wraps the HF model and records module inputs/outputs inside ``model.trace``; trace
bodies must live in a real file (this one). The reducers run *inside* the trace
(:func:`nnsight_reduce`), so only their small states leave it. That is what makes remote
execution on NDIF (``remote=True``) cheap: the request ships the reducers (with the state of
earlier batches), the server runs the forward pass and each reducer's ``update`` next to the
activations, and sends back the reducers' states (a reducer's state is its instance
attributes, see :mod:`probe.reducers`), never ``layers x tokens x d`` activations.
The state travels both ways on every request (small for TopK, MaxMedian, DimMax, Exceed;
:class:`~probe.reducers.Full` is the whole tensor, so give it one run), and goes back to the
device it lived on (:data:`_PLACES`), since a remote result arrives on the CPU.
``remote="local"`` is nnsight's offline simulation of the same path: the request is serialized
as for NDIF, deserialized and run here. Our own code reaches the server by value: the packages
``probe`` (and ``analyses`` for functions defined there) are registered with cloudpickle for the
duration of a remote trace, so NDIF does not need them installed.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import sys
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from probe.arch import input_device
from probe.errors import ProbeError
from probe.hookpoints import HookPoint
from probe.reducers import Batch, Reducer

BACKENDS = ("torch", "transformer_lens", "nnsight")
REMOTE_MODES = (False, True, "local")


def as_bridge(model: Any) -> Any:
    """``model`` itself if it is a ``TransformerBridge``, else a bridge over a deep copy of it."""
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return model
    hf = copy.deepcopy(model)
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf, tokenizer=None, device=str(input_device(model)), dtype=next(model.parameters()).dtype
    )
    return bridge


def check_backend(backend: str, remote: bool | str | None = False,
                  allowed: Sequence[str] = BACKENDS) -> tuple[str, bool | str]:
    """``(backend, remote)`` checked and normalised once, where a run enters the library (the CLI
    relies on it): ``backend`` one of ``allowed``, ``remote`` through :func:`check_remote`, and a
    remote run only through ``nnsight``."""
    if backend not in allowed:
        raise ProbeError(f"unknown backend {backend!r}; choose one of {', '.join(allowed)}")
    remote = check_remote(remote)
    if remote and backend != "nnsight":
        raise ProbeError(f"remote={remote!r} needs backend='nnsight' (got {backend!r})")
    return backend, remote


def check_remote(remote: bool | str | None) -> bool | str:
    """``remote`` normalised: ``False`` (also ``None``), ``True`` (also ``"ndif"``), ``"local"`` or an
    NDIF host URL; anything else is a :class:`ProbeError`."""
    remote = {None: False, "ndif": True}.get(remote, remote) if not isinstance(remote, bool) else remote
    if remote in REMOTE_MODES or (isinstance(remote, str) and remote.startswith(("http://", "https://"))):
        return remote
    raise ProbeError(f"remote must be False, True (NDIF), 'local' (offline simulation) or a host URL, got {remote!r}")


def as_nnsight(model: Any, remote: bool | str = False, tokenizer: Any = None) -> Any:
    """An nnsight model for ``model``: itself if it already is one, else a wrapper around it.

    Local runs (``remote=False``) wrap in ``nnsight.NNsight``. Remote runs need a wrapper that
    nnsight can name to a server (``Remotable``): ``remote="local"`` wraps a loaded HF model in
    ``TransformersModel`` (plain ``NNsight`` has no remote path: its ``trace`` would hand
    ``remote=`` to the model's forward, which ignores it); ``remote=True`` needs a model the
    server has, e.g. :func:`probe.models.load_remote` (``TransformersModel(repo_id)``, weights
    not downloaded). ``TransformersModel`` builds a ``transformers`` pipeline, which needs a
    ``tokenizer`` (default: loaded from ``model.name_or_path``); traces here pass token ids.
    """
    from nnsight.intervention.envoy import Envoy
    from nnsight.modeling.mixins.remotable import Remotable

    check_remote(remote)
    if isinstance(model, Envoy):
        if remote and not isinstance(model, Remotable):
            raise ProbeError(
                f"remote={remote!r} needs an nnsight model with a remote identity (TransformersModel), "
                f"not {type(model).__name__}; use probe.models.load_remote(repo_id) or pass the HF model itself"
            )
        return model
    if remote is True or (isinstance(remote, str) and remote != "local"):
        raise ProbeError(
            "remote=True runs NDIF's copy of a hub model: pass probe.models.load_remote('org/name') "
            "(an nnsight TransformersModel) instead of a loaded HF model; remote='local' simulates it offline"
        )
    if remote == "local":
        from nnsight.modeling.transformers import TransformersModel

        # the pipeline edits its tokenizer (pad token, left padding): give it its own
        tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else getattr(model, "name_or_path", None) or None
        try:
            return TransformersModel(model, task="text-generation", tokenizer=tokenizer)
        except Exception as exc:  # transformers raises a bare Exception when it finds no tokenizer
            raise ProbeError(
                f"remote='local' wraps the model in nnsight's TransformersModel, which failed ({exc}); pass "
                "as_nnsight(model, 'local', tokenizer=...) as the model"
            ) from exc
    from nnsight import NNsight

    return NNsight(model)


def hf_module(model: Any) -> nn.Module:
    """The ``torch`` module behind ``model`` (an nnsight model's ``_module``, else ``model``)."""
    envoy = sys.modules.get("nnsight.intervention.envoy")  # not imported: cannot be an nnsight model
    return model._module if envoy is not None and isinstance(model, envoy.Envoy) else model


def module_paths(model: nn.Module) -> dict[int, str]:
    """``id(module) -> dotted path`` for every submodule of ``model``."""
    return {id(m): name for name, m in model.named_modules()}


@contextmanager
def shipped(*packages: str) -> Iterator[None]:
    """Register ``packages`` (top-level names) with cloudpickle for serialization by value while
    the block runs, so code from them reaches an NDIF server that does not have them installed."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    added = [p for p in dict.fromkeys(packages) if p not in _PICKLE_BY_VALUE_MODULES]
    _PICKLE_BY_VALUE_MODULES.update(added)
    try:
        yield
    finally:
        _PICKLE_BY_VALUE_MODULES.difference_update(added)


def envoy_at(wrapped: Any, path: str) -> Any:
    """The envoy of ``wrapped`` at the dotted module ``path`` (``""``: ``wrapped`` itself). A
    submodule named like an nnsight attribute (BERT's ``output``) is served as ``E_output``."""
    from nnsight.intervention.envoy import Envoy

    envoy = wrapped
    for part in path.split(".") if path else []:
        served = inspect.isdatadescriptor(getattr(Envoy, part, None))
        envoy = getattr(envoy, Envoy.OVERLOAD_PREFIX + part if served else part)
    return envoy


def portable(point: HookPoint) -> HookPoint:
    """``point`` without its module references, so it pickles as plain data."""
    return dataclasses.replace(point, module=None, flat_block=None)  # type: ignore[arg-type]


def nnsight_reduce(
    wrapped: Any,
    root: nn.Module,
    feeds: Sequence[tuple[HookPoint, Sequence[Reducer], Batch]],
    input_ids: torch.Tensor,
    kwargs: dict[str, Any],
    remote: bool | str = False,
) -> None:
    """One ``wrapped.trace`` over ``input_ids``; inside it, each point's tensor goes through its
    reducers with its :class:`~probe.reducers.Batch` (``feeds`` in forward order; the points were
    resolved on ``root``, which may be the meta module a remote model had before it was loaded).
    Afterwards the reducers hold the updated state, also when the trace ran remotely (the states
    come back and are set on them)."""
    import nnsight

    paths = module_paths(root)
    lead = tuple(input_ids.shape)
    plan = [(paths[id(p.module)], portable(p), p.flat_block is not None, list(rs), b, [_PLACES.get(r, {}) for r in rs])
            for p, rs, b in feeds]
    options = {**kwargs, "remote": remote} if remote else kwargs
    states: list[list[tuple[dict[str, Any], dict[str, str]]]] = []
    packages = ["probe", *(type(r).__module__.split(".")[0] for _, rs, _ in feeds for r in rs)] if remote else []
    with shipped(*packages), torch.no_grad():  # the reducers' code too (e.g. from analyses)
        with wrapped.trace(input_ids, **options):
            for path, point, flat, reducers, batch, places in plan:
                envoy = envoy_at(wrapped, path)
                value = point.get(((envoy.input,), {})) if point.side == "input" else point.get(envoy.output)
                if flat and value.dim() == 2:  # OPT flattens (batch, position) inside the block
                    value = value.reshape(*lead, value.shape[-1])
                for reducer, place in zip(reducers, places):
                    _place(reducer, place, value.device)
                    reducer.update(value, batch)
            states = nnsight.save([[_state(r) for r in step[3]] for step in plan])
    for step, got in zip(plan, states):
        for reducer, (state, place) in zip(step[3], got):
            vars(reducer).update(state)
            _PLACES[reducer] = place


# Where each reducer's tensors lived after its last update inside a trace: "cpu", or "value" for
# the device of the point's tensor. A remote result comes back on the CPU; before the next
# update the state goes back where the reducer keeps it (the reducers never mix devices).
_PLACES: "weakref.WeakKeyDictionary[Reducer, dict[str, str]]" = weakref.WeakKeyDictionary()


def _state(reducer: Reducer) -> tuple[dict[str, Any], dict[str, str]]:
    """A reducer's state (its instance attributes) and where its tensors are."""
    state = dict(vars(reducer))
    place = {k: "cpu" if v.device.type == "cpu" else "value" for k, v in state.items() if isinstance(v, torch.Tensor)}
    return state, place


def _place(reducer: Reducer, place: dict[str, str], device: torch.device) -> None:
    """Put the reducer's tensors back where :func:`_state` found them (``device`` for "value")."""
    for key, where in place.items():
        setattr(reducer, key, getattr(reducer, key).to("cpu" if where == "cpu" else device))


def call_on_model(wrapped: Any, fn: Callable[..., Any], *args: Any, input_ids: torch.Tensor,
                 remote: bool | str = False) -> Any:
    """``fn(hf_model, *args)`` evaluated where the weights are: directly for a local model; for a
    remote one inside a trace of one token of ``input_ids`` (on NDIF, with the server's model), so
    only ``fn``'s (small) result comes back. ``fn`` and its package are shipped by value."""
    if not remote:
        with torch.no_grad():
            return fn(hf_module(wrapped), *args)
    import nnsight

    token = input_ids.reshape(-1)[:1].reshape(1, 1)
    result: Any = None
    with shipped("probe", fn.__module__.split(".")[0]), torch.no_grad():
        with wrapped.trace(token, remote=remote):
            result = nnsight.save(fn(wrapped._module, *args))
    return result
