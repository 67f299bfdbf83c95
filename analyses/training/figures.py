"""Figures and the report section of fine-tuning runs (:mod:`analyses.training.finetuning`).

Every function takes runs as ``{name: log}`` where ``log`` is ``FinetuneLog.to_dict()`` (or the
``results.json`` a run wrote), so one run and a comparison of saved runs (``probe compare``)
are drawn by the same code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.report.html import RESULTS_NAME, Section
from analyses.report.style import TEMPLATE
from probe.errors import ProbeError

Run = Mapping[str, Any]
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
#: Tracked metrics drawn in the lower panels, with their labels.
TRACKED = {"lid_origin": "mean LID, origin layer", "lid_last": "mean LID, last layer",
           "massive": "massive |h|, origin layer", "nc1_origin": "NC1, origin layer", "nc1_last": "NC1, last layer"}


def load_run(folder: str | Path) -> dict[str, Any]:
    """The log of a saved run (its ``results.json``), with a readable error for anything else."""
    path = Path(folder) / RESULTS_NAME
    try:
        log = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProbeError(f"{folder} is not a finished fine-tuning run ({path}: {exc})") from None
    if not {"config", "train", "evals"} <= set(log):
        raise ProbeError(f"{path} is not the log of a fine-tuning run (no config/train/evals)")
    return log


def _moving_average(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def finetune_figure(runs: Mapping[str, Run]) -> go.Figure:
    """Training curves, one colour per run, shared step axis: training loss (moving average of 10
    steps, thin) and held-out loss (markers); the drop probability p(t); mean LID at the origin
    and last layer; the massive activation and NC1 when tracked (log scale)."""
    tracked = [k for k in TRACKED if any(k in e for r in runs.values() for e in r["evals"])]
    lid = [k for k in tracked if k.startswith("lid")]
    other = [k for k in tracked if not k.startswith("lid")]
    titles = ["loss (train: moving average of 10 steps; held-out: markers)", "MacDrop drop probability p(t)"]
    titles += ["mean local intrinsic dimension (held-out tokens)"] * bool(lid)
    titles += ["massive activation and NC1 (log scale)"] * bool(other)
    fig = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=titles)
    for (name, run), color in zip(runs.items(), COLORS * 10):
        steps = [r["step"] for r in run["train"]]
        ev = run["evals"]
        es = [e["step"] for e in ev]
        hover = "step %{x}<br>%{y:.4g}<extra>" + name + " "
        fig.add_trace(go.Scatter(x=steps, y=_moving_average([r["loss"] for r in run["train"]], 10), mode="lines",
                                 name=f"{name}: train loss", line={"color": color, "width": 1},
                                 hovertemplate=hover + "train loss</extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=es, y=[e["loss"] for e in ev], mode="lines+markers", name=f"{name}: held-out loss",
                                 line={"color": color, "width": 2}, hovertemplate=hover + "held-out loss</extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=steps, y=[r["p"] for r in run["train"]], mode="lines", name=f"{name}: p(t)",
                                 line={"color": color}, showlegend=False, hovertemplate=hover + "p(t)</extra>"), 2, 1)
        for row, keys in ((3, lid), (3 + bool(lid), other)):
            for key, dash in zip(keys, ("solid", "dash", "dot", "dashdot")):
                fig.add_trace(go.Scatter(x=es, y=[e.get(key) for e in ev], mode="lines+markers",
                                         name=f"{name}: {TRACKED[key]}", line={"color": color, "dash": dash},
                                         hovertemplate=hover + TRACKED[key] + "</extra>"), row, 1)
    fig.update_yaxes(title_text="nats / token", row=1, col=1)
    fig.update_yaxes(title_text="p", range=[0, 1], row=2, col=1)
    if lid:
        fig.update_yaxes(title_text="LID", row=3, col=1)
    if other:
        fig.update_yaxes(title_text="value", type="log", row=len(titles), col=1)
    fig.update_xaxes(title_text="optimiser step", row=len(titles), col=1)
    fig.update_layout(template=TEMPLATE, height=260 * len(titles), hovermode="x unified",
                      title="Fine-tuning: " + ", ".join(runs))
    return fig


def summary_rows(runs: Mapping[str, Run]) -> list[dict[str, Any]]:
    """One row per run: held-out loss and perplexity first and last, zero-shot accuracy before and after."""
    rows = []
    for name, run in runs.items():
        first, last = run["evals"][0], run["evals"][-1]
        row: dict[str, Any] = {"run": name, "method": run["config"]["method"], "macdrop": run["config"]["macdrop"],
                               "steps": last["step"], "loss before": first["loss"], "loss after": last["loss"],
                               "ppl before": first["ppl"], "ppl after": last["ppl"]}
        for key in ("lid_origin", "lid_last"):
            if key in first:
                row[f"{key} before"], row[f"{key} after"] = first[key], last[key]
        for task, before in run.get("zero_shot", {}).get("before", {}).items():
            row[f"{task} acc before"] = before["acc"]
            row[f"{task} acc after"] = run["zero_shot"].get("after", {}).get(task, {}).get("acc")
        rows.append(row)
    return rows


def finetune_section(runs: Mapping[str, Run]) -> Section:
    """The report section: the curves of :func:`finetune_figure` and the table of :func:`summary_rows`."""
    rows = summary_rows(runs)
    text = " ".join(f"{r['run']}: held-out loss {r['loss before']:.4f} → {r['loss after']:.4f} "
                    f"(perplexity {r['ppl before']:.2f} → {r['ppl after']:.2f}) after {r['steps']} steps."
                    for r in rows)
    return Section("Fine-tuning with MacDrop", text, [finetune_figure(runs)], rows)
