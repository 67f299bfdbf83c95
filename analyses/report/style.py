"""The look shared by every figure: Plotly template, colours, escaping of user strings.

Token strings are user data: wherever Plotly renders its HTML subset (titles, annotations, tick
labels, trace names, hover text including ``%{customdata}``), pass them through :func:`esc`, so
``<b>`` shows as text and never as markup. Every figure sets ``template=TEMPLATE`` (or goes through
:func:`_layout`).
"""

from __future__ import annotations
import html
import math
from typing import Any
import plotly.graph_objects as go


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


def styled(fig: go.Figure, title: str, x: str, y: str, **kwargs: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.02, "xanchor": "left"},
                      xaxis_title=x, yaxis_title=y, hovermode="closest", **kwargs)
    return fig


def log_position(y: float) -> float:
    """Annotation coordinate on a log axis: Plotly places annotations in log10 units there (shapes,
    e.g. ``add_hline``, take data values), so ``add_hline(annotation_text=...)`` lands off-scale."""
    return math.log10(y)


def note(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 14})
    return fig
