"""analyses.report.export: static figures from Plotly's own exporter (kaleido 1.x driving Chromium).

The tests that render need Chrome or Chromium (Debian package ``chromium``; ``scripts/setup.sh``
installs it when run as root). Without one they skip, except under CI (``CI=true``), where they
fail. The error paths (no browser, bad format, failures while rendering or writing) run always.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

import analyses.report.export as export
from analyses.report.export import FORMATS, SIZE, chrome_path, figure_size, save_figure, save_figures
from probe.errors import ProbeError


def mixed_figure() -> go.Figure:
    """Scatter, bar and heatmap in subplots, plus a violin (a trace type static.py skipped)."""
    rng = np.random.default_rng(0)
    fig = make_subplots(rows=2, cols=2, subplot_titles=["lines", "bars", "heatmap", "violin"])
    fig.add_trace(go.Scatter(x=np.arange(30), y=10 ** rng.uniform(0, 3, 30), mode="lines+markers", name="max |h|"), 1, 1)
    fig.add_trace(go.Bar(x=["base", "zero top-5", "random-5"], y=[8.2, 123.0, 8.3], name="ppl"), 1, 2)
    fig.add_trace(go.Heatmap(z=rng.normal(size=(12, 40)), colorscale="RdBu"), 2, 1)
    fig.add_trace(go.Violin(y=rng.normal(size=200), name="norms"), 2, 2)
    fig.update_yaxes(type="log", row=1, col=1)
    return fig.update_layout(title="Mixed figure", showlegend=False)


def pixels(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


# --- with a real browser ---------------------------------------------------------------------

def test_png_is_plotlys_own_export(chrome: str, tmp_path: Path) -> None:
    fig = mixed_figure()
    path = save_figure(fig, tmp_path / "sub" / "mixed.png")  # parent folder is created
    assert path == tmp_path / "sub" / "mixed.png"
    ours = path.read_bytes()
    theirs = fig.to_image(format="png", width=SIZE[0], height=SIZE[1], scale=2)
    assert ours[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = pixels(ours), pixels(theirs)
    assert a.shape[:2] == (2 * SIZE[1], 2 * SIZE[0])
    np.testing.assert_array_equal(a, b)
    assert ours == theirs  # kaleido is deterministic: same figure, same bytes
    # Every trace was drawn: the violin's panel is not blank (a plain-background subplot would be).
    h, w = a.shape[:2]
    violin_panel = a[int(h * 0.6):int(h * 0.85), int(w * 0.6):int(w * 0.85), :3]
    assert len(np.unique(violin_panel.reshape(-1, 3), axis=0)) > 20
    assert leftovers(tmp_path) == ["mixed.png", "sub"]


def test_size_and_scale_follow_the_layout(chrome: str, tmp_path: Path) -> None:
    fig = go.Figure(go.Box(y=[1, 2, 3, 5, 8])).update_layout(width=400, height=300)
    assert figure_size(fig) == (400, 300)
    assert figure_size(fig.to_dict()) == (400, 300)
    assert figure_size(go.Figure()) == SIZE
    path = save_figure(fig.to_dict(), tmp_path / "box.png", scale=1.5)  # a dict works too
    assert pixels(path.read_bytes()).shape[:2] == (450, 600)
    assert path.read_bytes() == fig.to_image(format="png", width=400, height=300, scale=1.5)


def test_svg_and_pdf_are_valid(chrome: str, tmp_path: Path) -> None:
    fig = mixed_figure()
    svg = save_figure(fig, tmp_path / "mixed.svg").read_text()
    assert svg.lstrip().startswith(("<svg", "<?xml")) and svg.rstrip().endswith("</svg>")
    assert "violin" in svg  # the violin trace is in the vector output
    pdf = save_figure(fig, tmp_path / "mixed.out", format="PDF").read_bytes()  # format beats suffix
    assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-64:]


@pytest.mark.slow  # 12 s; tests/test_report_cli.py checks the PNG export of every report figure byte for byte
def test_save_figures_one_session_many_formats(chrome: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    figs = [(f"{i:02d}-fig", go.Figure(go.Heatmap(z=rng.normal(size=(30, 256)))) if i % 2
             else go.Figure(go.Scatter(y=rng.normal(size=200).cumsum())).update_layout(yaxis_type="linear"))
            for i in range(10)]
    start = time.perf_counter()
    paths = save_figures(figs, tmp_path / "out", formats=("png", "svg"))
    seconds = time.perf_counter() - start
    assert paths == [tmp_path / "out" / f"{name}.{fmt}" for name, _ in figs for fmt in ("png", "svg")]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes() == figs[0][1].to_image(format="png", width=SIZE[0], height=SIZE[1], scale=2)
    assert len(leftovers(tmp_path / "out")) == 20  # no temporary files
    print(f"\n20 images of 10 figures in one kaleido session: {seconds:.1f} s")
    assert save_figures({"one": figs[0][1]}, tmp_path / "dict") == [tmp_path / "dict" / "one.png"]


def test_write_failure_leaves_no_file(chrome: str, tmp_path: Path) -> None:
    target = tmp_path / "taken.png"
    target.mkdir()  # a folder where the file should go: the final rename fails
    with pytest.raises(ProbeError, match="cannot write"):
        save_figure(go.Figure(go.Bar(y=[1, 2])), target)
    assert target.is_dir() and leftovers(tmp_path) == ["taken.png"]  # no temp file beside it
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProbeError, match="cannot write"):  # the parent folder is a file
        save_figure(go.Figure(go.Bar(y=[1, 2])), tmp_path / "file" / "fig.png")
    assert leftovers(tmp_path) == ["file", "taken.png"]


# --- without a browser (these never skip) ----------------------------------------------------

def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ProbeError, match="png, svg, pdf"):
        save_figure(go.Figure(), tmp_path / "fig.jpg")
    with pytest.raises(ProbeError, match="png, svg, pdf"):
        save_figure(go.Figure(), tmp_path / "fig.png", format="eps")
    with pytest.raises(ProbeError, match="without suffix"):
        save_figure(go.Figure(), tmp_path / "fig")
    with pytest.raises(ProbeError, match="png, svg, pdf"):
        save_figures([("a", go.Figure())], tmp_path / "out", formats=("png", "gif"))
    assert FORMATS == ("png", "svg", "pdf")
    assert leftovers(tmp_path) == []


def test_no_browser_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert chrome_path() is None
    for call in (lambda: save_figure(go.Figure(), tmp_path / "fig.png"),
                 lambda: save_figures({"a": go.Figure()}, tmp_path / "out")):
        with pytest.raises(ProbeError, match="needs Chrome or Chromium") as err:
            call()
        assert "apt-get install -y chromium" in str(err.value) and "BROWSER_PATH" in str(err.value)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert chrome_path() is None
    with pytest.raises(ProbeError, match="needs Chrome or Chromium"):
        save_figure(go.Figure(), tmp_path / "fig.svg")
    assert leftovers(tmp_path) == []


def test_browser_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(fake))
    assert chrome_path() == str(fake)
    # A binary that is no browser: kaleido's failure becomes one line, and nothing is written.
    with pytest.raises(ProbeError, match=r"^static export with kaleido .*my-chrome.* failed: \w+: [^\n]+$"):
        save_figure(go.Figure(go.Bar(y=[1])), tmp_path / "fig.png")
    assert leftovers(tmp_path) == ["my-chrome"]


class FailingKaleido:
    """Stands in for kaleido.Kaleido: renders one figure, then fails like a JS error would."""

    def __init__(self, **kwargs: object) -> None:
        self.calls = 0

    async def __aenter__(self) -> FailingKaleido:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def calc_fig(self, fig: dict, opts: dict) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("Plotly.toImage failed\nwith a long traceback")
        return b"\x89PNG fake"


def test_render_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kaleido

    monkeypatch.setattr(export, "chrome_path", lambda: "/usr/bin/true")
    monkeypatch.setattr(kaleido, "Kaleido", FailingKaleido)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.png").write_bytes(b"old")
    with pytest.raises(ProbeError, match=r"^static export with kaleido \(/usr/bin/true\) failed: "
                                         r"RuntimeError: Plotly.toImage failed$"):
        save_figures([("a", go.Figure()), ("b", go.Figure())], tmp_path / "out")
    # The first figure rendered fine but is not written: a batch is all or nothing.
    assert leftovers(tmp_path) == ["b.png", "out"]
    assert (tmp_path / "out" / "b.png").read_bytes() == b"old"  # an existing file is untouched
