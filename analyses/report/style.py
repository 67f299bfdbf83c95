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


TITLE_WIDTH = 90  # characters per title line: longer titles (long model names) wrap, never clip


def title(text: str, width: int = TITLE_WIDTH) -> dict[str, Any]:
    """A figure title, left-aligned, wrapped at spaces into lines of at most ``width``
    characters (Plotly clips a title wider than the figure). ``text`` is already escaped."""
    lines = [" ".join(chunk) for part in text.split("<br>")
             for chunk in _wrap(part.split(" "), width)]
    return {"text": "<br>".join(lines), "x": 0.02, "xanchor": "left"}


def titled(fig: go.Figure, text: str, **kwargs: Any) -> go.Figure:
    """``fig`` with the house template and :func:`title`, its top margin grown for every line."""
    head = title(text)
    lines = head["text"].count("<br>") + 1
    margin = dict(kwargs.pop("margin", None) or {})
    if lines > 1:
        margin["t"] = max(margin.get("t", 0), 60 + 24 * lines)
    fig.update_layout(template=TEMPLATE, title=head, **({"margin": margin} if margin else {}), **kwargs)
    return fig


def styled(fig: go.Figure, title: str, x: str, y: str, **kwargs: Any) -> go.Figure:
    """:func:`titled`, plus axis titles and (unless ``hovermode`` says otherwise) closest-point hover."""
    return titled(fig, title, xaxis_title=x, yaxis_title=y, **{"hovermode": "closest", **kwargs})


def _wrap(words: list[str], width: int) -> list[list[str]]:
    chunks: list[list[str]] = [[]]
    for word in words:
        if chunks[-1] and len(" ".join(chunks[-1] + [word])) > width:
            chunks.append([])
        chunks[-1].append(word)
    return chunks


def log_position(y: float) -> float:
    """Annotation coordinate on a log axis: Plotly places annotations in log10 units there (shapes,
    e.g. ``add_hline``, take data values), so ``add_hline(annotation_text=...)`` lands off-scale."""
    return math.log10(y)


def note(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 14})
    return fig
