"""Massive activations, their origin layer, the massive weights behind them and the super weight.

Definitions (thresholds are parameters):

- **Massive activation** (Sun et al. 2024, "Massive Activations in Large Language Models"): a
  residual-stream value ``v`` of layer ``l`` with ``|v| > abs_threshold`` (100) and
  ``|v| > ratio * median |h_l|`` (ratio 1000), the median taken over every entry of that
  layer's hidden state in the scan.
- **Origin layer** (House of Cards, arXiv 2410.01866): the first layer whose output
  (``hook_resid_post``) carries a massive activation that is still massive at the same
  (sequence, position, dim) in the next layer (massive activations persist across layers, Sun
  et al. §2; the persistence check drops one-layer spikes that only graze the threshold); also
  reported for ratios 100, 300, 1000 and 3000.
- **Top-k massive neurons**: the ``k`` dims of the FFN intermediate state
  ``act(W_gate x) * (W_up x)`` (the input of ``down_proj``) with the largest ``|value|`` at the
  origin layer, on the token carrying the massive activation (the most frequent carrier
  position/token, e.g. the first token; its strongest entry). The **massive weights**
  are those rows of ``W_up`` and ``W_gate`` (``W_in`` when not gated).
- **Super weight** (Yu et al. 2024, "The Super Weight in LLMs"): ``W_down[d, n]`` for the top
  massive residual dim ``d`` and the top neuron ``n``. **Candidates** in every layer: the
  neuron with the largest input spike to ``down_proj`` and the dim with the largest output
  spike, when both fall on the same token.
- **Precursor** of a massive dim: the first layer where that dim already stands out (its max
  ``|value|`` exceeds ``precursor_ratio`` (100) times the layer median), which on some models
  comes many layers before the origin.
- **Attribution**: the massive value at the origin layer split into the residual stream entering
  the block, the attention output and the FFN output (``other`` is what post-sublayer norms or
  parallel residuals add), so a massive activation that does not come from the FFN is reported
  as such.

The scan streams through :mod:`probe.reducers`; only one sequence is re-run with full tensors
of the origin layer, for the neurons and the attribution.

Backends: ``backend="torch"`` (default, forward hooks) or ``"nnsight"``; with nnsight,
``remote=True`` scans a model served by NDIF (``probe.models.load_remote(repo_id)``; API key
from ``NDIF_API_KEY`` or nnsight's config) and ``remote="local"`` runs nnsight's offline
simulation of that path on a loaded model. Everything is computed remotely, and only small
tensors come back: the reducers run inside each trace (their states travel: a 4097-bin histogram
per point for max/median, per-dim maxima, top-k and above-threshold entries), the weight reads
(``W_down[d, n]`` per layer, the row norms of ``W_up``/``W_gate`` at the origin layer) run in
one trace of one token, and the re-run of one sequence brings back the full hidden states of the
origin layer only (``seq_len x d_ff`` + 4 x ``seq_len x d_model`` values). A scan makes
``ceil(n_seqs / batch_size)`` requests for the streaming pass, one for the weights and, when
there is an origin layer, one for the re-run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from probe.arch import Arch, arch_for, n_layers, weight_view
from probe.arch import layer as block
from probe.backends import as_nnsight, call_on_model, hf_module
from probe.capture import capture, run_all
from probe.data import load_corpus, token_windows
from probe.display import Figured
from probe.errors import ProbeError
from probe.offload import held
from probe.reducers import DimMax, Exceed, Full, MaxMedian, TopK

RATIOS = (100.0, 300.0, 1000.0, 3000.0)


@dataclass
class LayerScan:
    """One layer's residual stream: ``max`` and ``median`` of ``|h|``, the ``top`` entries and the massive ones."""

    layer: int
    max: float
    median: float
    top: list[dict[str, Any]]
    massive: list[dict[str, Any]]
    ffn_max: float
    ffn_median: float

    @property
    def ratio(self) -> float:
        return self.max / self.median if self.median > 0 else float("inf")


@dataclass
class MassiveScan(Figured):
    """Result of :func:`scan`; ``to_dict()`` is JSON-safe."""

    model: str
    corpus: str
    n_seqs: int
    seq_len: int
    n_tokens: int
    abs_threshold: float
    ratio: float
    layers: list[LayerScan]
    origin_layer: int | None
    origin_by_ratio: dict[str, int | None]
    massive_dims: list[int]
    massive_tokens: list[dict[str, Any]]
    massive_neurons: list[int] = field(default_factory=list)
    neuron_values: list[float] = field(default_factory=list)
    massive_weights: dict[str, Any] = field(default_factory=dict)
    super_weight: dict[str, Any] | None = None
    super_weight_candidates: list[dict[str, Any]] = field(default_factory=list)
    precursors: list[dict[str, Any]] = field(default_factory=list)
    attribution: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = [{**asdict(l), "ratio": l.ratio} for l in self.layers]
        return out

    def figure(self) -> Any:
        """The residual-stream profile per layer (:func:`analyses.figures.residual_profile`)."""
        from analyses.figures import residual_profile

        return residual_profile(self)


