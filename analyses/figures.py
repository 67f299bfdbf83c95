"""Plotly figures of a massive-activation scan, its origin layer and the ablations.

Each function returns a :class:`plotly.graph_objects.Figure` (template ``plotly_white``) with
titles, axis labels and hover text giving layer, token, position, dim and value where they apply:

- :func:`residual_profile` — top-1/2/3 and median ``|h|`` of the residual stream per layer (Sun et
  al. 2024, Fig. 1 style), the absolute threshold, the origin and precursor layers;
- :func:`ratio_profile` — max / median ``|h|`` per layer against the 100x-3000x ratios;
- :func:`massive_tokens` — which (position, token) pairs carry the massive activations;
- :func:`origin_heatmap`, :func:`neuron_profile`, :func:`weight_row_norms` — the origin layer of
  one sequence, from an :class:`OriginDetail` (:func:`origin_detail` re-runs that one sequence,
  because the streaming scan keeps no full tensors);
- :func:`ablation_figure` — perplexity (and accuracy) of the ablation plans across ``k``.

Token strings are user data: wherever Plotly renders its HTML subset (titles, annotations, tick
labels, trace names, hover text including ``%{customdata}``), they are passed through
:func:`html.escape`, so ``<b>`` shows as text and never as markup.
:func:`analyses.static.save_png` renders any of these figures to PNG without a browser.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from analyses.massive import RATIOS, MassiveScan, scan_windows
from probe.arch import arch_for, weight_view
from probe.capture import capture
from probe.display import Figured
from probe.errors import ProbeError
from probe.reducers import Full

TEMPLATE = "plotly_white"
TOP_COLORS = ("#EF553B", "#FFA15A", "#AB63FA")
MEDIAN_COLOR = "#636EFA"
HIGHLIGHT = "#D62728"
MUTED = "#9AA0A6"
MODE_COLORS = {"zero": "#EF553B", "retain": "#00CC96", "random": "#636EFA", "super": "#AB63FA",
               "residual-zero": "#FFA15A", "residual-mean": "#19D3F3"}
LABEL_BG = "rgba(255,255,255,0.8)"


def esc(text: Any) -> str:
    """``text`` made safe for Plotly's HTML subset (titles, annotations, ticks, hover)."""
    return html.escape(str(text), quote=False)


def _layout(fig: go.Figure, title: str, x: str, y: str, **kwargs: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.02, "xanchor": "left"},
                      xaxis_title=x, yaxis_title=y, hovermode="closest", **kwargs)
    return fig


def _log(y: float) -> float:
    """Annotation coordinate on a log axis: Plotly places annotations in log10 units there (shapes,
    e.g. ``add_hline``, take data values), so ``add_hline(annotation_text=...)`` lands off-scale."""
    return math.log10(y)


def _note(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 14})
    return fig


# ---------------------------------------------------------------------------------------------
# per-layer profiles (first report section)
# ---------------------------------------------------------------------------------------------

