"""Super-weight candidates by the spike method, and the matched controls of each candidate.

**Spike score** (Yu et al. 2024, "The Super Weight in LLMs", arXiv 2411.07191, §3.1: a super
weight ``W_down[d, n]`` shows as a spike of the down projection's input at neuron ``n`` and of its
output at dim ``d`` on the same token). With ``h(t)`` the input of ``down_proj`` (the FFN
intermediate state, hook point ``blocks.{l}.mlp.hook_post``) and ``y(t)`` its output
(``blocks.{l}.mlp.hook_out``) at token ``t`` of the scan windows::

    spike(d, n) = max_t |h_n(t)| * |y_d(t)|

and a layer's candidates are the ``k`` pairs ``(d, n)`` with the largest spike. It is computed
exactly while streaming (:class:`SpikePairs`): at one token the ``k`` largest products lie among
the ``k`` largest ``|h|`` times the ``k`` largest ``|y|`` (any other pair is beaten by ``k`` distinct
pairs of that token), and a running top-``k`` of per-pair maxima is exact (a pair dropped from it
had ``k`` pairs at least as large, and it re-enters with any later, larger value).

**Matched controls** (:func:`matched_controls`): for a candidate whose ``|W_down[d, n]|`` has rank
``r`` among the ``N`` entries of its layer's ``W_down`` (quantile ``q = r / (N - 1)``), the band is the
``2 * ceil(band * N) + 1`` ranks around ``r`` (``q +- band``; at the ends of the range the window
is shifted inward so it keeps its width: the band of the largest weight is the top ``2 * band``);
``count`` entries are drawn from it without replacement by ``numpy.random.default_rng([seed,
layer, d, n])`` (reproducible whatever the order of the work), never a candidate of the layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probe.errors import ProbeError
from probe.reducers import Batch, Reducer

BAND = 0.01  # half-width of a control band, in quantiles of |W_down|


@dataclass
class _Handoff:
    """The top-``k`` ``|h|`` of the last down projection's input, waiting for its output."""

    top: tuple[torch.Tensor, torch.Tensor] | None = None
    width: int = 0


class InputTop(Reducer):
    """Reducer for ``blocks.*.mlp.hook_post``: hands the ``k`` largest ``|h|`` per token (signed
    values, indices) to the :class:`SpikePairs` of the same down projection, which runs next."""

    name = "input_top"

    def __init__(self, k: int, handoff: _Handoff) -> None:
        self.k, self.handoff = k, handoff

    def fresh(self) -> "InputTop":
        return InputTop(self.k, self.handoff)  # shared: the output side reads it

    def update(self, x: torch.Tensor, batch: Batch) -> None:
        x = x.detach()
        idx = x.abs().topk(min(self.k, x.shape[-1]), dim=-1).indices
        self.handoff.top = (x.gather(-1, idx), idx)
        self.handoff.width = x.shape[-1]

    def result(self) -> None:
        return None


class SpikePairs(Reducer):
    """Reducer for ``blocks.*.mlp.hook_out``: the exact running top-``k`` pairs ``(d, n)`` by
    ``max_t |h_n(t)| |y_d(t)|`` (module docstring), with the token where the maximum is reached."""

    name = "spike_pairs"

    def __init__(self, k: int, handoff: _Handoff) -> None:
        self.k, self.handoff = k, handoff
        self.kept: dict[str, torch.Tensor] = {}

    def fresh(self) -> "SpikePairs":
        return SpikePairs(self.k, self.handoff)

    def update(self, y: torch.Tensor, batch: Batch) -> None:
        if self.handoff.top is None:
            raise ProbeError("the spike census needs the down projection's input before its output "
                             "(capture blocks.*.mlp.hook_post and blocks.*.mlp.hook_out together)")
        h_val, h_idx = self.handoff.top
        self.handoff.top = None
        y = y.detach()
        y_idx = y.abs().topk(min(self.k, y.shape[-1]), dim=-1).indices
        y_val = y.gather(-1, y_idx)
        b, t, kh, ky = h_val.shape[0], h_val.shape[1], h_val.shape[-1], y_val.shape[-1]
        score = (y_val.abs().float()[..., :, None] * h_val.abs().float()[..., None, :])
        if batch.mask is not None:
            score = score.masked_fill(~batch.mask.to(score.device, torch.bool)[..., None, None], -1.0)
        shape = (b, t, ky, kh)
        seq = (torch.arange(b, device=y.device) + batch.offset)[:, None, None, None].expand(shape)
        pos = torch.arange(t, device=y.device)[None, :, None, None].expand(shape)
        tokens = batch.tokens.to(y.device)[:, :, None, None].expand(shape) if batch.tokens is not None \
            else torch.full(shape, -1, device=y.device)
        new = {"id": (y_idx[..., :, None] * self.handoff.width + h_idx[..., None, :]),
               "score": score, "input": h_val[..., None, :].expand(shape).float(),
               "output": y_val[..., :, None].expand(shape).float(), "batch": seq, "position": pos, "token": tokens}
        new = {key: value.reshape(-1) for key, value in new.items()}
        merged = {key: torch.cat([self.kept[key], new[key]]) for key in new} if self.kept else new
        self.kept = best_per_pair(merged, self.k)
        self.width = self.handoff.width

    def result(self) -> list[dict[str, Any]]:
        """The pairs, largest spike first: ``row`` (``d``), ``col`` (``n``), ``spike``, the signed
        ``input`` ``h_n`` and ``output`` ``y_d`` at that token, its window ``batch``, ``position``, ``token``."""
        if not self.kept:
            return []
        cols = {key: value.cpu().tolist() for key, value in self.kept.items()}
        return [{"row": i // self.width, "col": i % self.width, "spike": s, "input": h, "output": o,
                 "batch": b, "position": p, "token": tok}
                for i, s, h, o, b, p, tok in zip(cols["id"], cols["score"], cols["input"], cols["output"],
                                                 cols["batch"], cols["position"], cols["token"])]


