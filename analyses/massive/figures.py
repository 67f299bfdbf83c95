"""Plotly figures of a massive-activation scan and of its origin layer.

- :func:`residual_profile` — top-1/2/3 and median ``|h|`` of the residual stream per layer (Sun et
  al. 2024, Fig. 1 style), the absolute threshold, the origin and precursor layers
  (``MassiveScan.figure()``);
- :func:`ratio_profile` — max / median ``|h|`` per layer against the 100x-3000x ratios;
- :func:`massive_tokens` — which (position, token) pairs carry the massive activations;
- :func:`origin_heatmap` (``OriginDetail.figure()``), :func:`neuron_profile`,
  :func:`weight_row_norms` — the origin layer of one sequence, from an
  :class:`~analyses.massive.origin.OriginDetail`.

Titles, axis labels and hover text give layer, token, position, dim and value where they apply;
token strings are escaped (:func:`analyses.report.style.esc`).
"""

from __future__ import annotations
from collections import defaultdict
from typing import Any
import numpy as np
import plotly.graph_objects as go
from analyses.massive.locate import RATIOS, MassiveScan
from analyses.report.style import TOP_COLORS, MEDIAN_COLOR, HIGHLIGHT, MUTED, LABEL_BG, esc, styled, log_position, note
from analyses.massive.origin import OriginDetail
from probe.display import draws


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


@draws(MassiveScan)
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
    fig.add_annotation(x=1, xref="x domain", y=log_position(scan.abs_threshold), yref="y", xanchor="right", yanchor="top",
                       text=f"massive: |h| > {scan.abs_threshold:g}", showarrow=False, bgcolor=LABEL_BG)
    _mark_layers(fig, scan)
    return styled(fig, f"Residual stream of {esc(scan.model)}: largest and median |h| per layer "
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
        fig.add_annotation(x=1.01, xref="x domain", y=log_position(q), yref="y", xanchor="left", yanchor="middle",
                           showarrow=False, font={"size": 11, "color": "#222" if used else "#666"},
                           text=f"{q:g}x: origin {'none' if origin is None else origin}")
    _mark_layers(fig, scan)
    return styled(fig, f"Max / median |h| per layer of {esc(scan.model)} (massive: > {scan.ratio:g}x and "
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
        return note(styled(fig, title, "position: token", "massive entries"),
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
    return styled(fig, title, "position: token", "massive entries (count)", barmode="stack", height=420,
                   xaxis_type="category")


def _span(layers: list[int]) -> str:
    u = sorted(set(layers))
    if not u:
        return "none"
    return f"{u[0]}-{u[-1]}" if u == list(range(u[0], u[-1] + 1)) and len(u) > 1 else ", ".join(map(str, u))


def _position_labels(detail: OriginDetail) -> list[str]:
    return [f"{p}: {esc(t)}" for p, t in enumerate(detail.tokens)]


@draws(OriginDetail)
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
    return styled(fig, f"|h| at the output of layer {detail.layer} of {esc(detail.model)}, one sequence "
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
    return styled(fig, f"FFN intermediate state act(W_gate x) * W_up x at layer {detail.layer} on token {tok} "
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
    return styled(fig, f"Row norms of the FFN input weights at layer {detail.layer} of {esc(detail.model)}: "
                        "massive rows vs the rest",
                   "rank (rows sorted by norm, largest first; log scale)", "L2 norm of the row",
                   xaxis_type="log", height=420,
                   legend={"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0})
