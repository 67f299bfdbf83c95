"""The census's single-weight edits inside nnsight traces: a model served by NDIF (or a local
nnsight model), the weights never touched.

The same arithmetic as :mod:`analyses.census.edits`, as interventions. A forward of ``k`` copies of a
batch of windows, copy ``c`` carrying edit ``c``, edits the output of layer ``L``'s down projection
in the trace: ``exact`` (default) recomputes copy ``c``'s down projection from its input with a copy
of ``W_down`` whose entry ``[row, col]`` is zero (:func:`analyses.ablate.traced.zeroed_forward`: what
the module's ``forward`` runs, so the numbers equal a weight-edited forward bit for bit on the
CPU), else subtracts ``W[row, col] h_col`` (:func:`~analyses.census.edits.zeroed_output`); ``held``
positions keep output ``row``. The per-window NLL sums are taken in the trace from the model's own
logits (one number per window comes back). No shared prefix: the replay needs hooks in the
server's forward, so every forward runs all blocks.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from analyses.ablate.traced import zeroed_forward
from analyses.census.edits import WindowLosses, Zeroed, zeroed_output
from probe.arch import arch_for, get_path
from probe.backends import envoy_at, hf_module, module_paths, shipped
from probe.hookpoints import resolve
from probe.offload import held as weights_held


def window_sums(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` float64: per window, ``-sum_{t>=1} log softmax(logits[t-1])[token_t]`` (the
    per-token values in float32, as :func:`analyses.evaluate.likelihood.token_nll`)."""
    scored = logits[:, :-1].float()
    nll = F.cross_entropy(scored.reshape(-1, scored.shape[-1]), batch[:, 1:].reshape(-1).to(scored.device),
                          reduction="none")
    return nll.view(batch.shape[0], -1).double().sum(-1).cpu()


class TracedWindowLosses(WindowLosses):
    """:class:`~analyses.census.edits.WindowLosses` on an nnsight model ``runner`` (``remote``:
    ``False`` here, ``True`` on NDIF, ``"local"`` simulated): the same interface and numbers, one
    trace per forward and no shared prefix (module docstring)."""

    def __init__(self, runner: Any, windows: torch.Tensor, rows: int = 32, exact: bool = True,
                 remote: bool | str = False) -> None:
        super().__init__(hf_module(runner), windows, rows, share_prefix=False, exact=exact)
        self.model, self.remote = runner, remote
        if remote:
            self.windows = windows  # sent with each request

    def _group(self, group: Sequence[Zeroed]) -> torch.Tensor:
        k = len(group)
        return torch.cat([self._sums(batch.repeat(k, 1), group).view(k, batch.shape[0]) for batch in self.batches],
                         dim=1)

    def _sums(self, batch: torch.Tensor, group: Sequence[Zeroed] = ()) -> torch.Tensor:
        import nnsight

        self.forwards += 1
        runner, remote = self.model, self.remote
        with shipped("probe", "analyses") if remote else nullcontext(), torch.no_grad():
            with runner.trace(batch, **({"remote": remote} if remote else {})):
                if group:
                    edit_in_trace(runner, group, batch.shape[0] // len(group), self.exact)
                sums = nnsight.save(window_sums(runner.output.logits, batch))
        return sums


def edit_in_trace(runner: Any, edits: Sequence[Zeroed], per: int, exact: bool) -> None:
    """Inside a trace of ``len(edits) * per`` rows: edit ``c`` on rows ``c * per .. (c + 1) * per - 1``,
    at the output of its layer's down projection (module docstring; all edits of one layer)."""
    (layer,) = {e.layer for e in edits}
    root = hf_module(runner)
    (out,) = resolve(root, [f"blocks.{layer}.mlp.hook_out"])  # the down projection: its input is hook_post
    path = module_paths(root)[id(out.module)]
    envoy = envoy_at(runner, path)
    h = envoy.input
    y = envoy.output
    lead = (len(edits) * per, -1)
    h3, y3 = (h.reshape(*lead, h.shape[-1]), y.reshape(*lead, y.shape[-1])) if h.dim() == 2 else (h, y)  # OPT: flat
    held = torch.zeros(y3.shape[0], y3.shape[1], dtype=torch.bool, device=y3.device)
    for c, e in enumerate(edits):
        held[c * per : (c + 1) * per, [p for p in e.held if p < y3.shape[1]]] = True
    if not exact:
        rows = torch.tensor([e.row for e in edits for _ in range(per)])
        cols = torch.tensor([e.col for e in edits for _ in range(per)])
        values = torch.tensor([e.value for e in edits for _ in range(per)], dtype=torch.float64)
        y3.copy_(zeroed_output(h3, y3, rows, cols, values, held))
        return
    module = get_path(runner._module, path)
    conv1d = arch_for(root).conv1d
    with weights_held(runner._module, module):
        for c, e in enumerate(edits):
            part = slice(c * per, (c + 1) * per)
            x = h3[part]
            x = x.reshape(-1, x.shape[-1]) if h.dim() == 2 else x  # OPT's down projection takes the flattened rows
            new = zeroed_forward(module, x, [e.row], [e.col], conv1d).reshape(*h3[part].shape[:-1], -1)
            y3[part, :, e.row] = torch.where(held[part], y3[part, :, e.row], new[..., e.row])
