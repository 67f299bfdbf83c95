"""The figure of an ablation table: perplexity (and zero-shot accuracy) of the plans across ``k``
(``Ablation.figure()``).
"""

from __future__ import annotations
from collections import defaultdict
from typing import Any
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from analyses.ablate.run import Ablation
from probe.display import draws
from analyses.report.style import MUTED, MODE_COLORS, esc, log_position, titled


@draws(Ablation)
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
        fig.add_annotation(y=log_position(base["ppl"]), xref="x domain", yref="y", text=f"baseline<br>{base['ppl']:.4g}",
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
    titled(fig, f"Ablating massive weights{where}: perplexity{' and accuracy' if tasks else ''} vs k",
           height=640 if tasks else 440, hovermode="closest", margin={"r": 110, "t": 130 if tasks else 100},
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
