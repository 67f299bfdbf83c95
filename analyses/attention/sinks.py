"""Attention sinks: how much attention each head puts on the first token, and why (the key bias).

Definitions (Gu et al. 2024, "When Attention Sink Emerges in Language Models: An Empirical View",
arXiv 2410.10781; ``A^{l,h}_{t,j}`` is the attention probability of query ``t`` on key ``j`` of
head ``h`` in layer ``l``, ``T`` tokens per window, positions counted from 0):

- ``mean_attn_first`` (per head: ``heads``): ``mean_{windows, t >= 1} A_{t,0}``, the attention that
  the queries after the first token give to it, averaged over queries and windows, then over
  heads for the layer value.
- ``mean_attn_carriers``: the same for every *other* position ``p >= 1`` that carries a massive
  activation at any layer of the scan (``MassiveScan.layers[l].massive``, per window),
  ``mean A_{t,p}`` over those (window, p) and the queries ``t > p`` that can see them; ``None``
  when the scan found no carrier but position 0 (or no scan was given).
- ``sink_frac`` = Gu et al.'s ``Sink^eps_1`` for one layer, as their code computes it: per window
  and head the importance score ``alpha = (1 / T) sum_{t >= 0} A_{t,0}`` (every query that can
  see the first token, the first token's attention on itself included: this differs from
  ``mean_attn_first`` by at most ``1 / T``), then the fraction of (window, head) pairs with
  ``alpha > eps`` (eps 0.3). ``sink_rate`` is their model-wide number: the mean over layers.
- ``onset_layer``: the first layer with ``sink_frac >= 0.5`` (issue 18's rule); ``sustained_onset_layer``:
  the first layer from which every later layer has ``sink_frac >= 0.5`` (on SmolLM2 layer 3 crosses
  0.5 once and layers 4-11 fall back below it; the lasting sink starts at 12, one after the
  massive-activation origin 11).
- Key-bias decomposition (Gu et al.: the first token acts as a key bias): per window and head,
  ``||k_0|| / median_{t >= 1} ||k_t||`` (and the same for queries and values), averaged over
  windows, then over heads (``key_norm_ratio``, ``query_norm_ratio``, ``value_norm_ratio``); and
  ``qk_cos = mean_{windows, heads, t >= 1} cos(q_t, k_0)``. Queries and keys are taken where the
  attention function receives them: after rotary position embedding (a rotation: norms are those
  of the projections, the cosine is the one the attention logit sees) and after any q/k norm;
  grouped-query heads use the key/value head they share, as the model does.

How the probabilities are obtained (issue 18 asks for the cheaper of two ways): the pass runs the
family's *own* eager attention function, and the ``(batch, head, query, key)`` pattern leaves it
through the hook point ``blocks.{l}.attn.hook_pattern`` into a streaming reducer
(:class:`KeyAttention`). The alternative, recomputing ``softmax(QK^T)`` from captured Q/K next to
an SDPA forward, does the same ``QK^T`` and softmax arithmetic *plus* the SDPA kernel, and would
have to re-implement each family's scaling, logit soft-capping and sliding-window masks.
Measured on SmolLM2-135M, CPU, 8 x 128 tokens, one forward each, interleaved rounds on the shared
2-core machine: in the one quiet round SDPA 3.2 s, eager 2.0 s, this module's tap (eager + q/k/v
reducers) 2.2 s, SDPA + recomputation 2.4 s; the medians of 5 rounds under a load of 4-5
(8.5, 12.6, 13.4, 11.6 s) are within the noise of each other. Eager is exact (it is what
``output_attentions`` returns) and no slower, so it is the choice; the pattern (8 x 9 x 128 x 128
floats per layer) is transient. The eager function is wrapped
(:func:`eager_taps`: an attention implementation registered with transformers'
``AttentionInterface``, with the eager mask) so the same call also hands the post-rotary q, k, v
to :class:`KeyBias`; the model's previous attention implementation is restored afterwards, also
on errors. Every reducer keeps ``O(heads)`` numbers per layer: memory does not grow with the
number of windows (``benchmarks/sinks_memory.py``).

Backends: ``"torch"``; ``"nnsight"`` on a local model (the pattern is reduced inside the trace,
the q/k/v tap runs in the model's forward); ``"nnsight"`` with ``remote=True`` (NDIF, e.g. a 70B
model) or ``remote="local"`` (nnsight's offline simulation of that request). A server runs its own
attention implementation (usually SDPA, which returns no probabilities) and no tap of ours, so
there the other way is the only one: inside each trace, per layer, nnsight's ``.source`` of the
attention module hands over the arguments of its call ``attention_interface(self, q, k, v, mask,
scaling=..., softcap=..., sliding_window=...)``, and the family's own ``eager_attention_forward``
recomputes the probabilities from them, on the mask the call received made additive (SDPA's boolean
mask, or, where SDPA was left to apply causality itself, the causal mask with the call's sliding
window). Scaling, soft-capping, grouped heads and windows are then the model's own, not ours; the
cost is one more eager attention per layer, on the server. Both reducers run in the trace and only
their ``O(heads)`` states come back. Tested equal to the torch path on every causal family.
Families: every causal family of :mod:`probe.arch`; BERT/RoBERTa are bidirectional and refused.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from einops import rearrange
from torch import nn

from probe.arch import arch_for, decoder_layers, get_path
from probe.backends import as_nnsight, check_backend, hf_module
from probe.capture import capture
from probe.data import load_corpus, token_windows, window_protocol
from probe.display import Figured
from probe.errors import ProbeError
from probe.reducers import Batch, Reducer

IMPLEMENTATION = "probe_eager"
Tap = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
_TAPS: dict[int, Tap] = {}


# --- the tap: the family's eager attention, with q/k/v handed out -------------------------------
def _tapped_eager(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager attention of ``module``'s own modelling file; a registered tap sees its q, k, v."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ProbeError(f"{type(module).__name__} has no eager_attention_forward in its modelling file; "
                         "attention sinks need a transformers model that dispatches through AttentionInterface")
    out, weights = eager(module, query, key, value, attention_mask, **kwargs)
    tap = _TAPS.get(id(module))
    if tap is not None:
        tap(query, key, value)
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(IMPLEMENTATION, _tapped_eager)
    AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


@contextmanager
def eager_taps(model: nn.Module, taps: Mapping[nn.Module, Tap]) -> Iterator[None]:
    """Run ``model`` with its eager attention (so ``attn.hook_pattern`` holds probabilities) while
    the block is open, calling ``taps[attention_module](q, k, v)`` with the tensors the attention
    function receives (``(batch, heads, position, head_dim)``, keys/values with their own head
    count); the previous implementation is restored on exit."""
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        if model.config._attn_implementation != IMPLEMENTATION:
            raise ProbeError(f"{type(model).__name__} cannot switch its attention implementation to a tapped eager "
                             "one; attention sinks need a model that dispatches through transformers' AttentionInterface")
        _TAPS.update({id(m): fn for m, fn in taps.items()})
        yield
    finally:
        for m in taps:
            _TAPS.pop(id(m), None)
        model.set_attn_implementation(previous)


def qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``(batch, position, 3, heads, head_dim)``: q, k, v with grouped key/value heads repeated to
    the query heads (head ``h`` reads key/value head ``h // (heads / kv_heads)``, as ``repeat_kv``)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return rearrange(torch.stack([query, key, value]), "s b h t d -> b t s h d")


# --- reducers -------------------------------------------------------------------------------------
def _query_mask(batch: Batch, b: int, t: int, device: torch.device) -> torch.Tensor:
    """``(batch, position)`` floats, 0 on padding."""
    if batch.mask is None:
        return torch.ones(b, t, device=device)
    return batch.mask.to(device=device, dtype=torch.float32)


@dataclass
class KeyAttentionResult:
    """Per head: ``first`` = mean attention on position 0 from queries ``t >= 1``; ``sink`` = the
    fraction of windows whose Gu et al. score ``alpha`` exceeds ``eps``; ``carriers`` = mean
    attention on the other carrier positions (``None`` without any)."""

    first: torch.Tensor
    sink: torch.Tensor
    carriers: torch.Tensor | None
    windows: int


class KeyAttention(Reducer):
    """Streams attention patterns ``(batch, head, query, key)`` into per-head sums: attention on key
    0 from queries ``t >= 1``, Gu et al.'s ``alpha > eps`` counts, and attention on the positions
    ``targets[window]`` (global window index -> positions ``>= 1``) from the queries after them.
    The state is ``O(heads)``, whatever the number of windows."""

    name = "key_attention"

    def __init__(self, eps: float = 0.3, targets: Mapping[int, list[int]] | None = None) -> None:
        self.eps = eps
        self.targets = dict(targets or {})

    def update(self, x: torch.Tensor, batch: Batch) -> None:
        w = x.detach().float()
        b, h, t, _ = w.shape
        mask = _query_mask(batch, b, t, w.device)
        on_first = w[..., 0] * mask[:, None, :]  # (b, h, t)
        alpha = on_first.sum(-1) / mask.sum(-1, keepdim=True)
        self._add("_first", on_first[..., 1:].sum((0, 2)), mask[:, 1:].sum())
        self._add("_sink", (alpha > self.eps).float().sum(0), torch.tensor(float(b)))
        for row in range(b):
            for p in self.targets.get(batch.offset + row, []):
                if 1 <= p < t - 1:
                    seen = mask[row, p + 1 :]
                    self._add("_carrier", (w[row, :, p + 1 :, p] * seen).sum(-1), seen.sum())

    def _add(self, key: str, total: torch.Tensor, count: torch.Tensor) -> None:
        old = getattr(self, key, None)
        setattr(self, key, (total, count) if old is None else (old[0] + total, old[1] + count))

    def result(self) -> KeyAttentionResult:
        if not hasattr(self, "_first"):
            raise ValueError("KeyAttention: nothing was captured")
        carrier = getattr(self, "_carrier", None)
        return KeyAttentionResult(_ratio(self._first), _ratio(self._sink), None if carrier is None else _ratio(carrier),
                                  int(self._sink[1]))


def _ratio(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``sum / count`` of a reducer's running pair, on the CPU."""
    return (pair[0] / pair[1]).cpu()


