"""Plotly figure of attention sinks: a layer x head heatmap of the attention on the first token,
next to ``sink_frac`` (Gu et al.'s ``Sink^eps`` per layer), with the onset layer and, when the
sinks were measured on a massive scan's windows, its origin layer marked (``Sinks.figure()``).
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.attention.lifecycle import Lifecycle
from analyses.attention.sinks import Sinks
from analyses.report.style import HIGHLIGHT, LABEL_BG, MEDIAN_COLOR, MODE_COLORS, MUTED, esc, titled
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


@draws(Lifecycle)
def lifecycle_figure(result: Lifecycle) -> go.Figure:
    """Left to right: the largest ``|h|`` of the residual stream per layer (log scale), the mean
    attention on the first token per layer, and the perplexity relative to the unedited model, one
    colour per stage (the unedited model in black); the origin layer is marked."""
    fig = make_subplots(rows=1, cols=3, column_widths=[0.38, 0.38, 0.24], horizontal_spacing=0.07,
                        subplot_titles=("massive activation: max |h| per layer", "attention sink: attention on "
                                        "the first token", "loss: perplexity x original"))
    for i, s in enumerate(result.stages):
        mode = (s.plan or {}).get("mode")
        color = "#222" if s.plan is None else MODE_COLORS.get(mode, MUTED)
        dash = "solid" if s.plan is None or mode != "random" else "dot"
        line = {"color": color, "width": 2.5 if s.plan is None else 1.5, "dash": dash}
        layers = list(range(len(s.massive_max)))
        name = esc(s.label)
        fig.add_trace(go.Scatter(x=layers, y=s.massive_max, mode="lines", name=name, legendgroup=name, line=line,
                                 hovertemplate=f"{name}<br>layer %{{x}}: max |h| = %{{y:.1f}}<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=layers, y=s.mean_attn_first, mode="lines", name=name, legendgroup=name, line=line,
                                 showlegend=False,
                                 hovertemplate=f"{name}<br>layer %{{x}}: attention on first token = %{{y:.3f}}"
                                               "<extra></extra>"), 1, 2)
        fig.add_trace(go.Bar(x=[s.ppl_ratio], y=[name], orientation="h", marker={"color": color}, legendgroup=name,
                             showlegend=False, text=[f"{s.ppl_ratio:.2f}x"], textposition="outside", hovertemplate=f"{name}<br>ppl {s.ppl:.2f} = %{{x:.2f}} x original"
                                                             "<extra></extra>"), 1, 3)
    if result.origin_layer is not None:
        for col in (1, 2):
            fig.add_vline(x=result.origin_layer, line={"color": HIGHLIGHT, "width": 1, "dash": "dash"}, row=1, col=col)
    fig.update_yaxes(type="log", title_text="max |h|", row=1, col=1)
    fig.update_yaxes(title_text="mean attention", range=[0, 1], row=1, col=2)
    fig.update_yaxes(autorange="reversed", showticklabels=False, row=1, col=3)  # the legend names the stages
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    top = max(s.ppl_ratio for s in result.stages)
    fig.update_xaxes(type="log", title_text="ppl / original", range=[-0.05, math.log10(max(top, 1.0)) + 0.35],
                     row=1, col=3)
    text = (f"Outlier lifecycle of {esc(result.model)}: weight edit -> massive activation -> attention sink -> loss "
            f"(origin layer {result.origin_layer}, dashed)")
    return titled(fig, text, hovermode="closest", height=480, legend={"orientation": "h", "y": -0.2})
