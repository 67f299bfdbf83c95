"""Plotly figure of attention sinks: a layer x head heatmap of the attention on the first token,
next to ``sink_frac`` (Gu et al.'s ``Sink^eps`` per layer), with the onset layer and, when the
sinks were measured on a massive scan's windows, its origin layer marked (``Sinks.figure()``).
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.attention.sinks import Sinks
from analyses.report.style import HIGHLIGHT, LABEL_BG, MEDIAN_COLOR, MUTED, esc, titled
from probe.display import draws


def _mark(fig: go.Figure, layer: int | None, text: str, color: str, dash: str) -> None:
    """A horizontal line across both panels at ``layer``, labelled on the right panel."""
    if layer is None:
        return
    for col in (1, 2):
        fig.add_hline(y=layer, line={"color": color, "width": 1.5, "dash": dash}, row=1, col=col)
    fig.add_annotation(x=1, xref="x2 domain", y=layer, yref="y2", text=text, showarrow=False, xanchor="right",
                       yanchor="bottom", font={"color": color}, bgcolor=LABEL_BG)


@draws(Sinks)
def sinks_figure(result: Sinks) -> go.Figure:
    """Left: mean attention that queries ``t >= 1`` give to position 0, per layer (rows) and head
    (columns). Right: ``sink_frac`` per layer against 0.5 (the onset criterion)."""
    layers = [l.layer for l in result.layers]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.7, 0.3], horizontal_spacing=0.03)
    fig.add_trace(go.Heatmap(
        z=[l.heads for l in result.layers], y=layers, zmin=0, zmax=1, colorscale="Viridis",
        colorbar={"title": "attention<br>on first token", "x": 0.66},
        hovertemplate="layer %{y} · head %{x}<br>mean attention on position 0 = %{z:.3f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=[l.sink_frac for l in result.layers], y=layers, mode="lines+markers", name="sink_frac",
        line={"color": MEDIAN_COLOR, "width": 2}, marker={"size": 5},
        hovertemplate=f"layer %{{y}}<br>sink_frac (eps {result.eps:g}) = %{{x:.3f}}<extra></extra>"), row=1, col=2)
    fig.add_vline(x=0.5, line={"color": MUTED, "width": 1, "dash": "dash"}, row=1, col=2)
    _mark(fig, result.onset_layer, f"onset layer {result.onset_layer}", HIGHLIGHT, "solid")
    _mark(fig, result.origin_layer, f"massive origin {result.origin_layer}", "#555", "dot")
    fig.update_xaxes(title_text="head", row=1, col=1)
    fig.update_xaxes(title_text=f"sink_frac (alpha > {result.eps:g})", range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=1)
    text = (f"Attention on the first token of {esc(result.model)}: {result.n_seqs} windows x {result.seq_len} tokens; "
            f"Sink<sub>{result.eps:g}</sub> = {result.sink_rate:.2f}, onset layer {result.onset_layer}")
    return titled(fig, text, showlegend=False, hovermode="closest", height=max(420, 16 * len(layers) + 160))
