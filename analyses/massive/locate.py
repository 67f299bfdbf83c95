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
- **Carrier**: the position whose token carries massive activations at the origin layer in
  the most windows (usually position 0, the first token; ties go to the larger value), and its
  strongest entry there (``MassiveScan.carrier``: window, position, dim, value, token). Per
  massive dim, ``carriers`` counts the windows in which it is massive at all and on the first
  token; a dim massive in fewer than half the windows is reported in ``warnings`` (the picture
  then depends on the text rather than on a fixed sink, and may move with the window protocol:
  :mod:`analyses.massive.prepend`).
- **Top-k massive neurons**: the ``k`` dims of the FFN intermediate state
  ``act(W_gate x) * (W_up x)`` (the input of ``down_proj``) with the largest ``|value|`` at the
  origin layer, on the carrier token. The **massive weights** are those rows of
  ``Arch.ffn_in_names`` (``W_up`` and ``W_gate``, or ``W_in`` when not gated).
- **Super weight** (Yu et al. 2024, "The Super Weight in LLMs"): ``W_down[d, n]`` for the top
  massive residual dim ``d`` and the top neuron ``n``. **Candidates** in every layer: the
  neuron with the largest input spike to ``down_proj`` and the dim with the largest output
  spike, when both fall on the same token.
- **Precursor** of a massive dim: the first layer where that dim already stands out (its max
  ``|value|`` exceeds ``precursor_ratio`` (100) times the layer median), which on some models
  comes many layers before the origin.
- **Attribution**: the massive value at the origin layer split into the residual stream entering
  the block and what the attention and the FFN add to it (after any norm on their outputs;
  :func:`_attribution`), so a massive activation that does not come from the FFN is reported as
  such.

Windows follow the protocol of :mod:`probe.data` (``prepend``, default: what the model's
tokenizer puts in front of a plain call); the scan keeps them (``MassiveScan.windows``) and
records the protocol (``MassiveScan.protocol``).

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

import copy
from collections import Counter
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import torch

from probe.arch import Arch, arch_for, d_ff, n_layers, weight_view
from probe.arch import layer as block
from probe.backends import as_nnsight, call_on_model, check_backend, hf_module
from probe.capture import capture, one_sequence, run_all
from probe.data import load_corpus, token_windows, window_protocol
from probe.display import Figured
from probe.errors import ProbeError
from probe.offload import held
from probe.reducers import DimMax, Exceed, MaxMedian, TopK

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
        return _over(self.max, self.median)


