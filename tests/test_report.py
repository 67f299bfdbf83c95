"""The HTML report: plotly.js once, escaping, atomic writes, results.json (fast, no model, no browser)."""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.offline
import pytest

from analyses.report import html as report
from analyses.report import Section, render_html, to_jsonable, write_report

XSS = "<script>alert(1)</script>"
BREAKOUT = "</script><script>alert(1)</script>"
SCRIPT_BLOCK = re.compile(r"<script\b[^>]*>(.*?)</script\s*>", re.S | re.I)


def small_figures(n: int = 6) -> list[go.Figure]:
    kinds = [
        lambda: go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 10, 100])).update_layout(yaxis_type="log"),
        lambda: go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])),
        lambda: go.Figure(go.Bar(x=["a", "b"], y=[1, 2])),
    ]
    return [kinds[i % len(kinds)]() for i in range(n)]


def hostile_figure() -> go.Figure:
    """A figure with the script-breaking token in every text slot plotly has."""
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], text=[BREAKOUT, XSS], hovertext=BREAKOUT, name=BREAKOUT,
                               hovertemplate=BREAKOUT + "<extra></extra>"))
    return fig.update_layout(title=BREAKOUT, xaxis=dict(title=BREAKOUT, tickvals=[1, 2], ticktext=[BREAKOUT, XSS]))


