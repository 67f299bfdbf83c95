"""probe.show and the Figured mixin: results display as their figure in Jupyter."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
from IPython.core.formatters import DisplayFormatter

import probe
from analyses.ablate import Ablation
from probe.display import Figured


class Result(Figured):
    def figure(self) -> go.Figure:
        return go.Figure(go.Scatter(x=[0, 1], y=[2, 3]))


def test_figured_renders_the_plotly_mimetype_without_inlining_plotlyjs(monkeypatch):
    import plotly.io as pio

    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype+notebook")  # plotly's choice in Jupyter
    fmt, _ = DisplayFormatter().format(Result())  # what Jupyter does, without a global shell
    assert fmt["application/vnd.plotly.v1+json"]["data"][0]["y"] == [2, 3]
    assert len(fmt["text/html"]) < 100_000  # plotly.js (4.8 MB) is not repeated per output


def test_repr_html_is_offline():
    html = Result()._repr_html_()
    assert 'src="https://cdn' not in html and len(html) > 1_000_000  # plotly.js inline, not from a CDN


def test_show_outside_ipython_returns_the_figure(monkeypatch):
    monkeypatch.setattr("probe.display._in_ipython", lambda: False)
    assert isinstance(probe.show(Result()), go.Figure)
    with pytest.raises(TypeError, match="figure"):
        probe.show(42)


def test_ablation_result_is_a_dict_with_a_figure():
    rows = [{"mode": "zero", "k": 1, "seed": None, "ppl": 40.0, "layer": 11, "neurons": [1], "dims": []}]
    ab = Ablation(baseline={"ppl": 20.0}, results=rows)
    assert ab.to_dict() == {"baseline": {"ppl": 20.0}, "results": rows}
    assert len(ab.figure().data) >= 1