@dataclass
class KeyBiasResult:
    """Per head: norm ratios of the first token's ``query``, ``key`` and ``value`` to the median of
    the other tokens' (mean over windows), and the mean ``cos(q_t, k_0)`` over ``t >= 1``."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    qk_cos: torch.Tensor


class KeyBias(Reducer):
    """Streams ``(batch, position, 3, heads, head_dim)`` q/k/v (:func:`qkv`) into per-head sums of
    ``||x_0|| / median_{t >= 1} ||x_t||`` (per window) and of ``cos(q_t, k_0)``; ``O(heads)`` state."""

    name = "key_bias"

    def update(self, x: torch.Tensor, batch: Batch) -> None:
        x = x.detach().float()
        b, t = x.shape[:2]
        mask = _query_mask(batch, b, t, x.device)[:, 1:]
        norms = x.norm(dim=-1)  # (b, t, 3, h)
        others = norms[:, 1:].masked_fill(mask[..., None, None] == 0, float("nan")).nanmedian(dim=1).values
        ratios = (norms[:, 0] / others).sum(0)  # (3, h)
        cos = torch.nn.functional.cosine_similarity(x[:, 1:, 0], x[:, :1, 1], dim=-1)  # (b, t-1, h)
        cos_sum = (cos * mask[..., None]).sum((0, 1))
        if hasattr(self, "_ratios"):
            self._ratios, self._windows = self._ratios + ratios, self._windows + b
            self._cos, self._queries = self._cos + cos_sum, self._queries + mask.sum()
        else:
            self._ratios, self._windows, self._cos, self._queries = ratios, b, cos_sum, mask.sum()

    def result(self) -> KeyBiasResult:
        if not hasattr(self, "_ratios"):
            raise ValueError("KeyBias: nothing was captured")
        ratios = (self._ratios / self._windows).cpu()
        return KeyBiasResult(ratios[0], ratios[1], ratios[2], (self._cos / self._queries).cpu())


# --- the result ---------------------------------------------------------------------------------
@dataclass
class LayerSinks:
    """One layer: see the module docstring for each number; ``heads`` is ``mean_attn_first`` per head."""

    layer: int
    mean_attn_first: float
    sink_frac: float
    heads: list[float]
    mean_attn_carriers: float | None
    key_norm_ratio: float
    query_norm_ratio: float
    value_norm_ratio: float
    qk_cos: float


@dataclass
class Sinks(Figured):
    """Result of :func:`sinks`; ``to_dict()`` is JSON-safe; ``figure()`` is the layer x head heatmap of
    attention on the first token with ``sink_frac`` per layer (:mod:`analyses.attention.figures`)."""

    model: str
    corpus: str
    n_seqs: int
    seq_len: int
    eps: float
    layers: list[LayerSinks]
    onset_layer: int | None
    sink_rate: float
    protocol: dict[str, Any] = field(default_factory=dict)
    sustained_onset_layer: int | None = None
    origin_layer: int | None = None
    carriers: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "corpus": self.corpus, "n_seqs": self.n_seqs, "seq_len": self.seq_len,
                "eps": self.eps, "onset_layer": self.onset_layer, "sustained_onset_layer": self.sustained_onset_layer,
                "sink_rate": self.sink_rate,
                "origin_layer": self.origin_layer, "carriers": dict(self.carriers), "protocol": dict(self.protocol),
                "layers": [asdict(l) for l in self.layers]}


def onset(sink_fracs: list[float], at: float = 0.5) -> int | None:
    """The first layer whose ``sink_frac`` reaches ``at`` (``None`` when none does)."""
    return next((l for l, f in enumerate(sink_fracs) if f >= at), None)


def sustained_onset(sink_fracs: list[float], at: float = 0.5) -> int | None:
    """The first layer from which every layer's ``sink_frac`` reaches ``at`` (``None`` when the last does not)."""
    start = None
    for l, f in enumerate(sink_fracs):
        start = (l if start is None else start) if f >= at else None
    return start