@dataclass
class MassiveScan(Figured):
    """Result of :func:`scan`; ``to_dict()`` is JSON-safe; ``figure()`` is the residual-stream profile
    per layer (:func:`analyses.massive.figures.residual_profile`)."""

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
    protocol: dict[str, Any] = field(default_factory=dict)
    carrier: dict[str, Any] | None = None
    carriers: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    windows: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``windows`` (the token ids, which ``protocol`` and ``corpus`` reproduce)."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "windows"}
        out["layers"] = [{**asdict(l), "ratio": l.ratio} for l in self.layers]
        return out

    def carried_by(self, top: int = 3) -> str:
        """Which positions carry the massive activations, e.g. ``position 0 in 16 of 16 windows
        ('<|im_start|>' x16)``: the ``top`` positions, with their most frequent tokens."""
        if not self.massive_tokens:
            return "nothing"
        parts = []
        for t in self.massive_tokens[:top]:
            tokens = ", ".join(f"{tok!r} x{n}" for tok, n in list(t["tokens"].items())[:3])
            more = len(t["tokens"]) - 3
            parts.append(f"position {t['position']} in {t['windows']} of {self.n_seqs} windows ({tokens}"
                         + (f", {more} more tokens" if more > 0 else "") + ")")
        rest = len(self.massive_tokens) - top
        return "; ".join(parts) + (f"; {rest} more positions" if rest > 0 else "")


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
    prepend: str | int | None = "auto",
    windows: torch.Tensor | None = None,
    riders: Sequence[AbstractContextManager[Any]] = (),
) -> MassiveScan:
    """Scan ``n_seqs`` windows of ``corpus`` (protocol of :mod:`probe.data`, ``prepend``) for
    massive activations; or the token ids ``windows`` ``(n, seq_len)`` given directly (then
    ``corpus`` only names them and ``prepend`` says what their first tokens are, e.g. ``None``;
    ``tokenizer`` may be ``None``, token strings are then the ids).

    ``backend``: ``"torch"`` or ``"nnsight"``; ``remote`` (nnsight only): ``True`` runs on NDIF
    (``model`` = :func:`probe.models.load_remote`), ``"local"`` simulates that offline (see the
    module docstring for what travels). ``model`` may be an HF model or an nnsight model.

    ``riders``: context managers that each yield an open :class:`probe.capture.Capture` of the same
    model and backend (e.g. :meth:`analyses.geometry.layers.GeometryPass.feeding`); they are open
    only around the streaming pass, so its forward passes feed them too and the later re-run of
    one sequence does not (one pass over the windows for the scan and the geometry).
    """
    backend, remote = check_backend(backend, remote, allowed=("torch", "nnsight"))
    protocol = window_protocol(tokenizer, prepend)
    if windows is None:
        windows = token_windows(tokenizer, load_corpus(corpus), seq_len=seq_len, n_seqs=n_seqs, prepend=prepend)
    else:
        windows = torch.as_tensor(windows, dtype=torch.long)
        if windows.dim() != 2 or windows.numel() == 0:
            raise ProbeError(f"windows must be a non-empty (n, seq_len) tensor of token ids, got shape {tuple(windows.shape)}")
    runner = as_nnsight(model, remote, tokenizer) if backend == "nnsight" else model
    hf = hf_module(runner)
    if not 1 <= k <= d_ff(hf):
        raise ProbeError(f"k={k}: the number of massive neurons must be between 1 and the FFN width {d_ff(hf)}")
    arch = arch_for(hf)
    L = n_layers(hf)
    opts = {"backend": backend, "remote": remote}
    reduce_resid = {"top": TopK(max(k, 10)), "stats": MaxMedian(), "dims": DimMax(), "big": Exceed(abs_threshold)}
    with capture(runner, "blocks.*.hook_resid_post", reduce=reduce_resid, **opts) as resid, \
            capture(runner, ["blocks.*.mlp.hook_post", "blocks.*.mlp.hook_out"], reduce={"stats": MaxMedian(), "dims": DimMax()}, **opts) as ffn, \
            ExitStack() as stack:
        extra = [stack.enter_context(r) for r in riders]
        for start in range(0, windows.shape[0], batch_size):
            run_all([resid, ffn, *extra], windows[start : start + batch_size])
            if progress:
                progress(min(batch_size, windows.shape[0] - start))
    tok = (lambda i: str(int(i))) if tokenizer is None else (lambda i: tokenizer.convert_ids_to_tokens(int(i)))
    layers: list[LayerScan] = []
    big_by_layer: list[list[dict[str, Any]]] = []
    for l in range(L):
        r = resid[f"blocks.{l}.hook_resid_post"]
        med = r["stats"].median
        top = _entries(r["top"], tok)
        entries = _entries(r["big"], tok, above=min(ratio, *RATIOS) * med)  # no ratio below looks at the others
        big_by_layer.append(entries)
        massive = [e for e in entries if abs(e["value"]) > ratio * med]
        post = ffn[f"blocks.{l}.mlp.hook_post"]["stats"]
        layers.append(LayerScan(l, r["stats"].max, med, top[: max(k, 10)], massive, post.max, post.median))
    origin_by_ratio = {f"{int(q)}x": _origin(layers, big_by_layer, q) for q in RATIOS}
    origin = _origin(layers, big_by_layer, ratio)
    result = MassiveScan(name, corpus, windows.shape[0], windows.shape[1], windows.numel(), abs_threshold, ratio, layers,
                         origin, origin_by_ratio, [], [], protocol=protocol.to_dict(), windows=windows)
    spikes = _spikes(ffn, L, tok, windows)
    cells = [(c["layer"], c["row"], c["col"]) for c in spikes]
    if origin is None:
        values, _ = call_on_model(runner, read_weights, cells, 0, [], input_ids=windows, remote=remote)
        result.super_weight_candidates = _candidates(spikes, values)
        return result
    massive = layers[origin].massive
    result.massive_tokens = _token_summary(massive)
    position = result.massive_tokens[0]["position"]
    result.carrier = next(e for e in massive if e["position"] == position)  # entries come strongest first
    result.massive_dims = list(dict.fromkeys([result.carrier["dim"], *(e["dim"] for e in massive)]))
    result.carriers = _carriers(massive, result.massive_dims, windows.shape[0])
    result.warnings = _fragile(result.carriers)
    result.precursors = _precursors(resid, layers, result.massive_dims, origin, precursor_ratio)
    _neurons_and_weights(runner, arch, windows, result, result.carrier, k, cells, spikes, opts)
    return result


def scan_windows(tokenizer: Any, result: MassiveScan) -> torch.Tensor:
    """The token windows ``result`` scanned: kept on the result, else re-cut from its corpus
    with its protocol (a scan loaded from JSON)."""
    if result.windows is not None:
        return result.windows
    prepend = result.protocol["ids"] if result.protocol else "auto"
    return token_windows(tokenizer, load_corpus(result.corpus), seq_len=result.seq_len, n_seqs=result.n_seqs,
                         prepend=prepend)


