"""`probe report` end to end: the real report in a real browser, hostile corpus text escaped,
Ctrl-C leaves no half-written report and restores the model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

import analyses.ablate.run
import analyses.cli
import analyses.cli.options
from analyses.report.export import figure_size
from browser import check_report, chromium_path

PROBE = str(Path(sys.executable).parent / "probe")
SMALL = ["--n-seqs", "4", "--seq-len", "64", "--eval-seqs", "2", "--n-tokens", "200", "--lid-k", "16", "-q"]
XSS = "<script>alert(1)</script>"
ARTIFACTS = Path(os.environ.get("PROBE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


def probe(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PROBE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The full report; with --static (Plotly's exporter) where a Chromium is there to draw it."""
    out = tmp_path_factory.mktemp("report") / "smollm2"
    static = ["--static"] if chromium_path() else []
    r = probe("report", "--out", str(out), *static, *SMALL)
    assert r.returncode == 0, r.stderr
    return out


def html_figures(html: str) -> dict[str, go.Figure]:
    """The figures as the report draws them: ``Plotly.newPlot("fig-id", data, layout, config)``."""
    figures, decoder = {}, json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"(fig-[^"]+)",\s*', html):
        data, end = decoder.raw_decode(html, m.end())
        layout, _ = decoder.raw_decode(html, html.index("{", end))
        figures[m.group(1)] = go.Figure(data=data, layout=layout)
    return figures


def test_report_files(report: Path) -> None:
    html = (report / "report.html").read_text()
    results = json.loads((report / "results.json").read_text())
    assert html.count("plotly.js v") == 1  # the library inlined once
    assert set(results) >= {"header", "massive", "ablation", "lifecycle", "geometry", "origin_detail"}
    assert results["massive"]["origin_layer"] == 11 and results["massive"]["massive_neurons"][0] == 1229
    assert results["header"]["command"].startswith("probe report --out")
    assert len(results["geometry"]["layers"]) == 30
    assert f'{results["ablation"]["baseline"]["ppl"]:.2f}' in html  # the numbers in the text are the results'
    # 9 + the window-protocol comparison + LID across scales + the lifecycle's two
    assert len(re.findall(r'<div id="fig-', html)) == len(html_figures(html)) == 13
    assert results["lifecycle"]["origin_layer"] == 11 and "Outlier lifecycle" in html
    assert results["protocol"]["prepend"] == "auto" and results["protocol"]["ids"] == []  # SmolLM2 adds nothing
    assert "window protocol" in html and "Window protocol: does the picture move?" in html
    assert (report / "report.html").stat().st_size < 8_000_000


def test_static_pngs_are_plotlys_own_export(chrome: str, report: Path) -> None:
    """--static writes, per figure of the report and in report order, the PNG that Plotly's own
    exporter (plotly.io.to_image, kaleido) makes of the figure the HTML draws: byte for byte."""
    figures = list(html_figures((report / "report.html").read_text()).values())
    pngs = sorted(report.glob("*.png"))
    assert [p.name for p in pngs][:2] == ["01-massive-activations-per-layer-1.png",
                                           "02-massive-activations-per-layer-2.png"]
    assert len(pngs) == len(figures) == 13
    for png, fig in zip(pngs, figures):
        width, height = figure_size(fig)
        assert png.read_bytes() == pio.to_image(fig, format="png", width=width, height=height, scale=2), png.name


def test_report_renders_in_chromium(chrome: str, report: Path) -> None:
    html = (report / "report.html").read_text()
    ids = re.findall(r'<div id="(fig-[^"]+)"', html)
    shot = report.parent / "probe-report.png"
    assert check_report(report / "report.html", ids, screenshot=shot, timeout=60) == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "probe-report.png").write_bytes(shot.read_bytes())


def test_hostile_corpus_is_escaped(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    corpus = tmp_path / "hostile.txt"
    corpus.write_text((f"Here is {XSS} in the text and a token {XSS}.\n" * 200))
    out = tmp_path / "r"
    r = probe("report", "--out", str(out), "--sections", "massive", "--corpus", str(corpus), *SMALL)
    assert r.returncode == 0, r.stderr
    html = (out / "report.html").read_text()
    # The tokenizer cuts it into ' <', 'script', '>', 'alert', ..., '</', 'script', '>': those token
    # strings are in the figures (heat-map labels, hovers), only ever escaped.
    assert XSS not in html and "<script>alert" not in html
    assert "\\u003c\\u002f" in html or "\\u003c/" in html  # the '</' token, escaped in the figure JSON
    assert html.count("</script>") == len(re.findall(r"<script[ >]", html))  # every script closes its own tag
    request.getfixturevalue("chrome")  # the browser half needs Chromium
    assert check_report(out / "report.html", re.findall(r'<div id="(fig-[^"]+)"', html), timeout=60) == []


def checksum(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_ctrl_c_during_ablation_restores_weights_and_writes_nothing(smol, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.html").write_text("previous report")
    before = checksum(smol.model)
    calls = {"n": 0}
    real = analyses.ablate.run.perplexity

    def interrupted(model, rows, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # the second plan, while its edit is applied
            raise KeyboardInterrupt
        return real(model, rows, *a, **kw)

    monkeypatch.setattr(analyses.ablate.run, "perplexity", interrupted)
    monkeypatch.setattr(analyses.cli.options.ModelArgs, "load", lambda self: smol)
    with pytest.raises(SystemExit) as exit_:
        analyses.cli.main(["report", "--out", str(out), "--sections", "massive,ablation", *SMALL])
    assert exit_.value.code == 130 and calls["n"] == 3
    assert all(torch.equal(a, b) for a, b in zip(before, smol.model.parameters()))
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (out / "report.html").read_text() == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temporary folder left behind


def test_sigint_to_the_cli_leaves_no_report(tmp_path: Path) -> None:
    out = tmp_path / "r"
    proc = subprocess.Popen([PROBE, "report", "--out", str(out), "--sections", "massive,ablation", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    time.sleep(12)  # model loaded, scan or ablations running (the whole run takes over a minute)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_sections_exit_2(tmp_path: Path) -> None:
    r = probe("report", "--out", str(tmp_path / "r"), "--sections", "massive,nonsense")
    assert r.returncode == 2 and "choose from" in r.stderr and not (tmp_path / "r").exists()