def scan(
    model: Any,
    tokenizer: Any,
    *,
    name: str = "model",
    corpus: str = "stdlib",
    n_seqs: int = 16,
    seq_len: int = 128,
    k: int = 5,
    abs_threshold: float = 100.0,
    ratio: float = 1000.0,
    precursor_ratio: float = 100.0,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 8,
    backend: str = "torch",
    remote: bool | str = False,
) -> MassiveScan:
    """Scan ``n_seqs`` windows of ``corpus`` (protocol of :mod:`probe.data`) for massive activations.

    ``backend``: ``"torch"`` or ``"nnsight"``; ``remote`` (nnsight only): ``True`` runs on NDIF
    (``model`` = :func:`probe.models.load_remote`), ``"local"`` simulates that offline (see the
    module docstring for what travels). ``model`` may be an HF model or an nnsight model.
    """
    if backend not in ("torch", "nnsight"):
        raise ProbeError(f"scan runs on backend 'torch' or 'nnsight', not {backend!r}")
    rows = token_windows(tokenizer, load_corpus(corpus), seq_len=seq_len, n_seqs=n_seqs)
    runner = as_nnsight(model, remote, tokenizer) if backend == "nnsight" else model
    hf = hf_module(runner)
    arch = arch_for(hf)
    L = n_layers(hf)
    opts = {"backend": backend, "remote": remote}
    reduce_resid = {"top": TopK(max(k, 10)), "stats": MaxMedian(), "dims": DimMax(), "big": Exceed(abs_threshold)}
    with capture(runner, "blocks.*.hook_resid_post", reduce=reduce_resid, **opts) as resid, \
            capture(runner, ["blocks.*.mlp.hook_post", "blocks.*.mlp.hook_out"], reduce={"stats": MaxMedian(), "dims": DimMax()}, **opts) as ffn:
        for start in range(0, rows.shape[0], batch_size):
            run_all([resid, ffn], rows[start : start + batch_size])
            if progress:
                progress(min(batch_size, rows.shape[0] - start))
    tok = lambda i: tokenizer.convert_ids_to_tokens(int(i))  # noqa: E731
    layers: list[LayerScan] = []
    big_by_layer: list[list[dict[str, Any]]] = []
    for l in range(L):
        r = resid[f"blocks.{l}.hook_resid_post"]
        med = r["stats"].median
        top = [_entry(v, ix, t, tok) for v, ix, t in zip(r["top"].values, r["top"].indices, r["top"].tokens)]
        big = r["big"]
        entries = [_entry(v, ix, t, tok) for v, ix, t in zip(big.values, big.indices, big.tokens)]
        big_by_layer.append(entries)
        massive = [e for e in entries if abs(e["value"]) > ratio * med]
        post = ffn[f"blocks.{l}.mlp.hook_post"]["stats"]
        layers.append(LayerScan(l, r["stats"].max, med, top[: max(k, 10)], massive, post.max, post.median))
    origin_by_ratio = {f"{int(q)}x": _origin(layers, big_by_layer, q) for q in RATIOS}
    origin = _origin(layers, big_by_layer, ratio)
    result = MassiveScan(name, corpus, rows.shape[0], rows.shape[1], rows.numel(), abs_threshold, ratio, layers,
                         origin, origin_by_ratio, [], [])
    spikes = _spikes(ffn, L, tok, rows)
    cells = [(c["layer"], c["row"], c["col"]) for c in spikes]
    if origin is None:
        values, _ = call_on_model(runner, read_weights, cells, 0, [], input_ids=rows, remote=remote)
        result.super_weight_candidates = _candidates(spikes, values)
        return result
    massive = layers[origin].massive
    result.massive_dims = list(dict.fromkeys(e["dim"] for e in massive))
    result.massive_tokens = _token_summary(massive)
    result.precursors = _precursors(resid, layers, result.massive_dims, origin, precursor_ratio)
    main = result.massive_tokens[0]
    carrier = next(e for e in massive if (e["position"], e["token"]) == (main["position"], main["token"]))
    _neurons_and_weights(runner, arch, rows, result, carrier, k, cells, spikes, opts)
    return result


