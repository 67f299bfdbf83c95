"""Plotly figures of the per-layer geometry (:func:`analyses.geometry.layers.geometry`): LID and
neural collapse together (``Geometry.figure()``), or each alone (the report's two sections)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.geometry.layers import Geometry
from analyses.report.style import esc, styled, titled
from probe.display import draws

COLLAPSE_CURVES = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4")
X_TITLE = "layer (hook_resid_post)"


@draws(Geometry)
def geometry_figure(g: Geometry) -> go.Figure:
    """Mean (and median) LID per layer above; NC1, CDNV, NC2 and the Fisher ratio per layer below
    (log scale), with hover showing layer and value."""
    x = [layer.layer for layer in g.layers]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(f"local intrinsic dimension (TwoNN, k={g.k})",
                                        f"neural collapse, {g.n_classes} next-token classes"))
    for key, dash in (("lid_mean", "solid"), ("lid_median", "dot")):
        fig.add_trace(go.Scatter(x=x, y=g.curve(key), name=key.replace("_", " "), mode="lines+markers",
                                 line={"dash": dash}, hovertemplate="layer %{x}<br>%{y:.2f}<extra>" + key + "</extra>"), 1, 1)
    for key in ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "fisher_ratio"):
        fig.add_trace(go.Scatter(x=x, y=g.curve(key), name=key, mode="lines+markers",
                                 hovertemplate="layer %{x}<br>%{y:.4g}<extra>" + key + "</extra>"), 2, 1)
    fig.update_yaxes(title_text="LID", row=1, col=1)
    fig.update_yaxes(title_text="value", type="log", row=2, col=1)
    fig.update_xaxes(title_text=X_TITLE, row=2, col=1)
    titled(fig, f"Geometry of {esc(g.model)}: {g.n_tokens} tokens of {esc(g.corpus)}", height=640, hovermode="x unified")
    return fig


def lid_figure(g: Geometry) -> go.Figure:
    """Mean and median local TwoNN dimension per layer."""
    x = [layer.layer for layer in g.layers]
    fig = go.Figure([go.Scatter(x=x, y=g.curve("lid_mean"), name="mean", mode="lines+markers"),
                     go.Scatter(x=x, y=g.curve("lid_median"), name="median", mode="lines", line={"dash": "dot"})])
    fig.update_traces(hovertemplate="layer %{x}<br>LID %{y:.2f}")
    styled(fig, f"Local intrinsic dimension per layer of {esc(g.model)} (TwoNN, k={g.k})", X_TITLE, "LID",
           hovermode="x unified")
    return fig


def collapse_figure(g: Geometry) -> go.Figure:
    """NC1, CDNV, NC2 (equinorm, equiangular), NC3 and NC4 per layer, log scale."""
    x = [layer.layer for layer in g.layers]
    fig = go.Figure([go.Scatter(x=x, y=g.curve(key), name=key, mode="lines+markers") for key in COLLAPSE_CURVES])
    fig.update_traces(hovertemplate="layer %{x}<br>%{y:.4g}")
    styled(fig, f"Neural collapse per layer of {esc(g.model)}, {g.n_classes} next-token classes", X_TITLE, "value",
           yaxis_type="log", hovermode="x unified")
    return fig
