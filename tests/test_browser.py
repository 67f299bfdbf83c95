"""The report in a real browser: headless Chromium opens it from file:// and every figure draws.

Needs the Debian package ``chromium`` (``scripts/setup.sh`` installs it when run as root).
Without it the tests skip, except under CI (``CI=true``), where they fail. The screenshot of
the good report is kept in ``$PROBE_TEST_ARTIFACTS`` or else ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from analyses.report import Section, render_html, write_report
from browser import check_report

XSS = "</script><script>alert(1)</script>"
ARTIFACTS = Path(os.environ.get("PROBE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


pytestmark = pytest.mark.usefixtures("chrome")  # tests/conftest.py: skip without Chromium (fail under CI)


def report_sections() -> list[Section]:
    """A report like the real one: log-axis lines, a heatmap, bars, a 3-D surface and a 3-D scatter."""
    rng = np.random.default_rng(0)
    layers = np.arange(30)
    top = 10 ** (1 + 2.5 / (1 + np.exp(-(layers - 3) * 2)))
    lines = go.Figure([
        go.Scatter(x=layers, y=top, mode="lines+markers", name="max |h|", text=[XSS] * 30),
        go.Scatter(x=layers, y=np.full(30, 0.5), mode="lines", name="median |h|"),
    ]).update_layout(title="Largest residual value per layer", yaxis_type="log", xaxis_title="layer")
    heat = go.Figure(go.Heatmap(z=rng.normal(size=(30, 64)), hovertext=[[XSS] * 64] * 30)).update_layout(
        title="Top activations (layer × dim)", xaxis_title=XSS)
    bars = go.Figure(go.Bar(x=["base", "zero top-5", "keep top-5", "random-5"], y=[8.2, 123.0, 21.0, 8.3])).update_layout(
        title="Perplexity after ablation", yaxis_type="log")
    u, v = np.meshgrid(np.linspace(-2, 2, 40), np.linspace(-2, 2, 40))
    surface = go.Figure(go.Surface(z=np.exp(-(u**2 + v**2)), x=u, y=v)).update_layout(title="LID surface")
    cloud = rng.normal(size=(300, 3))
    scatter3d = go.Figure(go.Scatter3d(x=cloud[:, 0], y=cloud[:, 1], z=cloud[:, 2], mode="markers",
                                       marker=dict(size=2, color=cloud[:, 2]), text=[XSS] * 300)).update_layout(
        title="Class means (NC)")
    return [
        Section("Massive activations", "Where the largest values appear.", [lines, heat],
                table=[{"layer": 2, "dim": 129, "value": 1834.5, "token": XSS}]),
        Section("Ablations", f"Zeroing the massive weights. {XSS}", [bars]),
        Section("Geometry", "Local intrinsic dimension and collapse.", [surface, scatter3d]),
    ]


EXPECTED = ["fig-massive-activations-0", "fig-massive-activations-1", "fig-ablations-0", "fig-geometry-0",
            "fig-geometry-1"]


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    header = {"model": "smollm2", "corpus": "pydoc_data.topics", "tokens": "4096", "command": f"probe report {XSS}"}
    path = write_report(tmp_path / "report", header, report_sections(), {"ok": True})
    shot = tmp_path / "report.png"
    problems = check_report(path, EXPECTED, screenshot=shot)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report.png")
    assert problems == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


def test_missing_plotlyjs_is_detected(tmp_path: Path) -> None:
    page = render_html({"model": "m"}, report_sections()[:1])
    page = re.sub(r'<script type="text/javascript">.*?</script>', "", page, count=1, flags=re.S)
    path = tmp_path / "broken.html"
    path.write_text(page)
    problems = check_report(path, EXPECTED[:2])
    assert any("Plotly is not defined" in p for p in problems), problems
    assert any(p.startswith("fig-massive-activations-0: not a plotted figure") for p in problems), problems


def test_empty_figure_is_detected(tmp_path: Path) -> None:
    path = write_report(tmp_path / "out", {"model": "m"}, [Section("Empty", "", [go.Figure()])], {})
    assert check_report(path, ["fig-empty-0"]) == ["fig-empty-0: figure has no traces"]


def test_missing_figure_div_and_injected_script_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "injected.html"
    path.write_text("<!DOCTYPE html><html><body><p>hi</p><script>alert(1)</script></body></html>")
    problems = check_report(path, ["fig-x-0"])
    assert any("alert() called: 1" in p for p in problems), problems
    assert "fig-x-0: no such figure div on the page" in problems