def best_per_pair(records: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Of flat ``records`` (``id``, ``score`` and attributes), the record of largest ``score`` of each
    ``id``, then the ``keep`` largest of those, largest first (ties: the earlier record)."""
    order = records["score"].argsort(descending=True, stable=True)
    ids = records["id"][order]
    uniq, inverse = torch.unique(ids, return_inverse=True)
    place = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((uniq.numel(),), ids.numel(), device=ids.device).scatter_reduce(0, inverse, place, "amin")
    chosen = order[first.sort().values[:keep]]
    return {key: value[chosen] for key, value in records.items()}


@dataclass
class SpikeCapture:
    """The two reducers of the spike census, to open as captures of one forward pass (e.g. as
    ``riders`` of :func:`analyses.massive.locate.scan`)."""

    k: int
    handoff: _Handoff = field(default_factory=_Handoff)

    def reducers(self) -> tuple[InputTop, SpikePairs]:
        return InputTop(self.k, self.handoff), SpikePairs(self.k, self.handoff)


@dataclass
class Band:
    """A candidate's quantile ``q`` of ``|W_down|`` in its layer, the band ``[lo, hi]`` (quantiles)
    and ``|w|`` range ``[w_lo, w_hi]`` its controls come from, and the controls ``(row, col, value)``."""

    q: float
    lo: float
    hi: float
    w_lo: float
    w_hi: float
    controls: list[tuple[int, int, float]]


def matched_controls(matrix: torch.Tensor, cells: list[tuple[int, int]], count: int, seed: int, layer: int,
                     band: float = BAND) -> dict[tuple[int, int], Band]:
    """For each candidate ``(d, n)`` in ``cells`` of ``matrix`` (a layer's ``W_down``, ``out x in``),
    ``count`` controls from its ``|w|`` quantile band (module docstring), never one of ``cells``."""
    a = matrix.detach().abs().float().cpu().reshape(-1)
    n_all, width = a.numel(), matrix.shape[1]
    order = a.argsort(stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(n_all))
    excluded = {d * width + n for d, n in cells}
    half = min(max(math.ceil(band * n_all), math.ceil(count / 2) + len(cells)), (n_all - 1) // 2)
    out = {}
    for d, n in cells:
        r = int(rank[d * width + n])
        lo = min(max(r - half, 0), n_all - 1 - 2 * half)
        window = order[lo : lo + 2 * half + 1].tolist()
        pool = [i for i in window if i not in excluded]
        if len(pool) < count:
            raise ProbeError(f"layer {layer}: W_down has {n_all} weights, too few for {count} controls per candidate; "
                             "ask for fewer controls")
        picks = np.random.default_rng([seed, layer, d, n]).choice(len(pool), size=count, replace=False)
        flat = matrix.reshape(-1)
        controls = [(pool[i] // width, pool[i] % width, float(flat[pool[i]])) for i in picks.tolist()]
        scale = max(n_all - 1, 1)
        out[(d, n)] = Band(r / scale, lo / scale, (lo + 2 * half) / scale, float(a[order[lo]]),
                           float(a[order[lo + 2 * half]]), controls)
    return out