def read_weights(model: torch.nn.Module, cells: list[tuple[int, int, int]], layer: int,
                 names: list[str]) -> tuple[list[float], dict[str, torch.Tensor]]:
    """What the scan reads from the weights, in one call (one request when remote): the values
    ``W_down[d, n]`` of layer ``l`` for each ``(l, d, n)`` in ``cells``, and the row norms
    ``||W[n, :]||`` of each matrix in ``names`` at ``layer``. Blocks offloaded by accelerate
    (``device_map`` with ``"cpu"``/``"disk"`` entries) are loaded for the read."""
    with ExitStack() as stack:  # accelerate-offloaded blocks hold meta tensors until their hook loads them
        for l in sorted({c[0] for c in cells} | ({layer} if names else set())):
            stack.enter_context(held(model, block(model, l)))
        values = [float(weight_view(model, l, "W_down").matrix[d, n]) for l, d, n in cells]
        norms = {w: weight_view(model, layer, w).matrix.float().norm(dim=1).cpu() for w in names}
    return values, norms


def _entries(found: Any, tok: Callable[[int], str], above: float = -1.0) -> list[dict[str, Any]]:
    """The entries of a :class:`probe.reducers.TopKResult` with ``|value| > above`` as dicts (value,
    batch, position, dim, token); read as Python lists once (iterating the tensors makes a view per
    entry)."""
    names: dict[int, str] = {}
    out = []
    keep = found.values.double().abs() > above  # in float64, as the later comparisons of the Python floats
    for v, ix, t in zip(found.values[keep].tolist(), found.indices[keep].tolist(), found.tokens[keep].tolist()):
        if t not in names:
            names[t] = tok(t)
        out.append({"value": v, "batch": ix[0], "position": ix[1], "dim": ix[-1], "token": names[t]})
    return out


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
    """Which positions carry massive activations, in the most windows first (then by value):
    per position the number of ``windows``, of massive entries (``count``), the ``dims``, the
    tokens seen there with their window counts (``tokens``) and the most frequent one (``token``)."""
    by: dict[int, dict[str, Any]] = {}
    for e in massive:  # strongest first
        item = by.setdefault(e["position"], {"position": e["position"], "count": 0, "dims": [], "_windows": {},
                                             "max": abs(e["value"])})
        item["count"] += 1
        item["_windows"].setdefault(e["batch"], e["token"])
        if e["dim"] not in item["dims"]:
            item["dims"].append(e["dim"])
    out = []
    for item in sorted(by.values(), key=lambda i: (-len(i["_windows"]), -i["max"])):
        tokens = Counter(item.pop("_windows").values())
        del item["max"]
        out.append({**item, "windows": sum(tokens.values()), "token": tokens.most_common(1)[0][0],
                    "tokens": dict(tokens.most_common())})
    return out


def _carriers(massive: list[dict[str, Any]], dims: list[int], n_windows: int) -> list[dict[str, Any]]:
    """Per massive dim: in how many windows it is massive at all (``windows``) and on the first
    token (``first_token``), and the positions carrying it (position -> windows)."""
    out = []
    for d in dims:
        seen = {(e["batch"], e["position"]) for e in massive if e["dim"] == d}
        positions = Counter(p for _, p in seen)
        out.append({"dim": d, "n_windows": n_windows, "windows": len({b for b, _ in seen}),
                    "first_token": positions.get(0, 0), "positions": {str(p): c for p, c in positions.most_common()}})
    return out


def _fragile(carriers: list[dict[str, Any]]) -> list[str]:
    """A warning per massive dim carried by fewer than half the windows."""
    return [f"massive dim {c['dim']} is carried by {c['windows']} of {c['n_windows']} windows only (first token: "
            f"{c['first_token']}): the picture depends on the text, not on a fixed sink, and may move with the "
            "window protocol (compare with --compare-prepend)"
            for c in carriers if 2 * c["windows"] < c["n_windows"]]


def _precursors(resid: Any, layers: list[LayerScan], dims: list[int], origin: int, ratio: float) -> list[dict[str, Any]]:
    out = []
    for d in dims:
        curve = [_over(float(resid[f"blocks.{l.layer}.hook_resid_post"]["dims"].abs[d]), l.median) for l in layers]
        first = next((l for l in range(origin + 1) if curve[l] > ratio), origin)
        out.append({"dim": d, "layer": first, "ratio_at_precursor": curve[first], "ratio_by_layer": curve})
    return out