def carrier_positions(scan: Any) -> dict[int, list[int]]:
    """Window -> positions ``>= 1`` holding a massive activation at any layer of ``scan`` (a
    :class:`~analyses.massive.locate.MassiveScan`); position 0 is measured for every window anyway."""
    found: dict[int, set[int]] = {}
    for layer in scan.layers:
        for e in layer.massive:
            if e["position"] >= 1:
                found.setdefault(int(e["batch"]), set()).add(int(e["position"]))
    return {b: sorted(ps) for b, ps in found.items()}


def layer_sinks(l: int, att: KeyAttentionResult, bias: KeyBiasResult) -> LayerSinks:
    """One layer's numbers: per-head values averaged over heads."""
    return LayerSinks(l, float(att.first.mean()), float(att.sink.mean()), att.first.tolist(),
                      None if att.carriers is None else float(att.carriers.mean()), float(bias.key.mean()),
                      float(bias.query.mean()), float(bias.value.mean()), float(bias.qk_cos.mean()))


def check_options(eps: float, n_seqs: int, seq_len: int, batch_size: int) -> None:
    if not 0.0 < eps < 1.0:
        raise ProbeError(f"eps={eps}: the sink threshold is an attention probability, choose 0 < eps < 1 (Gu et al.: 0.3)")
    if n_seqs < 1 or batch_size < 1:
        raise ProbeError(f"n_seqs={n_seqs}, batch_size={batch_size}: both must be at least 1")
    if seq_len < 2:
        raise ProbeError(f"seq_len={seq_len}: a sink needs a first token and at least one query after it (seq_len >= 2)")


