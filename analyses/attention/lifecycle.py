"""The outlier lifecycle: super weight -> massive activation -> attention sink -> loss.

Massive activations act as fixed attention biases (Sun et al. 2024, arXiv 2402.17762, §4); the
first token becomes an attention sink whose key acts as a bias (Gu et al. 2024, arXiv 2410.10781);
weight outliers cause activation outliers, which cause attention outliers (An et al. 2025,
"Systematic Outliers in Large Language Models", ICLR, arXiv 2502.06415). :func:`lifecycle` measures
that chain, on the unedited model and with each ablation plan applied (then restored):

- the massive activation: per layer the largest ``|value|`` of the residual stream
  (``blocks.{l}.hook_resid_post``, :class:`probe.reducers.MaxMedian`, whose max is exact);
- the attention sink: per layer the mean attention that queries ``t >= 1`` give to the first
  token and Gu et al.'s ``sink_frac`` (:func:`analyses.attention.sinks.sinks`), in the same forward
  passes over the scan's windows;
- the loss: perplexity on the evaluation windows (:func:`analyses.ablate.run.run_plans`, shared
  prefixes; a table already computed for the same plans is reused).

Shared prefixes here too: an edit from block ``L`` on leaves blocks ``0..L-1`` as they are, so each
plan's pass runs blocks ``L..`` on the prefix recorded in the unedited pass (see :func:`lifecycle`).

Backends: ``"torch"`` (weight edits, eager taps, shared prefixes) and ``"nnsight"``, locally or
remotely (NDIF; ``remote="local"`` simulates it): edits as interventions and the attention
recomputed inside the traces, full passes (see :func:`lifecycle`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from analyses.ablate.data import Plan
from analyses.ablate.weights import applied
from analyses.attention.sinks import KeyAttention, KeyBias, Sinks, eager_taps, layer_sinks, sinks
from probe.arch import n_layers
from probe.backends import as_nnsight, check_backend, envoy_at, hf_module, module_paths
from probe.capture import capture, run_all
from probe.hookpoints import resolve
from probe.display import Figured
from probe.prefix import SharedPrefix, can_share
from probe.reducers import MaxMedian


@dataclass
class Stage:
    """One state of the model: unedited (``plan`` None) or with ``plan`` applied."""

    label: str
    plan: dict[str, Any] | None
    massive_max: list[float]
    mean_attn_first: list[float]
    sink_frac: list[float]
    ppl: float
    ppl_ratio: float


@dataclass
class Lifecycle(Figured):
    """Result of :func:`lifecycle`: ``stages[0]`` is the unedited model, ``sinks`` its full sink
    profile (per head); ``figure()`` reads left to right: massive activation, attention sink, loss."""

    model: str
    origin_layer: int | None
    eps: float
    sinks: Sinks
    stages: list[Stage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "origin_layer": self.origin_layer, "eps": self.eps, "sinks": self.sinks.to_dict(),
                "stages": [asdict(s) for s in self.stages]}

    def rows(self) -> list[dict[str, Any]]:
        """One row per stage: the massive activation at the origin and last layers, the last layer's
        attention on the first token, Sink_eps over all layers, and the perplexity."""
        o = self.origin_layer if self.origin_layer is not None else 0
        return [{"stage": s.label, f"max |h| layer {o}": round(s.massive_max[o], 1),
                 "max |h| last layer": round(s.massive_max[-1], 1),
                 "attention on first token, last layer": round(s.mean_attn_first[-1], 3),
                 "sink_frac, mean over layers": round(sum(s.sink_frac) / len(s.sink_frac), 3),
                 "ppl": round(s.ppl, 3), "x baseline": round(s.ppl_ratio, 3)} for s in self.stages]


def label(plan: Plan) -> str:
    """A short name of a plan: ``super W_down[d, n] @11``, ``zero k=5 @11``, ``random k=5 seed 0 @11``."""
    if plan.mode == "super":
        return f"super weight W_down[{plan.dims[0] if plan.dims else '?'}, {plan.neurons[0]}] @{plan.layer}"
    seed = f" seed {plan.seed}" if plan.seed is not None else ""
    return f"{plan.mode} k={plan.k}{seed} @{plan.layer}"


def _pass(model: Any, tokenizer: Any, name: str, scan: Any, ids: torch.Tensor, eps: float,
          batch_size: int) -> tuple[Sinks, list[float]]:
    """The sink profile and the per-layer max ``|h|`` of the residual stream, in one pass over ``ids``
    (the scan's windows)."""
    points = "blocks.*.hook_resid_post"
    with capture(model, points, MaxMedian(stride=7)) as cap:
        found = sinks(model, tokenizer, name, scan=scan, windows=ids, eps=eps, batch_size=batch_size)
    return found, [cap[f"blocks.{l}.hook_resid_post"].max for l in range(n_layers(model))]


def _suffix_pass(model: Any, ids: torch.Tensor, layer: int, eps: float, batch_size: int,
                 base: Stage) -> tuple[list[float], list[float], list[float]]:
    """Per layer: max ``|h|``, mean attention on the first token and ``sink_frac`` of the model as
    it is now (an edit from ``layer`` on, blocks ``0..layer-1`` replayed by a shared prefix
    recorded over the same batches of ``ids``): blocks from ``layer`` on are measured as in
    :func:`_pass`, the ones in front are ``base``'s (an edit cannot reach them)."""
    L = n_layers(model)
    after = range(layer, L)
    with eager_taps(hf_module(model), {}), \
            capture(model, [f"blocks.{l}.attn.hook_pattern" for l in after], KeyAttention(eps)) as att, \
            capture(model, [f"blocks.{l}.hook_resid_post" for l in after], MaxMedian(stride=7)) as resid:
        for start in range(0, ids.shape[0], batch_size):
            run_all([att, resid], ids[start : start + batch_size])
    heads = [att[f"blocks.{l}.attn.hook_pattern"] for l in after]
    return (base.massive_max[:layer] + [resid[f"blocks.{l}.hook_resid_post"].max for l in after],
            base.mean_attn_first[:layer] + [float(h.first.mean()) for h in heads],
            base.sink_frac[:layer] + [float(h.sink.mean()) for h in heads])


def lifecycle(model: Any, tokenizer: Any, scan: Any, plans: list[Plan], eval_windows: torch.Tensor,
              name: str = "model", eps: float = 0.3, batch_size: int = 8, table: dict[str, Any] | None = None,
              progress: Callable[[int], None] | None = None, share_prefix: bool = True, backend: str = "torch",
              remote: bool | str = False) -> Lifecycle:
    """The chain of the module docstring for the unedited model and each plan in ``plans``, on the
    windows of ``scan`` (a :class:`~analyses.massive.locate.MassiveScan`); perplexity on
    ``eval_windows``, from ``table`` (a :func:`~analyses.ablate.run.run_plans` result holding these
    plans) when given, else computed. ``share_prefix`` (default): a plan that first edits block
    ``L >= 1`` runs blocks ``L..`` only, on the outputs of blocks ``0..L-1`` recorded in the
    unedited pass (:class:`probe.prefix.SharedPrefix`), and keeps the unedited values of the blocks
    in front; the stages equal those of full passes bit for bit (tested).

    ``backend="nnsight"`` (``remote``: ``True`` for NDIF, ``"local"`` simulated): the weights are
    never touched; every stage is one pass of traces in which, block by block, the attention
    probabilities are recomputed from the attention call's arguments
    (:func:`analyses.attention.sinks.traced`), the plan's edits run as interventions
    (:func:`analyses.ablate.traced.apply`, as the traced ablations) and the block's output is
    reduced; the perplexities are the traced ones (:func:`~analyses.ablate.run.run_plans`).
    Equal to the torch path to float32 rounding (the server's attention kernel against eager; tested)."""
    from analyses.ablate.modes import get_mode
    from analyses.ablate.run import run_plans
    from analyses.attention.sinks import _windows

    backend, remote = check_backend(backend, remote, allowed=("torch", "nnsight"))
    runner = as_nnsight(model, remote, tokenizer) if backend == "nnsight" else model
    if table is None or any(_key(p.to_dict()) not in {_key(r) for r in table["results"]} for p in plans):
        table = run_plans(runner, eval_windows, plans, backend=backend, remote=remote)
    ppl = {_key(r): r["ppl"] for r in table["results"]}
    base_ppl = table["baseline"]["ppl"]
    ids = _windows(tokenizer, None, scan, scan.corpus, scan.n_seqs, scan.seq_len, None)
    if backend == "nnsight":
        return _traced_lifecycle(runner, name, scan, plans, ids, eps, batch_size, remote, ppl, base_ppl, progress)
    first = [get_mode(p.mode).first_layer(p) for p in plans]
    layers = sorted({l for l in first if l >= 1}) if share_prefix and can_share(model) else []
    shared = SharedPrefix(model, layers) if layers else None
    with shared.recording() if shared else nullcontext():
        found, maxes = _pass(model, tokenizer, name, scan, ids, eps, batch_size)
    out = Lifecycle(name, scan.origin_layer, eps, found)
    out.stages.append(Stage("original", None, maxes, [l.mean_attn_first for l in found.layers],
                            [l.sink_frac for l in found.layers], base_ppl, 1.0))
    if progress:
        progress(1)
    for plan, layer in zip(plans, first):
        with applied(model, plan):
            if shared is not None and layer in layers:
                with shared.replaying(layer):
                    maxes, attn_first, sink_frac = _suffix_pass(model, ids, layer, eps, batch_size, out.stages[0])
            else:
                found, maxes = _pass(model, tokenizer, name, scan, ids, eps, batch_size)
                attn_first, sink_frac = [l.mean_attn_first for l in found.layers], [l.sink_frac for l in found.layers]
        value = ppl[_key(plan.to_dict())]
        out.stages.append(Stage(label(plan), plan.to_dict(), maxes, attn_first, sink_frac, value, value / base_ppl))
        if progress:
            progress(1)
    return out


def _traced_lifecycle(runner: Any, name: str, scan: Any, plans: list[Plan], ids: torch.Tensor, eps: float,
                      batch_size: int, remote: bool | str, ppl: dict[tuple[Any, ...], float], base_ppl: float,
                      progress: Callable[[int], None] | None) -> Lifecycle:
    """:func:`lifecycle` on an nnsight model: the unedited stage, then each plan, by :func:`_traced_stage`."""
    from analyses.ablate.traced import steps
    from analyses.attention.sinks import carrier_positions, profile

    targets = carrier_positions(scan)
    att, bias, maxes = _traced_stage(runner, ids, KeyAttention(eps, targets), [], batch_size, remote)
    found = profile(name, scan.corpus, ids, eps, [layer_sinks(l, a.result(), b.result()) for l, (a, b) in
                                                  enumerate(zip(att, bias))], dict(scan.protocol or {}), scan, targets)
    out = Lifecycle(name, scan.origin_layer, eps, found)
    out.stages.append(Stage("original", None, maxes, [l.mean_attn_first for l in found.layers],
                            [l.sink_frac for l in found.layers], base_ppl, 1.0))
    if progress:
        progress(1)
    for plan in plans:
        todo = steps(hf_module(runner), plan, ids.shape[1])
        att, _, maxes = _traced_stage(runner, ids, KeyAttention(eps), todo, batch_size, remote)
        heads = [a.result() for a in att]
        value = ppl[_key(plan.to_dict())]
        out.stages.append(Stage(label(plan), plan.to_dict(), maxes, [float(h.first.mean()) for h in heads],
                                [float(h.sink.mean()) for h in heads], value, value / base_ppl))
        if progress:
            progress(1)
    return out


def _traced_stage(runner: Any, ids: torch.Tensor, template: KeyAttention, todo: list[Any], batch_size: int,
                  remote: bool | str) -> tuple[list[KeyAttention], list[KeyBias], list[float]]:
    """One stage on an nnsight model: per block, in forward order inside each trace, the attention
    fed to the sink reducers, the edits ``todo`` of that block (:class:`~analyses.ablate.data.Step`),
    then its output (``blocks.{l}.hook_resid_post``) into a :class:`~probe.reducers.MaxMedian` (as
    :func:`_pass`, whose max is exact); returns the sink reducers and the per-layer maxima."""
    from analyses.ablate.traced import apply
    from analyses.attention.sinks import on_device, traced

    hf = hf_module(runner)
    points = resolve(hf, "blocks.*.hook_resid_post")
    paths = module_paths(hf)
    where = [paths[id(p.module)] for p in points]
    maxes = [MaxMedian(stride=7) for _ in points]
    by_block: dict[int, list[Any]] = {}
    for step in todo:
        by_block.setdefault(step.layer, []).append(step)

    def after(l: int, batch: Any) -> None:
        for step in by_block.get(l, []):
            apply(runner, step)
        value = points[l].get(envoy_at(runner, where[l]).output)
        on_device(maxes[l], value.device).update(value, batch)

    att, bias = traced(runner, ids, batch_size, template, remote, after=after, extra=maxes)
    return att, bias, [m.result().max for m in maxes]


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    """A plan's identity in a :func:`~analyses.ablate.run.run_plans` row (whose ``value`` is the
    measured perplexity, not the plan's residual value)."""
    return tuple(tuple(v) if isinstance(v, (list, tuple)) else v
                 for key, v in sorted(row.items()) if key in Plan.__dataclass_fields__ and key != "value")
