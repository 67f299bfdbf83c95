"""Plotly figures of the per-layer geometry (:func:`analyses.geometry.layers.geometry`): LID and
neural collapse together (``Geometry.figure()``), or each alone (the report's two sections)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.geometry.layers import Geometry
from analyses.report.style import esc, styled, titled
from probe.display import draws

COLLAPSE_CURVES = ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "gnc2", "nc3", "unc3", "nc4")
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


def _band(fig: go.Figure, g: Geometry, key: str, name: str, row: int | None = None) -> None:
    """The bootstrap interval of ``key`` as a shaded band (drawn before the curve, skipped when absent)."""
    lo, hi = g.band(key)
    if all(v is None for v in lo):
        return
    x = [layer.layer for layer in g.layers]
    where = {} if row is None else {"row": row, "col": 1}
    level = int(round(100 * g.bootstrap.get("level", 0.95)))
    fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", line={"width": 0}, opacity=0.25,
                             name=f"{name} {level}% interval", hoverinfo="skip"), **where)


def lid_figure(g: Geometry) -> go.Figure:
    """Mean local TwoNN dimension per layer with its bootstrap interval, the median, and the mean
    without the massive-activation carrier tokens."""
    x = [layer.layer for layer in g.layers]
    fig = go.Figure()
    _band(fig, g, "lid_mean", "mean")
    fig.add_trace(go.Scatter(x=x, y=g.curve("lid_mean"), name="mean", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=x, y=g.curve("lid_median"), name="median", mode="lines", line={"dash": "dot"}))
    if g.carriers.get("n_tokens"):
        fig.add_trace(go.Scatter(x=x, y=g.curve("lid_mean", "without_carriers"), mode="lines+markers",
                                 name=f"mean without the {g.carriers['n_tokens']} massive tokens", line={"dash": "dash"}))
    for ablation in g.ablations:
        plan = ablation["plan"]
        fig.add_trace(go.Scatter(x=[r["layer"] for r in ablation["layers"]], y=[r["lid_mean"] for r in ablation["layers"]],
                                 mode="lines", name=f"mean, {plan['mode']} k={plan['k']}", line={"dash": "longdash"}))
    fig.update_traces(hovertemplate="layer %{x}<br>LID %{y:.2f}", selector={"mode": "lines+markers"})
    styled(fig, f"Local intrinsic dimension per layer of {esc(g.model)} (TwoNN, k={g.k})", X_TITLE, "LID",
           hovermode="x unified")
    return fig


def collapse_figure(g: Geometry) -> go.Figure:
    """NC1 (with its bootstrap interval and without the carrier tokens), CDNV, NC2, GNC2, NC3,
    UNC3 and NC4 per layer, log scale."""
    x = [layer.layer for layer in g.layers]
    fig = go.Figure()
    _band(fig, g, "nc1", "nc1")
    for key in COLLAPSE_CURVES:
        y = g.curve(key)
        if any(v is not None for v in y):
            fig.add_trace(go.Scatter(x=x, y=[abs(v) if v is not None else None for v in y] if key == "gnc2" else y,
                                     name="|gnc2|" if key == "gnc2" else key, mode="lines+markers"))
    if g.carriers.get("n_tokens"):
        fig.add_trace(go.Scatter(x=x, y=g.curve("nc1", "without_carriers"), name="nc1 without the massive tokens",
                                 mode="lines", line={"dash": "dash"}))
    fig.update_traces(hovertemplate="layer %{x}<br>%{y:.4g}")
    styled(fig, f"Neural collapse per layer of {esc(g.model)}, {g.n_classes} next-token classes", X_TITLE, "value",
           yaxis_type="log", hovermode="x unified")
    return fig


def scale_figure(g: Geometry) -> go.Figure:
    """Gride's dimension per layer (x) and neighbourhood scale n2 (one line per scale): parallel
    lines mean the estimate does not depend on the neighbourhood size."""
    x = [layer.layer for layer in g.layers]
    scales = sorted({s["n2"] for layer in g.layers for s in layer.gride})
    fig = go.Figure()
    for n2 in scales:
        y = [next((s["id"] for s in layer.gride if s["n2"] == n2), None) for layer in g.layers]
        fig.add_trace(go.Scatter(x=x, y=y, name=f"n2 = {n2}", mode="lines+markers",
                                 hovertemplate="layer %{x}<br>ID %{y:.2f}<extra>n2=" + str(n2) + "</extra>"))
    styled(fig, f"Intrinsic dimension across scales per layer of {esc(g.model)} (Gride, n1 = n2/2)", X_TITLE, "ID",
           hovermode="x unified")
    return fig