def _distinct_top(entries: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` largest ``|value|`` entries, copies (the same token, position, dim and value in
    several sequences, e.g. the shared first token) counted once."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for e in sorted(entries, key=lambda e: -abs(e["value"])):
        key = (e["position"], e["dim"], e["token"], f"{e['value']:.5g}")
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out[:n]


def _mark_layers(fig: go.Figure, scan: MassiveScan) -> None:
    """Vertical lines at the origin layer and the precursor layers of the massive dims."""
    if scan.origin_layer is not None:
        fig.add_vline(x=scan.origin_layer, line={"color": HIGHLIGHT, "width": 1.5},
                      annotation_text=f"origin layer {scan.origin_layer}", annotation_position="top left",
                      annotation_font={"color": HIGHLIGHT}, annotation_bgcolor=LABEL_BG)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for p in scan.precursors:
        if p["layer"] != scan.origin_layer:
            by_layer[p["layer"]].append(p["dim"])
    for i, (layer, dims) in enumerate(sorted(by_layer.items())):
        fig.add_vline(x=layer, line={"color": "#555", "width": 1, "dash": "dot"},
                      annotation_text=f"precursor layer {layer} (dim {', '.join(map(str, dims))})",
                      annotation_position="bottom right", annotation_bgcolor=LABEL_BG,
                      annotation_yshift=18 * i)  # stacked, so neighbouring layers' labels do not overlap


def residual_profile(scan: MassiveScan) -> go.Figure:
    """Top-1/2/3 ``|h|`` (distinct entries) and median ``|h|`` of the residual stream per layer, log
    scale, with the absolute threshold of a massive activation and the origin/precursor layers."""
    layers = [l.layer for l in scan.layers]
    fig = go.Figure()
    tops = [_distinct_top(l.top, 3) for l in scan.layers]
    for i in range(3):
        picked = [t[i] if len(t) > i else None for t in tops]
        fig.add_trace(go.Scatter(
            x=layers, y=[abs(e["value"]) if e else None for e in picked], name=f"top-{i + 1} |h|",
            mode="lines+markers", line={"color": TOP_COLORS[i], "width": 2.5 - 0.5 * i}, marker={"size": 5},
            customdata=[[esc(e["token"]), e["position"], e["dim"], e["value"], e.get("batch", 0)] if e else
                        [None] * 5 for e in picked],
            hovertemplate=f"<b>top-{i + 1}</b> · layer %{{x}}<br>|h| = %{{y:.4g}} (h = %{{customdata[3]:.4g}})<br>"
                          "token %{customdata[0]} · position %{customdata[1]} · dim %{customdata[2]}"
                          " · sequence %{customdata[4]}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=layers, y=[l.median for l in scan.layers], name="median |h|", mode="lines+markers",
        line={"color": MEDIAN_COLOR, "width": 2, "dash": "dash"}, marker={"size": 5},
        hovertemplate="<b>median</b> · layer %{x}<br>median |h| = %{y:.4g}<extra></extra>"))
    fig.add_hline(y=scan.abs_threshold, line={"color": "#444", "width": 1, "dash": "dash"})
    fig.add_annotation(x=1, xref="x domain", y=_log(scan.abs_threshold), yref="y", xanchor="right", yanchor="top",
                       text=f"massive: |h| > {scan.abs_threshold:g}", showarrow=False, bgcolor=LABEL_BG)
    _mark_layers(fig, scan)
    return _layout(fig, f"Residual stream of {esc(scan.model)}: largest and median |h| per layer "
                        f"({scan.n_tokens} tokens of {esc(scan.corpus)})",
                   "layer", "|h| (log scale)", yaxis_type="log", height=480,
                   legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0})


def ratio_profile(scan: MassiveScan) -> go.Figure:
    """Max / median ``|h|`` per layer (log scale) and, per massive dim, that dim's max over the
    layer median; horizontal lines at 100x, 300x, 1000x, 3000x labelled with the origin layer
    each ratio gives, so precursor and origin layers both show."""
    layers = [l.layer for l in scan.layers]
    fig = go.Figure()
    top = [_distinct_top(l.top, 1)[0] for l in scan.layers]
    fig.add_trace(go.Scatter(
        x=layers, y=[l.ratio for l in scan.layers], name="max / median |h|", mode="lines+markers",
        line={"color": TOP_COLORS[0], "width": 2.5}, marker={"size": 5},
        customdata=[[esc(e["token"]), e["position"], e["dim"], e["value"], l.median] for e, l in zip(top, scan.layers)],
        hovertemplate="layer %{x}<br>max / median = %{y:.4g}x<br>max h = %{customdata[3]:.4g} at token "
                      "%{customdata[0]} · position %{customdata[1]} · dim %{customdata[2]}<br>"
                      "median |h| = %{customdata[4]:.4g}<extra></extra>"))
    for i, p in enumerate(scan.precursors):
        fig.add_trace(go.Scatter(
            x=layers, y=p["ratio_by_layer"], name=f"dim {p['dim']}: max |h| / median", mode="lines",
            line={"color": TOP_COLORS[2 - i % 2], "width": 1.5, "dash": "dot"},
            customdata=[p["dim"]] * len(layers),
            hovertemplate="layer %{x}<br>dim %{customdata}: max |h| / median = %{y:.4g}x<extra></extra>"))
    for q in RATIOS:
        origin = scan.origin_by_ratio.get(f"{int(q)}x")
        used = q == scan.ratio
        fig.add_hline(y=q, line={"color": "#444" if used else "#999", "width": 1.5 if used else 1,
                                 "dash": "dash" if used else "dot"})
        fig.add_annotation(x=1.01, xref="x domain", y=_log(q), yref="y", xanchor="left", yanchor="middle",
                           showarrow=False, font={"size": 11, "color": "#222" if used else "#666"},
                           text=f"{q:g}x: origin {'none' if origin is None else origin}")
    _mark_layers(fig, scan)
    return _layout(fig, f"Max / median |h| per layer of {esc(scan.model)} (massive: > {scan.ratio:g}x and "
                        f"|h| > {scan.abs_threshold:g}, persisting)",
                   "layer", "max / median |h| (log scale)", yaxis_type="log", height=460,
                   margin={"r": 140}, legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0})


def massive_tokens(scan: MassiveScan) -> go.Figure:
    """Massive entries counted by the (position, token) that carries them, summed over sequences
    and layers; one stacked bar per massive dim."""
    counts: dict[tuple[int, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for layer in scan.layers:
        for e in layer.massive:
            counts[(e["position"], e["token"])][e["dim"]].append(layer.layer)
    fig = go.Figure()
    title = f"Tokens carrying massive activations in {esc(scan.model)} (all layers and sequences)"
    if not counts:
        return _note(_layout(fig, title, "position: token", "massive entries"),
                     "no massive activations at these thresholds")
    keys = sorted(counts, key=lambda k: (-sum(len(v) for v in counts[k].values()), k[0]))
    labels = [f"{p}: {esc(t)}" for p, t in keys]
    dims = sorted({d for k in keys for d in counts[k]}, key=lambda d: -sum(len(counts[k][d]) for k in keys))
    for i, d in enumerate(dims):
        fig.add_trace(go.Bar(
            x=labels, y=[len(counts[k][d]) for k in keys], name=f"dim {d}",
            marker={"color": (TOP_COLORS + (MEDIAN_COLOR, "#00CC96"))[i % 5]},
            customdata=[[esc(t), p, d, _span(counts[(p, t)][d])] for p, t in keys],
            hovertemplate="token %{customdata[0]} · position %{customdata[1]} · dim %{customdata[2]}<br>"
                          "%{y} massive entries, layers %{customdata[3]}<extra></extra>"))
    return _layout(fig, title, "position: token", "massive entries (count)", barmode="stack", height=420,
                   xaxis_type="category")


def _span(layers: list[int]) -> str:
    u = sorted(set(layers))
    if not u:
        return "none"
    return f"{u[0]}-{u[-1]}" if u == list(range(u[0], u[-1] + 1)) and len(u) > 1 else ", ".join(map(str, u))


# ---------------------------------------------------------------------------------------------
# the origin layer of one sequence
# ---------------------------------------------------------------------------------------------

@dataclass
class OriginDetail(Figured):
    """Full tensors of one sequence at one layer (by default the scan's origin layer).

    ``resid``: the residual stream ``hook_resid_post`` ``(position, d_model)``; ``post``: the FFN
    intermediate state ``act(W_gate x) * (W_up x)`` ``(d_ff,)`` at ``position``, the token with the
    largest ``|h|`` (at ``dim``); ``neurons``: the top-``k`` ``|post|`` dims; ``row_norms``: the L2
    norm of every row of ``W_up`` and ``W_gate`` (``W_in`` when not gated) of that layer;
    ``median``, ``abs_threshold``, ``ratio``: the scan's layer median and thresholds, which mark
    the massive cells of ``resid``.
    """

    model: str
    layer: int
    ids: list[int]
    tokens: list[str]
    position: int
    dim: int
    resid: np.ndarray
    post: np.ndarray
    neurons: list[int]
    row_norms: dict[str, np.ndarray]
    median: float
    abs_threshold: float
    ratio: float

    @property
    def massive_mask(self) -> np.ndarray:
        a = np.abs(self.resid)
        return (a > self.abs_threshold) & (a > self.ratio * self.median)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "layer": self.layer, "ids": list(self.ids), "tokens": list(self.tokens),
                "position": self.position, "dim": self.dim, "resid": self.resid.tolist(),
                "post": self.post.tolist(), "neurons": list(self.neurons),
                "row_norms": {k: v.tolist() for k, v in self.row_norms.items()},
                "median": self.median, "abs_threshold": self.abs_threshold, "ratio": self.ratio}

    def figure(self) -> go.Figure:
        """The |activation| heat map over (position x dim) at the origin layer."""
        return origin_heatmap(self)


def carrier_ids(tokenizer: Any, scan: MassiveScan) -> torch.Tensor:
    """The scan's window that carries its strongest massive activation (``scan.carrier``)."""
    if scan.carrier is None:
        raise ProbeError("the scan found no massive activations; pass the token ids of a sequence to origin_detail")
    return scan_windows(tokenizer, scan)[scan.carrier["batch"]]


def origin_detail(model: torch.nn.Module, tokenizer: Any, scan: MassiveScan, ids: torch.Tensor | None = None,
                  *, layer: int | None = None, k: int | None = None) -> OriginDetail:
    """Re-run one sequence (``ids``, default :func:`carrier_ids`) with full tensors of ``layer``
    (default the origin layer): one forward pass, two hook points, plus the weight row norms."""
    layer = scan.origin_layer if layer is None else layer
    if layer is None:
        raise ProbeError("the scan found no origin layer; pass layer= explicitly")
    if not 0 <= layer < len(scan.layers):
        raise ProbeError(f"layer {layer} is out of range 0..{len(scan.layers) - 1}")
    ids = carrier_ids(tokenizer, scan) if ids is None else torch.as_tensor(ids)
    ids = ids.reshape(-1)
    points = [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.mlp.hook_post"]
    with capture(model, points, reduce=Full(torch.float32)) as cap:
        cap.run(ids[None])
    resid = cap[points[0]][0]
    flat = int(resid.abs().argmax())
    position, dim = divmod(flat, resid.shape[1])
    post = cap[points[1]][0, position]
    k = k or len(scan.massive_neurons) or 5
    arch = arch_for(model)
    norms = {n: weight_view(model, layer, n, arch).matrix.float().norm(dim=1).cpu().numpy() for n in arch.ffn_in_names}
    return OriginDetail(
        model=scan.model, layer=layer, ids=ids.tolist(), tokens=tokenizer.convert_ids_to_tokens(ids.tolist()),
        position=position, dim=dim, resid=resid.numpy(), post=post.numpy(),
        neurons=post.abs().topk(k).indices.tolist(), row_norms=norms,
        median=scan.layers[layer].median, abs_threshold=scan.abs_threshold, ratio=scan.ratio)


def _position_labels(detail: OriginDetail) -> list[str]:
    return [f"{p}: {esc(t)}" for p, t in enumerate(detail.tokens)]


def origin_heatmap(detail: OriginDetail) -> go.Figure:
    """``log10 |h|`` of the residual stream at the layer over (position x dim) for one sequence;
    massive cells circled."""
    a = np.abs(detail.resid).astype(np.float32)
    z = np.log10(np.maximum(a, 1e-6)).astype(np.float32)
    labels = _position_labels(detail)
    fig = go.Figure(go.Heatmap(
        z=z, x=np.arange(a.shape[1]), y=labels, customdata=detail.resid.astype(np.float32),
        colorscale="Viridis", zmin=float(np.floor(np.percentile(z, 1))), zmax=float(z.max()),
        colorbar={"title": {"text": "log10 |h|"}},
        hovertemplate="position: token %{y}<br>dim %{x}<br>h = %{customdata:.4g} (log10 |h| = %{z:.2f})"
                      f"<extra>layer {detail.layer}</extra>"))
    pos, dims = np.nonzero(detail.massive_mask)
    if len(pos):
        fig.add_trace(go.Scatter(
            x=dims, y=[labels[p] for p in pos], mode="markers", name="massive", showlegend=False,
            marker={"symbol": "circle-open", "size": 14, "color": HIGHLIGHT, "line": {"width": 2}},
            customdata=[[esc(detail.tokens[p]), int(p), int(d), float(detail.resid[p, d])] for p, d in zip(pos, dims)],
            hovertemplate="<b>massive</b><br>token %{customdata[0]} · position %{customdata[1]} · dim %{customdata[2]}"
                          f"<br>h = %{{customdata[3]:.4g}}<extra>layer {detail.layer}</extra>"))
    p, d = detail.position, detail.dim
    fig.add_annotation(x=d, y=labels[p], text=f"max h = {detail.resid[p, d]:.4g} (dim {d}, position {p})",
                       showarrow=True, arrowhead=2, ax=-90, ay=40, xanchor="right", bgcolor=LABEL_BG,
                       font={"color": HIGHLIGHT})
    height = int(min(900, max(420, 11 * len(labels) + 170)))
    return _layout(fig, f"|h| at the output of layer {detail.layer} of {esc(detail.model)}, one sequence "
                        f"({len(labels)} tokens); massive cells circled",
                   "residual dim", "position: token", height=height,
                   yaxis={"autorange": "reversed", "type": "category", "tickfont": {"size": 9}})


def neuron_profile(detail: OriginDetail) -> go.Figure:
    """``|value|`` of the FFN intermediate state over the ``d_ff`` neurons on the massive token, the
    top-``k`` neurons highlighted and labelled."""
    post = detail.post
    a = np.abs(post)
    top = list(detail.neurons)
    rest = np.setdiff1d(np.arange(len(post)), top)
    tok = esc(detail.tokens[detail.position])
    info = [tok, detail.position, detail.layer]
    hover = ("neuron %{x}<br>|value| = %{y:.4g} (value %{customdata[0]:.4g})<br>token %{customdata[1]} · "
             "position %{customdata[2]} · layer %{customdata[3]}<extra></extra>")
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=rest, y=a[rest], mode="markers", name="other neurons", marker={"color": MUTED, "size": 4},
        customdata=[[float(post[i]), *info] for i in rest], hovertemplate=hover))
    fig.add_trace(go.Scatter(
        x=top, y=a[top], mode="markers+text", name=f"top-{len(top)} massive neurons",
        marker={"color": HIGHLIGHT, "size": 10, "line": {"color": "white", "width": 1}},
        text=[str(i) for i in top], textposition="top center", textfont={"color": HIGHLIGHT, "size": 11},
        customdata=[[float(post[i]), *info] for i in top], hovertemplate=hover))
    return _layout(fig, f"FFN intermediate state act(W_gate x) * W_up x at layer {detail.layer} on token {tok} "
                        f"(position {detail.position})",
                   "intermediate neuron (row of W_up / W_gate)", "|value| (log scale)", yaxis_type="log",
                   height=440, legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0})


def weight_row_norms(detail: OriginDetail) -> go.Figure:
    """Row norms of ``W_up`` and ``W_gate`` at the layer, sorted, the massive rows marked at their rank."""
    fig = go.Figure()
    colors = (MEDIAN_COLOR, "#00CC96")
    ranked = {}
    for i, (name, norms) in enumerate(detail.row_norms.items()):
        order = np.argsort(-norms, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(1, len(order) + 1)
        ranked[name] = rank
        fig.add_trace(go.Scatter(
            x=np.arange(1, len(order) + 1), y=norms[order], mode="lines", name=f"{name} rows",
            line={"color": colors[i % 2], "width": 2}, customdata=order,
            hovertemplate=f"{name} row %{{customdata}}<br>norm %{{y:.4g}} · rank %{{x}}<extra></extra>"))
    rows = list(detail.neurons)
    label = "massive rows" + (f" ({', '.join(f'{s} {n}' for s, n in zip('●◆', detail.row_norms))})"
                              if len(detail.row_norms) > 1 else "")
    for i, (name, norms) in enumerate(detail.row_norms.items()):
        fig.add_trace(go.Scatter(
            x=ranked[name][rows], y=norms[rows], mode="markers+text", name=label,
            marker={"color": HIGHLIGHT, "size": 9, "symbol": "diamond" if i else "circle"},
            text=[str(r) for r in rows], textposition="bottom right" if i else "top right",
            textfont={"color": HIGHLIGHT, "size": 10}, customdata=rows, showlegend=i == 0, legendgroup="massive",
            hovertemplate=f"<b>massive</b> {name} row %{{customdata}}<br>norm %{{y:.4g}} · rank %{{x}}<extra></extra>"))
    return _layout(fig, f"Row norms of the FFN input weights at layer {detail.layer} of {esc(detail.model)}: "
                        "massive rows vs the rest",
                   "rank (rows sorted by norm, largest first; log scale)", "L2 norm of the row",
                   xaxis_type="log", height=420,
                   legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0})


# ---------------------------------------------------------------------------------------------
# ablations
# ---------------------------------------------------------------------------------------------

def ablation_figure(rows: list[dict[str, Any]] | dict[str, Any], baseline: dict[str, Any] | float | None = None) -> go.Figure:
    """Perplexity after each plan of :func:`analyses.ablate.run_plans` across ``k`` (log scale),
    the baseline as a horizontal line; a second panel with zero-shot accuracy per task when the
    rows carry accuracies (``tasks`` from ``run_plans``, or ``accuracies: {task: acc}``).

    ``rows`` is the ``results`` list (or the whole ``run_plans`` table); ``baseline`` its
    ``baseline`` dict or a perplexity. Colour = mode; in the accuracy panel, dash = task. Random
    controls: one faint dot per seed, the line through the median over seeds."""
    if isinstance(rows, dict):
        baseline = rows.get("baseline") if baseline is None else baseline
        rows = rows["results"]
    base = baseline if isinstance(baseline, dict) else {"ppl": baseline}
    base_acc = _accuracies(base)
    tasks = list(dict.fromkeys([*base_acc, *(t for r in rows for t in _accuracies(r))]))
    fig = make_subplots(rows=2 if tasks else 1, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=["perplexity", "zero-shot accuracy"] if tasks else None)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    for mode in modes:
        _ablation_traces(fig, [r for r in rows if r["mode"] == mode], mode, "", 0, legend=True)
    for t, task in enumerate(tasks):
        for mode in modes:
            _ablation_traces(fig, [r for r in rows if r["mode"] == mode], mode, task, t, legend=False)
        if len(tasks) > 1:  # a legend entry per task showing its dash
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"acc {esc(task)}",
                                     line={"color": "#555", "dash": DASHES[t % 4]}), row=2, col=1)
    right = {"x": 1.01, "xanchor": "left", "showarrow": False, "font": {"size": 11, "color": "#333"}}
    if base.get("ppl") is not None:
        fig.add_hline(y=base["ppl"], row=1, col=1, line={"color": "#444", "dash": "dash", "width": 1.2})
        fig.add_annotation(y=_log(base["ppl"]), xref="x domain", yref="y", text=f"baseline<br>{base['ppl']:.4g}",
                           yanchor="middle", **right)
    chances: dict[float, list[str]] = defaultdict(list)
    for t, task in enumerate(tasks):
        if task in base_acc:
            fig.add_hline(y=base_acc[task], row=2, col=1, line={"color": "#444", "dash": DASHES[t % 4], "width": 1})
            fig.add_annotation(y=base_acc[task], xref="x2 domain", yref="y2", text=f"baseline {base_acc[task]:.3f}",
                               yanchor="bottom" if t % 2 == 0 else "top", **right)
        chance = ((base.get("tasks") or {}).get(task) or {}).get("chance")
        if chance:
            chances[float(chance)].append(task)
    for chance in chances:
        fig.add_hline(y=chance, row=2, col=1, line={"color": "#aaa", "dash": "dot", "width": 1})
        fig.add_annotation(y=chance, xref="x2 domain", yref="y2", text=f"chance {chance:.2f}", yanchor="middle", **right)
    ks = sorted({r["k"] for r in rows}) or [1]
    layers = sorted({r["layer"] for r in rows if r.get("layer") is not None})
    where = f" at layer {', '.join(map(str, layers))}" if layers else ""
    fig.update_layout(template=TEMPLATE, height=640 if tasks else 440, hovermode="closest",
                      margin={"r": 110, "t": 130 if tasks else 100},
                      title={"text": f"Ablating massive weights{where}: perplexity{' and accuracy' if tasks else ''} vs k",
                             "x": 0.02, "xanchor": "left"},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.06 if tasks else 1.02, "x": 0})
    fig.update_xaxes(type="log" if ks[-1] / max(ks[0], 1) >= 20 else "linear", tickvals=ks if len(ks) <= 12 else None)
    fig.update_xaxes(title_text="k (rows zeroed / kept)", row=2 if tasks else 1, col=1)
    fig.update_yaxes(type="log", title_text="perplexity (log scale)", row=1, col=1)
    if tasks:
        fig.update_yaxes(title_text="accuracy", row=2, col=1)
    return fig


DASHES = ("solid", "dash", "dot", "dashdot")


def _accuracies(row: dict[str, Any]) -> dict[str, float]:
    if isinstance(row.get("tasks"), dict):
        return {t: v["acc"] for t, v in row["tasks"].items() if isinstance(v, dict) and v.get("acc") is not None}
    return {t: float(v) for t, v in (row.get("accuracies") or {}).items()}


def _ablation_traces(fig: go.Figure, rows: list[dict[str, Any]], mode: str, task: str, t_index: int,
                     legend: bool) -> None:
    """One mode's curve over ``k``: perplexity (``task == ""``, panel 1) or accuracy on ``task`` (panel 2)."""
    def value(r: dict[str, Any]) -> float | None:
        return r.get("ppl", r.get("value")) if not task else _accuracies(r).get(task)

    points = [(r, value(r)) for r in rows if value(r) is not None]
    if not points:
        return
    color = MODE_COLORS.get(mode, MUTED)
    panel = 2 if task else 1
    unit = f"acc {esc(task)}" if task else "ppl"
    hover = (f"<b>{esc(mode)}</b> · k %{{x}} · layer %{{customdata[0]}}<br>{unit} = %{{y:.4g}}"
             "<br>rows / dims %{customdata[1]} · seed %{customdata[2]}<extra></extra>")
    data = [[r.get("layer"), ", ".join(map(str, r.get("neurons") or r.get("dims") or ())) or "-", r.get("seed")]
            for r, _ in points]
    by_k: dict[int, list[float]] = defaultdict(list)
    for r, v in points:
        by_k[r["k"]].append(v)
    seeded = any(len(v) > 1 for v in by_k.values())
    if seeded:  # random controls: each seed as a dot, the median across seeds as the line
        fig.add_trace(go.Scatter(
            x=[r["k"] for r, _ in points], y=[v for _, v in points], mode="markers", name=f"{esc(mode)} (seeds)",
            marker={"color": color, "size": 6, "opacity": 0.4}, customdata=data, hovertemplate=hover,
            legendgroup=esc(mode), showlegend=False), row=panel, col=1)
    ks = sorted(by_k)
    fig.add_trace(go.Scatter(
        x=ks, y=[float(np.median(by_k[k])) for k in ks], mode="lines+markers" if len(ks) > 1 else "markers",
        name=esc(mode) + (" (median of seeds)" if seeded else "") + (f" · {esc(task)}" if task else ""),
        legendgroup=esc(mode), showlegend=legend, line={"color": color, "width": 2, "dash": DASHES[t_index % 4]},
        marker={"color": color, "size": 8}, customdata=None if seeded else data,
        hovertemplate=(f"<b>{esc(mode)}</b> · k %{{x}}<br>median {unit} over seeds = %{{y:.4g}}<extra></extra>"
                       if seeded else hover)), row=panel, col=1)