def read_weights(model: torch.nn.Module, cells: list[tuple[int, int, int]], layer: int,
                 names: list[str]) -> tuple[list[float], dict[str, torch.Tensor]]:
    """What the scan reads from the weights, in one call (one request when remote): the values
    ``W_down[d, n]`` of layer ``l`` for each ``(l, d, n)`` in ``cells``, and the row norms
    ``||W[n, :]||`` of each matrix in ``names`` at ``layer``. Blocks offloaded by accelerate
    (``device_map`` with ``"cpu"``/``"disk"`` entries) are loaded for the read."""
    from contextlib import ExitStack

    with ExitStack() as stack:  # accelerate-offloaded blocks hold meta tensors until their hook loads them
        for l in sorted({c[0] for c in cells} | ({layer} if names else set())):
            stack.enter_context(held(model, block(model, l)))
        values = [float(weight_view(model, l, "W_down").matrix[d, n]) for l, d, n in cells]
        norms = {w: weight_view(model, layer, w).matrix.float().norm(dim=1).cpu() for w in names}
    return values, norms


def _entry(value: torch.Tensor, index: torch.Tensor, token: torch.Tensor, tok: Callable[[int], str]) -> dict[str, Any]:
    return {"value": float(value), "batch": int(index[0]), "position": int(index[1]), "dim": int(index[-1]),
            "token": tok(token)}


def _origin(layers: list[LayerScan], big: list[list[dict[str, Any]]], ratio: float) -> int | None:
    """First layer with an entry above ``ratio`` x its median that stays so in the next layer."""
    def keys(l: int) -> set[tuple[int, int, int]]:
        med = layers[l].median
        return {(e["batch"], e["position"], e["dim"]) for e in big[l] if abs(e["value"]) > ratio * med}

    for l in range(len(layers)):
        here = keys(l)
        if here and (l + 1 == len(layers) or here & keys(l + 1)):
            return l
    return None