def _windows(tokenizer: Any, windows: torch.Tensor | None, scan: Any, corpus: str, n_seqs: int, seq_len: int,
             prepend: Any) -> torch.Tensor:
    """The token ids to run: ``windows`` as given, else the scan's, else cut from ``corpus``."""
    if windows is None and scan is not None:
        from analyses.massive.locate import scan_windows

        windows = scan_windows(tokenizer, scan)
    if windows is None:
        return token_windows(tokenizer, load_corpus(corpus), seq_len=seq_len, n_seqs=n_seqs, prepend=prepend)
    windows = torch.as_tensor(windows, dtype=torch.long)
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ProbeError(f"windows must be (n, seq_len) token ids with seq_len >= 2, got shape {tuple(windows.shape)}")
    return windows


def sinks(
    model: Any,
    tokenizer: Any,
    name: str = "model",
    corpus: str = "stdlib",
    n_seqs: int = 16,
    seq_len: int = 128,
    eps: float = 0.3,
    prepend: str | int | None = "auto",
    batch_size: int = 8,
    windows: torch.Tensor | None = None,
    scan: Any = None,
    progress: Callable[[int], None] | None = None,
    backend: str = "torch",
    remote: bool | str = False,
) -> Sinks:
    """Attention sinks of ``model`` on ``n_seqs`` windows of ``corpus`` (protocol of :mod:`probe.data`),
    or on the token ids ``windows``, or on the windows of ``scan`` (a
    :class:`~analyses.massive.locate.MassiveScan`, whose massive-activation carriers are measured
    too and whose origin layer the figure marks). Definitions: module docstring."""
    check_options(eps, n_seqs, seq_len, batch_size)
    backend, remote = check_backend(backend, remote, allowed=("torch", "nnsight"))
    runner = as_nnsight(model, remote, tokenizer) if backend == "nnsight" else model
    hf = hf_module(runner)
    arch = arch_for(hf)
    if not arch.causal:
        raise ProbeError(f"{arch.name} attention is bidirectional: every query sees every key, so the first token "
                         "has no special place; attention sinks are measured on causal language models")
    protocol = scan.protocol if scan is not None and scan.protocol else window_protocol(tokenizer, prepend).to_dict()
    ids = _windows(tokenizer, windows, scan, corpus, n_seqs, seq_len, prepend)
    targets = carrier_positions(scan) if scan is not None else {}
    if remote:
        att, bias = traced(runner, ids, batch_size, KeyAttention(eps, targets), remote, progress)
        layers = [layer_sinks(l, a.result(), b.result()) for l, (a, b) in enumerate(zip(att, bias))]
    else:
        blocks = decoder_layers(hf, arch)
        bias = [KeyBias() for _ in blocks]
        taps = {get_path(block, arch.attn): _feeder(reducer) for block, reducer in zip(blocks, bias)}
        with eager_taps(hf, taps), capture(runner, "blocks.*.attn.hook_pattern", KeyAttention(eps, targets),
                                           backend=backend) as cap:
            for start in range(0, ids.shape[0], batch_size):
                cap.run(ids[start : start + batch_size])
                if progress:
                    progress(min(batch_size, ids.shape[0] - start))
        layers = [layer_sinks(l, cap[f"blocks.{l}.attn.hook_pattern"], bias[l].result()) for l in range(len(blocks))]
    return profile(name, corpus, ids, eps, layers, protocol, scan, targets)


