"""MacDrop: massive-weights curriculum dropout for parameter-efficient fine-tuning.

House of Cards (arXiv 2410.01866, §5): while fine-tuning an adapter (LoRA/DoRA) on a frozen
pre-trained model, drop the top-k massive weights -- the rows of ``W_up`` and ``W_gate`` (``W_in``
when not gated) of the k massive neurons at the origin layer -- with probability ``p(t)`` that
decreases over training, so the adapter learns not to lean on them. At every optimiser step a
Bernoulli mask over the k rows is drawn; a dropped row is zeroed in both matrices (the same
neuron, no rescaling) for that step's forward and backward, then restored bit-exactly.

Schedules (``t`` the step, ``T`` the number of steps):

- ``step``: ``p(t) = p0 (1 - t/T)`` (linear decay to 0; the paper's default, p0 = 0.8);
- ``exp``: ``p(t) = p0 exp(-alpha t)``;
- ``constant``: ``p(t) = p0``; ``none``: ``p(t) = 0`` (plain fine-tuning, the baseline).

With DoRA (Liu et al. 2024, arXiv 2402.09353) a layer computes
``m * (W + dW) x / ||W + dW||_row``; zeroing a row of ``W`` would make that row's norm 0 at
initialisation (``dW = 0``) and the output 0/0. During a MacDrop step the DoRA norm is therefore
computed from the full pre-trained rows (it is a constant, detached, in DoRA as well), so a
dropped row contributes ``m_r (dW_r x) / ||W_r + dW_r||``: the pre-trained row is gone from the
output, not from the normalisation.

Use :class:`MacDrop` in a hand-written loop (``with drop.step(t): loss.backward()``) or
:class:`MacDropCallback` with the Hugging Face ``Trainer``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from probe.arch import arch_for, n_layers, unwrapped, weight_view
from probe.errors import LayerError, ProbeError

SCHEDULES = ("step", "exp", "constant", "none")


def schedule(kind: str, p0: float = 0.8, total_steps: int = 1, alpha: float = 0.01) -> Callable[[int], float]:
    """The drop probability ``p(t)`` of the module docstring, as a function of the step ``t``."""
    if kind not in SCHEDULES:
        raise ProbeError(f"unknown MacDrop schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0.0 <= p0 <= 1.0:
        raise ProbeError(f"p0 must lie in [0, 1], got {p0}")
    if total_steps < 1:
        raise ProbeError(f"total_steps must be at least 1, got {total_steps}")
    if kind == "step":
        return lambda t: p0 * max(0.0, 1.0 - t / total_steps)
    if kind == "exp":
        return lambda t: p0 * math.exp(-alpha * t)
    if kind == "constant":
        return lambda t: p0
    return lambda t: 0.0


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself). The adapters are
    injected in it, so its forward is the adapted model's; hooks and lm-eval see it."""
    return unwrapped(model)


class MacDrop:
    """Curriculum dropout of the massive rows ``rows`` of ``W_up``/``W_gate`` at ``layer``.

    ``p`` is a schedule (see :func:`schedule`); ``seed`` fixes the masks (a private generator, so
    the training's own random stream is untouched). ``history`` records ``(t, p, dropped rows)``.
    """

    def __init__(self, model: nn.Module, layer: int, rows: list[int], p: Callable[[int], float], seed: int = 0) -> None:
        base = base_model(model)
        L = n_layers(base)
        if not 0 <= layer < L:
            raise LayerError(f"layer {layer} out of range 0..{L - 1}")
        views = [weight_view(base, layer, name) for name in arch_for(base).ffn_in_names]
        self.weights = [v.matrix for v in views]
        d_ff = self.weights[0].shape[0]
        if not rows or len(set(rows)) != len(rows) or not all(0 <= r < d_ff for r in rows):
            raise ProbeError(f"rows must be distinct neuron indices in 0..{d_ff - 1}, got {rows}")
        self.layer, self.rows, self.p = layer, list(rows), p
        self.dora = [_dora_layers(model, v.param) for v in views]  # (fused W_gate/W_up share one)
        self.params = [v.param for v in views]
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[tuple[int, float, list[int]]] = []

    def mask(self, t: int) -> list[int]:
        """Rows dropped at step ``t``: each of the k rows independently with probability p(t)."""
        p = self.p(t)
        draw = torch.rand(len(self.rows), generator=self.generator) < p
        dropped = [r for r, d in zip(self.rows, draw.tolist()) if d]
        self.history.append((t, p, dropped))
        return dropped

    @contextmanager
    def step(self, t: int) -> Iterator[list[int]]:
        """Zero this step's dropped rows (in every matrix) for the block, then restore them
        bit-exactly, also on an exception or Ctrl-C. Yields the dropped rows."""
        dropped = self.mask(t)
        idx = torch.tensor(dropped, dtype=torch.long)
        saved, patched = [], []
        try:
            with torch.no_grad():
                for W, param, dora in zip(self.weights, self.params, self.dora):
                    if dropped:
                        patched += [_norm_from(d, param.detach().clone()) for d in dora if d not in patched]
                    saved.append(W[idx.to(W.device)].clone())
                    W[idx.to(W.device)] = 0
            yield dropped
        finally:
            with torch.no_grad():
                for W, rows in zip(self.weights, saved):
                    W[idx.to(W.device)] = rows
            for layer in patched:
                del layer.get_weight_norm  # back to the class's method


def _dora_layers(model: nn.Module, param: nn.Parameter) -> list[nn.Module]:
    """peft's DoRA norm modules of the LoRA layer whose frozen base weight is ``param``."""
    return [dora for m in model.modules() if getattr(getattr(m, "base_layer", None), "weight", None) is param
            for dora in getattr(m, "lora_magnitude_vector", {}).values()]


def _norm_from(dora: nn.Module, full: torch.Tensor) -> nn.Module:
    """Make ``dora`` compute its weight norm from ``full`` (the undropped base weight, in the
    parameter's own layout, as peft reads it) until the instance attribute is deleted."""
    method = type(dora).get_weight_norm

    def get_weight_norm(weight: torch.Tensor, lora_weight: torch.Tensor, scaling: float, adapter_name: Any = None) -> torch.Tensor:
        return method(dora, full.to(weight.dtype), lora_weight, scaling, adapter_name=adapter_name)

    dora.get_weight_norm = get_weight_norm
    return dora


def macdrop_callback(drop: MacDrop) -> Any:
    """A ``transformers.TrainerCallback`` applying ``drop`` around each optimiser step: the mask
    is drawn and applied at ``on_step_begin`` (before the step's forward/backward passes) and
    the rows are restored at ``on_step_end`` (and at ``on_train_end`` in any case)."""
    from transformers import TrainerCallback

    class MacDropCallback(TrainerCallback):
        def __init__(self) -> None:
            self._active: Any = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._close()
            self._active = drop.step(state.global_step)
            self._active.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._close()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._close()

        def _close(self) -> None:
            if self._active is not None:
                active, self._active = self._active, None
                active.__exit__(None, None, None)

    return MacDropCallback()
