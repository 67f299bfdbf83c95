"""The census figure (``Census.figure()``): per layer, the delta loss of the matched controls (box
and points) and the candidates as markers, the causal ones highlighted, the scan's super weight a star.

Deltas span ``1e-7`` to ``10`` nats and take both signs, so the y axis is a signed log,
``sign(x) * log10(1 + |x| / FLOOR)``, ticked in nats; hover shows the exact values.
"""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go

from analyses.census.census import Census
from analyses.report.style import HIGHLIGHT, MUTED, esc, styled
from probe.display import draws

FLOOR = 1e-6  # nats: |delta| below this sits near 0 on the signed-log axis


def signed_log(x: float) -> float:
    return math.copysign(math.log10(1 + abs(x) / FLOOR), x)


def _ticks(values: list[float]) -> dict[str, Any]:
    top = max((abs(v) for v in values), default=1.0)
    powers = [10.0 ** p for p in range(-5, 2) if 10.0 ** p <= max(top, FLOOR) * 10]
    ticks = [0.0, *powers, *[-p for p in powers if -p >= min(values, default=0) * 10]]
    return {"tickvals": [signed_log(t) for t in ticks], "ticktext": [f"{t:g}" for t in ticks]}


@draws(Census)
def census_figure(result: Census) -> go.Figure:
    """Controls per layer as boxes with every point, candidates as markers over them (red when causal)."""
    fig = go.Figure()
    for layer in result.layers:
        deltas = [c["delta_loss"] for c in result.controls if c["layer"] == layer]
        fig.add_trace(go.Box(x=[layer] * len(deltas), y=[signed_log(d) for d in deltas], name="controls",
                             marker={"color": MUTED, "size": 4}, boxpoints="all", jitter=0.4, pointpos=0,
                             customdata=[[d] for d in deltas], hovertemplate="control: %{customdata[0]:.3g} nats",
                             showlegend=layer == result.layers[0], legendgroup="controls"))
    for causal, label, color in ((False, "candidate", "#636EFA"), (True, "causal candidate", HIGHLIGHT)):
        rows = [r for r in result.rows if r["causal"] == causal]
        fig.add_trace(go.Scatter(
            x=[r["layer"] for r in rows], y=[signed_log(r["delta_loss"]) for r in rows], mode="markers", name=label,
            marker={"color": color, "size": [16 if r["super_weight"] else 10 for r in rows],
                    "symbol": ["star" if r["super_weight"] else "diamond" for r in rows], "line": {"width": 1}},
            customdata=[[r["row"], r["col"], r["delta_loss"], r["ci_low"], r["ci_high"], r["controls_p99"],
                         esc(r.get("token", ""))] for r in rows],
            hovertemplate="W_down[%{customdata[0]}, %{customdata[1]}]: %{customdata[2]:.3g} nats "
                          "[%{customdata[3]:.3g}, %{customdata[4]:.3g}], controls p99 %{customdata[5]:.3g}"))
    values = [c["delta_loss"] for c in result.controls] + [r["delta_loss"] for r in result.rows]
    base = result.evaluation
    return styled(fig, esc(f"Super-weight census of {result.model}: each weight zeroed alone (star: the scan's super "
                           f"weight), {base['n_windows']} windows x {base['seq_len']} tokens, baseline NLL "
                           f"{base['baseline_nll']:.3f}"),
                  "layer", "delta loss (nats per token, signed log)",
                  yaxis=_ticks(values), xaxis={"type": "category"}, boxmode="overlay")