def profile(name: str, corpus: str, ids: torch.Tensor, eps: float, layers: list[LayerSinks], protocol: dict[str, Any],
            scan: Any, targets: Mapping[int, list[int]]) -> Sinks:
    """The :class:`Sinks` of per-layer numbers ``layers`` measured on ``ids`` (onsets, rate, carriers)."""
    fracs = [l.sink_frac for l in layers]
    return Sinks(name, corpus if scan is None else scan.corpus, ids.shape[0], ids.shape[1], eps, layers, onset(fracs),
                 sum(fracs) / len(fracs), protocol, sustained_onset(fracs), None if scan is None else scan.origin_layer,
                 {"windows": len(targets), "positions": sum(map(len, targets.values()))})


def _feeder(reducer: KeyBias) -> Tap:
    return lambda q, k, v: reducer.update(qkv(q, k, v), Batch())


# --- remote runs: the pattern recomputed in the trace from the attention call's own arguments ----
def traced(runner: Any, ids: torch.Tensor, batch_size: int, template: KeyAttention, remote: bool | str,
           progress: Callable[[int], None] | None = None, after: Callable[[int, Batch], None] | None = None,
           extra: Sequence[Reducer] = ()) -> tuple[list[KeyAttention], list[KeyBias]]:
    """Per layer of the nnsight model ``runner``, a :class:`KeyAttention` (like ``template``) and a
    :class:`KeyBias`, fed inside one trace per batch of ``ids`` (run where ``remote`` says:
    ``False`` here, ``True`` on NDIF, ``"local"`` simulated) by :func:`_feed_remote`.
    ``after(l, batch)`` runs in the trace after layer ``l``'s attention was fed (e.g. edits of block
    ``l`` and reads of its output, in forward order), feeding the reducers ``extra``. Between traces
    every state travels, as in :func:`probe.backends.nnsight_reduce`."""
    import nnsight

    from probe.backends import envoy_at, module_paths, shipped

    hf = hf_module(runner)
    arch = arch_for(hf)
    paths = module_paths(hf)
    where = [paths[id(get_path(block, arch.attn))] for block in decoder_layers(hf, arch)]
    att, bias = [template.fresh() for _ in where], [KeyBias() for _ in where]
    reducers = [*att, *bias, *extra]
    for start in range(0, ids.shape[0], batch_size):
        chunk = ids[start : start + batch_size]
        batch = Batch(chunk, start, None)
        with shipped("probe", "analyses") if remote else nullcontext(), torch.no_grad():
            with runner.trace(chunk, **({"remote": remote} if remote else {})):
                for l, (path, a, b) in enumerate(zip(where, att, bias)):
                    _feed_remote(envoy_at(runner, path).source, a, b, batch)
                    if after is not None:
                        after(l, batch)
                states = nnsight.save([dict(vars(r)) for r in reducers])
        for reducer, state in zip(reducers, states):
            vars(reducer).update(state)
        if progress:
            progress(chunk.shape[0])
    return att, bias