def test_plotlyjs_inlined_exactly_once() -> None:
    page = render_html({"model": "m"}, [Section("A", "a", small_figures(3)), Section("B", "b", small_figures(3))])
    assert page.count("plotly.js v") == 1
    assert page.count('<script type="text/javascript">') == 1
    blocks = SCRIPT_BLOCK.findall(page)
    assert [len(b) > 1_000_000 for b in blocks].count(True) == 1  # the library itself
    assert len(blocks) == 1 + 6  # plus one small newPlot script per figure
    assert plotly.offline.get_plotlyjs()[:2000] in page
    # Offline: nothing is fetched.
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|@import|url\(\s*['\"]?http", page, re.I)


def test_figures_are_embedded_without_plotlyjs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    original = go.Figure.to_html

    def spy(self: go.Figure, *args: object, **kwargs: object) -> str:
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(go.Figure, "to_html", spy)
    render_html({}, [Section("A", "", small_figures(2))])
    assert len(calls) == 2
    for kwargs in calls:
        assert kwargs["include_plotlyjs"] is False and kwargs["full_html"] is False
        assert kwargs["config"]["responsive"] is True


def test_stable_ids_and_table_of_contents() -> None:
    sections = [Section("Massive activations", "", small_figures(2)), Section("Massive activations!", "", small_figures(1)),
                Section("LID / layer", "", [])]
    page = render_html({}, sections)
    for div in ["fig-massive-activations-0", "fig-massive-activations-1", "fig-massive-activations-2-0"]:
        assert f'id="{div}"' in page
    for anchor in ["sec-massive-activations", "sec-massive-activations-2", "sec-lid-layer"]:
        assert f'href="#{anchor}"' in page and f'<section id="{anchor}">' in page
    assert render_html({}, sections) == page  # deterministic


def test_every_user_string_is_escaped() -> None:
    header = {"model": XSS, XSS: "key too", "command": f"probe report --corpus '{XSS}'"}
    table = [{"layer": 1, "token": XSS, XSS: 2.5}, {"layer": 2, "token": BREAKOUT}]
    page = render_html(header, [Section(XSS, XSS, [hostile_figure()], table=table)])
    assert XSS not in page and BREAKOUT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # The figure JSON keeps its strings but cannot end its <script>: every block closes where it should.
    blocks = SCRIPT_BLOCK.findall(page)
    assert len(blocks) == 2 and blocks[1].rstrip().endswith("};")
    assert page.lower().count("<script") == page.lower().count("</script") == 2
    assert "\\u003c\\u002fscript\\u003e" in blocks[1]  # plotly's own escaping of '</script>'


def test_unsafe_figure_fragment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(go.Figure, "to_html", lambda self, **kw: f'<div></div><script>var s = "{BREAKOUT}";</script>')
    with pytest.raises(ValueError, match="script"):
        render_html({}, [Section("A", "", [go.Figure()])])


def test_table_cells() -> None:
    page = render_html({}, [Section("T", "", [], table=[{"a": 0.123456789, "b": None, "c": True}, {"d": 7}])])
    assert "<th>a</th><th>b</th><th>c</th><th>d</th>" in page
    assert '<td class="num">0.1235</td><td></td><td>True</td><td></td>' in page
    assert '<td class="num">7</td>' in page


def test_results_json_round_trips(tmp_path: Path) -> None:
    results = {
        "ppl": 8.25, "nan": float("nan"), "inf": math.inf, "ninf": -np.inf, "n": np.int64(5), "x": np.float32(0.5),
        "arr": np.arange(3), "nested": {"t": (1, 2), 3: [np.nan]}, "path": Path("a/b"), "flag": True, "none": None,
    }
    write_report(tmp_path / "out", {"model": "m"}, [], results)
    loaded = json.loads((tmp_path / "out" / "results.json").read_text())
    assert loaded == {
        "ppl": 8.25, "nan": None, "inf": "inf", "ninf": "-inf", "n": 5, "x": 0.5,
        "arr": [0, 1, 2], "nested": {"t": [1, 2], "3": [None]}, "path": "a/b", "flag": True, "none": None,
    }
    assert to_jsonable(loaded) == loaded


def test_to_jsonable_uses_to_dict_and_refuses_the_unknown() -> None:
    class Result:
        def to_dict(self) -> dict:
            return {"v": float("nan")}

    assert to_jsonable([Result()]) == [{"v": None}]
    with pytest.raises(TypeError, match="object"):
        to_jsonable({"x": object()})


def test_write_report_creates_both_files(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "out"
    path = write_report(out, {"model": "m"}, [Section("A", "a", small_figures(1))], {"a": 1})
    assert path == out / "report.html" and path.read_text().startswith("<!DOCTYPE html>")
    assert json.loads((out / "results.json").read_text()) == {"a": 1}
    path = write_report(out, {"model": "m2"}, [], {"a": 2})  # replace an existing report
    assert "m2" in path.read_text() and json.loads((out / "results.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temp dir left behind


def _fail_render(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_html", boom)


def _fail_mid_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half of report.html is on disk (in the temp dir) when Ctrl-C arrives."""
    original = report._write_synced

    def half(path: Path, text: str) -> None:
        if path.name == "report.html":
            path.write_text(text[: len(text) // 2])
            raise KeyboardInterrupt
        original(path, text)

    monkeypatch.setattr(report, "_write_synced", half)


def _fail_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "to_jsonable", lambda value: {"bad": float("nan")})  # allow_nan=False raises


def _fail_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report.os, "replace", boom)
    monkeypatch.setattr(report.os, "rename", boom)


@pytest.mark.parametrize("fail", [_fail_render, _fail_mid_write, _fail_json, _fail_commit])
@pytest.mark.parametrize("existing", [True, False])
def test_interrupted_write_leaves_old_report_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: object, existing: bool
) -> None:
    out = tmp_path / "out"
    before: dict[str, bytes] = {}
    if existing:
        write_report(out, {"model": "old"}, [Section("Old", "old", small_figures(1))], {"old": 1})
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    fail(monkeypatch)  # type: ignore[operator]
    with pytest.raises((KeyboardInterrupt, ValueError)):
        write_report(out, {"model": "new"}, [Section("New", "new", small_figures(2))], {"new": 2})
    assert [p.name for p in tmp_path.iterdir()] == (["out"] if existing else [])  # no temp dir, no half report
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ctrl_c_during_the_final_moves_is_deferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT between moving results.json and report.html must not leave a mixed old/new pair."""
    out = tmp_path / "out"
    write_report(out, {"model": "old"}, [], {"run": "old"})
    original = report.os.replace

    def replace_with_sigint(src: Path, dst: Path) -> None:
        original(src, dst)
        if Path(dst).name == "results.json":
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(report.os, "replace", replace_with_sigint)
    with pytest.raises(KeyboardInterrupt):
        write_report(out, {"model": "new"}, [], {"run": "new"})
    assert json.loads((out / "results.json").read_text()) == {"run": "new"}
    assert "probe report — new" in (out / "report.html").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_size_of_a_page_with_six_small_figures(tmp_path: Path) -> None:
    path = write_report(tmp_path, {"model": "m"}, [Section("A", "", small_figures(6))], {})
    size = path.stat().st_size
    assert size < 8_000_000
    assert size - len(plotly.offline.get_plotlyjs()) < 200_000  # the figures themselves are small