def _over(value: float, median: float) -> float:
    """``value / median``; ``inf`` when the median is 0 (a ReLU FFN such as OPT's leaves most
    neurons at exactly 0) and the value is not, 0 when both are."""
    if median > 0:
        return value / median
    return float("inf") if value > 0 else 0.0


def _spikes(ffn: Any, L: int, tok: Callable[[int], str], windows: torch.Tensor) -> list[dict[str, Any]]:
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
            "input_spike": float(post["dims"].values[n]), "input_ratio": _over(float(post["dims"].abs[n]), post["stats"].median),
            "output_spike": float(down["dims"].values[d]), "output_ratio": _over(float(down["dims"].abs[d]), down["stats"].median),
            "same_token": same, "position": p, "token": tok(windows[b, p]),
        })
    return out


def _candidates(spikes: list[dict[str, Any]], values: list[float]) -> list[dict[str, Any]]:
    """The spikes with ``value`` = ``W_down[d, n]``, the candidate super weight of each layer."""
    return [{**{key: s[key] for key in ("layer", "row", "col")}, "value": v,
             **{key: val for key, val in s.items() if key not in ("layer", "row", "col")}}
            for s, v in zip(spikes, values)]


def _neurons_and_weights(model: Any, arch: Arch, windows: torch.Tensor, result: MassiveScan, top: dict[str, Any],
                         k: int, cells: list[tuple[int, int, int]], spikes: list[dict[str, Any]],
                         opts: dict[str, Any]) -> None:
    """Re-run the sequence of the strongest massive entry with full tensors of the origin layer,
    then read the weights (candidates, massive-weight rows, super weight) in one call."""
    l, b, p, d = result.origin_layer, top["batch"], top["position"], top["dim"]
    points = [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_attn_out", f"blocks.{l}.mlp.hook_post",
              f"blocks.{l}.mlp.hook_out", f"blocks.{l}.hook_resid_post"]
    if arch.sequential:
        points.insert(2, f"blocks.{l}.hook_resid_mid")
    full = one_sequence(model, windows[b], points, **opts)
    post = full[f"blocks.{l}.mlp.hook_post"][p]
    vals, idx = post.abs().topk(k)
    result.massive_neurons = idx.tolist()
    result.neuron_values = post[idx].tolist()
    names = list(arch.ffn_in_names)
    n = int(idx[0])
    values, norms = call_on_model(model, read_weights, [*cells, (l, d, n)], l, names, input_ids=windows,
                                  remote=opts["remote"])
    result.super_weight_candidates = _candidates(spikes, values[:-1])
    weights = {}
    for name in names:
        row_norms = norms[name]
        weights[name] = {"rows": idx.tolist(), "row_norms": row_norms[idx].tolist(),
                         "mean_row_norm": float(row_norms.mean()), "median_row_norm": float(row_norms.median())}
    result.massive_weights = {"layer": l, **weights}
    result.super_weight = {"layer": l, "row": d, "col": n, "value": values[-1]}
    result.attribution = _attribution(arch, {name.split(".", 2)[-1]: full[name][p, d].item() for name in points
                                             if not name.endswith("hook_post")}, l, p, d)


def _attribution(arch: Arch, at: dict[str, float], l: int, p: int, d: int) -> dict[str, Any]:
    """Split the massive value ``hook_resid_post`` into what enters the block and what each sublayer
    adds. Sequential blocks: ``attn_out = resid_mid - resid_pre`` and ``ffn_out = resid_post -
    resid_mid``, so a norm on a sublayer's output (Gemma 2/3, OLMo-2) is part of its share and the
    split is exact. Parallel blocks (GPT-NeoX): ``resid_post = resid_pre + attn + ffn``, exact too.
    Post-LN blocks (BERT) normalise the sum, so their parts are the norm's inputs and ``other``
    the norm's doing: ``exact`` is then ``False`` and ``note`` says why."""
    total = at["hook_resid_post"]
    if arch.sequential:
        parts = {"resid_pre": at["hook_resid_pre"], "attn_out": at["hook_resid_mid"] - at["hook_resid_pre"],
                 "ffn_out": total - at["hook_resid_mid"]}
    else:
        parts = {"resid_pre": at["hook_resid_pre"], "attn_out": at["hook_attn_out"], "ffn_out": at["mlp.hook_out"]}
    parts["other"] = total - sum(parts.values())
    exact = arch.causal or arch.sequential  # BERT-style post-LN is the one family whose sum is normalised
    source = max(parts, key=lambda key: abs(parts[key]))
    out = {"layer": l, "position": p, "dim": d, "value": total, "parts": parts, "source": source,
           "from_ffn": source == "ffn_out", "exact": exact}
    if not exact:
        out["note"] = "post-LN block: the parts are the inputs of the block's final norm, not additive shares"
    return out