def on_device(reducer: Reducer, device: torch.device) -> Reducer:
    """``reducer`` with every tensor of its state (also inside tuples) on ``device``: a state that
    came back from a server is on the CPU, the next batch's tensors are on the server's device."""
    for name, held in vars(reducer).items():
        if isinstance(held, tuple) and any(isinstance(t, torch.Tensor) for t in held):
            setattr(reducer, name, tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in held))
        elif isinstance(held, torch.Tensor):
            setattr(reducer, name, held.to(device))
    return reducer


def _feed_remote(source: Any, att: KeyAttention, bias: KeyBias, batch: Batch) -> None:
    """Inside a trace (on the server): the arguments of the attention module's call
    ``attention_interface(self, q, k, v, mask, **kwargs)`` (``source``: nnsight's ``.source`` of
    the module), the family's ``eager_attention_forward`` on them with the mask made additive, and
    both reducers updated (their state moved to the tensors' device first)."""
    lines = source.compiled.source.split("\n")
    calls = [n for n in source.names
             if n.startswith("attention_interface_") and "attention_interface(" in lines[source.compiled.lines[n] - 1]]
    if len(calls) != 1:
        raise ProbeError(f"found {len(calls)} calls of attention_interface(...) in the attention module's forward "
                         f"({', '.join(calls) or 'none'}); sinks on a remote model need exactly one")
    args, kwargs = getattr(source, calls[0]).inputs
    module, query, key, value = args[:4]
    mask = args[4] if len(args) > 4 else kwargs.get("attention_mask")
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ProbeError(f"{type(module).__name__} has no eager_attention_forward in its modelling file")
    options = {k: v for k, v in kwargs.items() if k != "attention_mask"}
    _, pattern = eager(module, query, key, value, additive_mask(mask, query, key, kwargs.get("sliding_window")),
                       **{**options, "dropout": 0.0})
    on_device(att, query.device).update(pattern, batch)
    on_device(bias, query.device).update(qkv(query, key, value), batch)


def additive_mask(mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor,
                  sliding_window: int | None = None) -> torch.Tensor:
    """The additive mask (0 where a query sees a key, the dtype's minimum elsewhere, as transformers'
    eager mask) of what an attention call received: an additive mask as it is; SDPA's boolean mask
    (``True`` = attend); ``None`` (SDPA or flash attention applying causality itself): query ``i``
    (of the last ``T`` of ``S`` positions) sees key ``j`` when ``j <= i`` and, with a sliding
    window ``w``, ``i - j < w`` (transformers' ``sliding_window_overlay``)."""
    if mask is not None and mask.dtype != torch.bool:
        return mask
    if mask is None:
        t, s = query.shape[-2], key.shape[-2]
        i = torch.arange(s - t, s, device=query.device)[:, None]
        j = torch.arange(s, device=query.device)[None, :]
        mask = j <= i
        if sliding_window:
            mask &= i - j < sliding_window
        mask = mask[None, None]
    return torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, torch.finfo(query.dtype).min)