def _token_summary(massive: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which (position, token) pairs carry massive activations, most frequent first."""
    counts: dict[tuple[int, str], dict[str, Any]] = {}
    for e in massive:
        key = (e["position"], e["token"])
        item = counts.setdefault(key, {"position": e["position"], "token": e["token"], "count": 0, "dims": []})
        item["count"] += 1
        if e["dim"] not in item["dims"]:
            item["dims"].append(e["dim"])
    return sorted(counts.values(), key=lambda i: -i["count"])


def _precursors(resid: Any, layers: list[LayerScan], dims: list[int], origin: int, ratio: float) -> list[dict[str, Any]]:
    out = []
    for d in dims:
        curve = [float(resid[f"blocks.{l.layer}.hook_resid_post"]["dims"].abs[d]) / l.median for l in layers]
        first = next((l for l in range(origin + 1) if curve[l] > ratio), origin)
        out.append({"dim": d, "layer": first, "ratio_at_precursor": curve[first], "ratio_by_layer": curve})
    return out


def _spikes(ffn: Any, L: int, tok: Callable[[int], str], rows: torch.Tensor) -> list[dict[str, Any]]:
    """Per layer: the largest ``down_proj`` input spike (neuron ``n``) and output spike (dim ``d``)
    and whether they fall on the same token."""
    out = []
    for l in range(L):
        post = ffn[f"blocks.{l}.mlp.hook_post"]
        down = ffn[f"blocks.{l}.mlp.hook_out"]
        n = int(post["dims"].abs.argmax())
        d = int(down["dims"].abs.argmax())
        b, p = int(post["dims"].batch[n]), int(post["dims"].position[n])
        same = b == int(down["dims"].batch[d]) and p == int(down["dims"].position[d])
        out.append({
            "layer": l, "row": d, "col": n,
            "input_spike": float(post["dims"].values[n]), "input_ratio": float(post["dims"].abs[n]) / post["stats"].median,
            "output_spike": float(down["dims"].values[d]), "output_ratio": float(down["dims"].abs[d]) / down["stats"].median,
            "same_token": same, "position": p, "token": tok(rows[b, p]),
        })
    return out


def _candidates(spikes: list[dict[str, Any]], values: list[float]) -> list[dict[str, Any]]:
    """The spikes with ``value`` = ``W_down[d, n]``, the candidate super weight of each layer."""
    return [{**{key: s[key] for key in ("layer", "row", "col")}, "value": v,
             **{key: val for key, val in s.items() if key not in ("layer", "row", "col")}}
            for s, v in zip(spikes, values)]


def _neurons_and_weights(model: Any, arch: Arch, rows: torch.Tensor, result: MassiveScan, top: dict[str, Any],
                         k: int, cells: list[tuple[int, int, int]], spikes: list[dict[str, Any]],
                         opts: dict[str, Any]) -> None:
    """Re-run the sequence of the strongest massive entry with full tensors of the origin layer,
    then read the weights (candidates, massive-weight rows, super weight) in one call."""
    l, b, p, d = result.origin_layer, top["batch"], top["position"], top["dim"]
    points = [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_attn_out", f"blocks.{l}.mlp.hook_post",
              f"blocks.{l}.mlp.hook_out", f"blocks.{l}.hook_resid_post"]
    with capture(model, points, reduce=Full(), **opts) as cap:
        cap.run(rows[b : b + 1])
    post = cap[f"blocks.{l}.mlp.hook_post"][0, p]
    vals, idx = post.abs().topk(k)
    result.massive_neurons = idx.tolist()
    result.neuron_values = post[idx].tolist()
    up_name = "W_up" if arch.gated else "W_in"
    names = [up_name, "W_gate"] if arch.gated else [up_name]
    n = int(idx[0])
    values, norms = call_on_model(model, read_weights, [*cells, (l, d, n)], l, names, input_ids=rows,
                                  remote=opts["remote"])
    result.super_weight_candidates = _candidates(spikes, values[:-1])
    weights = {}
    for name in names:
        row_norms = norms[name]
        weights[name] = {"rows": idx.tolist(), "row_norms": row_norms[idx].tolist(),
                         "mean_row_norm": float(row_norms.mean()), "median_row_norm": float(row_norms.median())}
    result.massive_weights = {"layer": l, **weights}
    result.super_weight = {"layer": l, "row": d, "col": n, "value": values[-1]}
    parts = {
        "resid_pre": float(cap[f"blocks.{l}.hook_resid_pre"][0, p, d]),
        "attn_out": float(cap[f"blocks.{l}.hook_attn_out"][0, p, d]),
        "ffn_out": float(cap[f"blocks.{l}.mlp.hook_out"][0, p, d]),
    }
    total = float(cap[f"blocks.{l}.hook_resid_post"][0, p, d])
    parts["other"] = total - sum(parts.values())
    source = max(parts, key=lambda key: abs(parts[key]))
    result.attribution = {"layer": l, "position": p, "dim": d, "value": total, "parts": parts, "source": source,
                          "from_ffn": source == "ffn_out"}


def render_scan(result: MassiveScan, console: Any) -> None:
    """Print a scan as rich tables."""
    from rich.table import Table

    table = Table("layer", "max |h|", "median |h|", "max/median", "massive", "top (value @ pos, dim, token)",
                  title=f"Residual stream of {result.model} on {result.n_tokens} tokens of {result.corpus}")
    for layer in result.layers:
        t = layer.top[0]
        mark = " <- origin" if layer.layer == result.origin_layer else ""
        table.add_row(str(layer.layer), f"{layer.max:.1f}", f"{layer.median:.4f}", f"{layer.ratio:.0f}x",
                      f"{len(layer.massive)}{mark}", f"{t['value']:.1f} @ {t['position']}, {t['dim']}, {t['token']!r}")
    console.print(table)
    console.print(f"origin layer (|v| > {result.abs_threshold:g} and > {result.ratio:g}x median, persisting): "
                  f"{result.origin_layer}; by ratio: {result.origin_by_ratio}")
    if result.origin_layer is None:
        console.print("no massive activations at these thresholds")
        return
    console.print(f"massive dims: {result.massive_dims}; carried by: "
                  + ", ".join(f"{t['token']!r} at position {t['position']} (x{t['count']})" for t in result.massive_tokens))
    console.print(f"top-{len(result.massive_neurons)} massive neurons at layer {result.origin_layer}: {result.massive_neurons} "
                  f"(values {[round(v, 1) for v in result.neuron_values]})")
    sw = result.super_weight
    console.print(f"super weight: W_down[{sw['row']}, {sw['col']}] of layer {sw['layer']} = {sw['value']:.4f}")
    a = result.attribution
    console.print(f"attribution of {a['value']:.1f} (layer {a['layer']}, pos {a['position']}, dim {a['dim']}): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in a["parts"].items()) + f" -> from {a['source']}")
    for p in result.precursors:
        console.print(f"precursor of dim {p['dim']}: layer {p['layer']} ({p['ratio_at_precursor']:.0f}x median)")
    cands = [c for c in result.super_weight_candidates if c["same_token"] and c["output_ratio"] > 100]
    console.print("super-weight candidates (input and output spike on one token, output > 100x median): "
                  + "; ".join(f"layer {c['layer']} W_down[{c['row']}, {c['col']}] = {c['value']:.3f}" for c in cands))
