"""Weights that accelerate offloads (``device_map`` with ``"cpu"`` or ``"disk"`` entries).

An offloaded module holds ``meta`` tensors; accelerate's ``AlignDevicesHook`` (on the module or
on an ancestor, e.g. its decoder layer) loads the weights before each forward pass and drops them
after. Reading such a weight, or editing it, must happen while it is loaded, and an edit must
outlive the reload of the next forward pass. :func:`held` does both: it loads the weights and
keeps them (the hook stops offloading) until the block exits, then lets the hook offload them
again. An edit made inside it is seen by every forward pass inside it; a restore written back
before it exits leaves the offloaded copy as it was (disk copies are never written).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn


def _offloading_hooks(module: nn.Module) -> list[Any]:
    """The accelerate hooks on ``module`` that offload its weights (none without accelerate)."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", [hook])  # a SequentialHook holds several
    return [h for h in hooks if h is not None and getattr(h, "offload", False)]


@contextmanager
def held(model: nn.Module, module: nn.Module) -> Iterator[None]:
    """The weights of ``module`` and its submodules loaded (on their execution device) and kept so
    while the block runs, where accelerate offloads them (through hooks on ``module``, an ancestor
    or a submodule); a no-op otherwise."""
    pinned: list[tuple[nn.Module, Any]] = []
    try:
        for owner in [*_ancestors(model, module), *list(module.modules())[1:]]:
            for hook in _offloading_hooks(owner):
                if not _on_meta(owner, hook):
                    continue  # loaded right now: inside its own forward pass, which offloads it after
                hook.pre_forward(owner)  # loads the weights from the offload map
                hook.offload = False  # ... and keeps them through the forward passes inside the block
                pinned.append((owner, hook))
        yield
    finally:
        for owner, hook in reversed(pinned):
            hook.offload = True
            hook.post_forward(owner, None)  # back to meta


def _on_meta(owner: nn.Module, hook: Any) -> bool:
    """Whether the weights that ``hook`` manages on ``owner`` are offloaded now."""
    recurse = bool(getattr(hook, "place_submodules", False))
    return any(p.device.type == "meta" for p in owner.parameters(recurse=recurse))


def _ancestors(model: nn.Module, module: nn.Module) -> list[nn.Module]:
    """``model``, the modules on the way down to ``module``, and ``module`` itself."""
    for name, candidate in model.named_modules():
        if candidate is module:
            chain, node = [model], model
            for part in name.split(".") if name else []:
                node = getattr(node, part)
                chain.append(node)
            return chain
    return [module]
