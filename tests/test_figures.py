"""Figures of the massive-activation scan on the embedded model, their escaping of token strings,
and their static export through Plotly's own exporter."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import plotly.io as pio
import pytest

from analyses import ablate, massive
from analyses.report import style
from analyses.ablate import make_plans, run_plans
from analyses.massive import RATIOS, scan
from analyses.report.export import figure_size, save_figures
from probe.data import load_corpus, token_windows

BAD = "<script>alert(1)</script><b>x</b>"
NEURONS = [1229, 1487, 1010, 926, 1401]


@pytest.fixture(scope="module")
def result(smol):
    """With ``<|endoftext|>`` in front of every window: a token that needs escaping in HTML."""
    return scan(smol.model, smol.tokenizer, name="smollm2", n_seqs=4, seq_len=64, prepend="<|endoftext|>")


@pytest.fixture(scope="module")
def detail(smol, result):
    return massive.origin_detail(smol.model, smol.tokenizer, result)


@pytest.fixture(scope="module")
def table(smol, result):
    """A real (small) ablation run: zero, retain and two seeds of random controls at k = 1, 2."""
    plans = [p for mode in ("zero", "retain", "random") for p in make_plans(smol.model, None, result, mode, [1, 2], seeds=2)]
    ev = token_windows(smol.tokenizer, load_corpus(), seq_len=32, n_seqs=2)
    return run_plans(smol.model, ev, plans)


def with_tasks(table):
    """``table`` with made-up zero-shot accuracies in the shape ``run_plans(tasks=...)`` gives."""
    acc = {"zero": 0.26, "retain": 0.4, "random": 0.47}

    def tasks(a: float) -> dict:
        return {"probe_builtins": {"acc": a, "acc_norm": a, "n": 50, "chance": 0.25},
                "probe_pydoc_topics": {"acc": a - 0.02, "acc_norm": a, "n": 50, "chance": 0.25}}

    return {"baseline": {**table["baseline"], "tasks": tasks(0.48)},
            "results": [{**r, "tasks": tasks(acc[r["mode"]] - 0.01 * r["k"])} for r in table["results"]]}


def annotations(fig):
    return [a.text for a in fig.layout.annotations]


def log_annotations_on_scale(fig):
    """Plotly places annotations on a log axis in log10 units: each must land inside the data."""
    for a in fig.layout.annotations:
        if a.yref in ("y", "y2") and fig.layout[a.yref.replace("y", "yaxis")].type == "log":
            ys = np.concatenate([np.asarray(t.y, dtype=float) for t in fig.data
                                 if (t.yaxis or "y") == a.yref and t.y is not None and len(t.y)])
            ys = ys[np.isfinite(ys) & (ys > 0)]
            assert ys.min() / 10 <= 10 ** a.y <= ys.max() * 10, (a.text, a.y)


def test_residual_profile(result):
    fig = massive.residual_profile(result)
    assert [t.name for t in fig.data] == ["top-1 |h|", "top-2 |h|", "top-3 |h|", "median |h|"]
    assert all(len(t.x) == 30 and list(t.x) == list(range(30)) for t in fig.data)
    assert list(fig.data[0].y) == pytest.approx([l.max for l in result.layers])
    assert list(fig.data[3].y) == pytest.approx([l.median for l in result.layers])
    assert all(a >= b for a, b in zip(fig.data[0].y, fig.data[1].y) if b is not None)
    top = fig.data[0].customdata[11]
    assert (top[0], top[1], top[2]) == ("&lt;|endoftext|&gt;", 0, 507) and abs(top[3]) > 1e4
    for word in ("layer", "token", "position", "dim"):
        assert word in fig.data[0].hovertemplate
    assert fig.layout.yaxis.type == "log"
    assert "origin layer 11" in annotations(fig)
    assert any(t.startswith("precursor layer 1 ") for t in annotations(fig))
    assert any(s.y0 == s.y1 == 100 for s in fig.layout.shapes)
    assert any(s.x0 == s.x1 == 11 for s in fig.layout.shapes)
    log_annotations_on_scale(fig)
    assert result.figure().to_plotly_json()["data"][0]["y"] == fig.to_plotly_json()["data"][0]["y"]


def test_ratio_profile(result):
    fig = massive.ratio_profile(result)
    assert list(fig.data[0].y) == pytest.approx([l.ratio for l in result.layers])
    assert fig.data[1].name == "dim 507: max |h| / median" and len(fig.data[1].y) == 30
    assert sorted(s.y0 for s in fig.layout.shapes if s.y0 == s.y1) == list(RATIOS)
    texts = annotations(fig)
    assert {"100x: origin 1", "300x: origin 2", "1000x: origin 11", "3000x: origin 11"} <= set(texts)
    assert "origin layer 11" in texts
    log_annotations_on_scale(fig)


def test_massive_tokens(result):
    fig = massive.massive_tokens(result)
    assert [t.name for t in fig.data] == ["dim 507"]
    assert list(fig.data[0].x) == ["0: &lt;|endoftext|&gt;"]
    assert list(fig.data[0].y) == [sum(len(l.massive) for l in result.layers)]
    assert fig.data[0].customdata[0][3] == "11-27"
    empty = dataclasses.replace(result, layers=[dataclasses.replace(l, massive=[]) for l in result.layers])
    assert "no massive activations at these thresholds" in annotations(massive.massive_tokens(empty))


def test_origin_detail_and_heatmap(detail, result):
    assert (detail.layer, detail.position, detail.dim) == (11, 0, 507)
    assert detail.neurons == result.massive_neurons == NEURONS
    assert detail.resid.shape == (64, 576) and detail.post.shape == (1536,)
    assert set(detail.row_norms) == {"W_up", "W_gate"}
    assert detail.row_norms["W_up"][NEURONS] == pytest.approx(result.massive_weights["W_up"]["row_norms"], rel=1e-5)
    assert json.loads(json.dumps(detail.to_dict()))["neurons"] == NEURONS
    fig = massive.origin_heatmap(detail)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (64, 576)
    assert np.unravel_index(z.argmax(), z.shape) == (0, 507)
    assert z[0, 507] == pytest.approx(np.log10(abs(detail.resid[0, 507])), rel=1e-6)
    assert fig.data[0].y[0] == "0: &lt;|endoftext|&gt;" and len(fig.data[0].y) == 64
    circled = fig.data[1]
    assert list(circled.x) == [507] and list(circled.y) == [fig.data[0].y[0]]
    for word in ("dim", "position", "token"):
        assert word in fig.data[0].hovertemplate + circled.hovertemplate
    assert any("dim 507, position 0" in t for t in annotations(fig))


def test_neuron_profile(detail):
    fig = massive.neuron_profile(detail)
    rest, top = fig.data
    assert list(top.x) == NEURONS and list(top.text) == [str(n) for n in NEURONS]
    assert top.marker.color == style.HIGHLIGHT and rest.marker.color != style.HIGHLIGHT
    assert len(rest.x) == 1536 - 5 and not set(rest.x) & set(NEURONS)
    assert list(top.y) == pytest.approx(np.abs(detail.post[NEURONS]).tolist())
    assert min(top.y) > max(rest.y)
    assert fig.layout.yaxis.type == "log" and "&lt;|endoftext|&gt;" in fig.layout.title.text


def test_weight_row_norms(detail, result):
    fig = massive.weight_row_norms(detail)
    lines = [t for t in fig.data if t.mode == "lines"]
    marks = [t for t in fig.data if t.mode == "markers+text"]
    assert [t.name for t in lines] == ["W_gate rows", "W_up rows"]  # Arch.ffn_in_names, forward order
    for line, mark, name in zip(lines, marks, ("W_gate", "W_up")):
        assert len(line.y) == 1536 and np.all(np.diff(line.y) <= 0)
        assert list(mark.customdata) == NEURONS
        assert list(mark.y) == pytest.approx(result.massive_weights[name]["row_norms"], rel=1e-5)
        assert mark.x[0] == 1  # the top neuron's rows have the largest norms of the layer
    assert [t.showlegend for t in marks] == [True, False]


def test_token_strings_are_escaped_where_plotly_renders_html(result, detail):
    def poison(e):
        return {**e, "token": BAD}

    layers = [dataclasses.replace(l, top=[poison(e) for e in l.top], massive=[poison(e) for e in l.massive])
              for l in result.layers]
    bad_scan = dataclasses.replace(result, model=BAD, corpus=BAD, layers=layers,
                                   massive_tokens=[poison(t) for t in result.massive_tokens])
    bad_detail = dataclasses.replace(detail, model=BAD, tokens=[BAD] * len(detail.tokens))
    bad_rows = [{"mode": BAD, "layer": 11, "k": 1, "neurons": [1], "dims": [], "seed": None, "ppl": 50.0,
                 "tasks": {BAD: {"acc": 0.3, "chance": 0.25}}}]
    figs = [massive.residual_profile(bad_scan), massive.ratio_profile(bad_scan), massive.massive_tokens(bad_scan),
            massive.origin_heatmap(bad_detail), massive.neuron_profile(bad_detail), massive.weight_row_norms(bad_detail),
            ablate.ablation_figure(bad_rows, {"ppl": 10.0, "tasks": {BAD: {"acc": 0.4, "chance": 0.25}}})]
    for fig in figs:
        text = json.dumps(fig.to_plotly_json(), default=str)
        assert "<script>" not in text and "<b>x" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in text
    heat = figs[3]
    assert heat.data[0].y[0] == "0: " + style.esc(BAD) and heat.data[1].customdata[0][0] == style.esc(BAD)


def test_ablation_figure_without_accuracies(table):
    base = table["baseline"]["ppl"]
    fig = ablate.ablation_figure(table["results"], table["baseline"])
    assert ablate.ablation_figure(table).to_plotly_json()["data"] == fig.to_plotly_json()["data"]
    assert "yaxis2" not in fig.layout.to_plotly_json() and fig.layout.yaxis.type == "log"
    by_name = {t.name: t for t in fig.data}
    zero = [r for r in table["results"] if r["mode"] == "zero"]
    assert list(by_name["zero"].x) == [1, 2] and list(by_name["zero"].y) == pytest.approx([r["ppl"] for r in zero])
    assert {"zero", "retain", "random (median of seeds)", "random (seeds)"} == set(by_name)
    assert len(by_name["random (seeds)"].x) == 4
    assert any(s.y0 == s.y1 == pytest.approx(base) for s in fig.layout.shapes)
    for word in ("k", "layer", "rows"):
        assert word in by_name["zero"].hovertemplate
    log_annotations_on_scale(fig)


def test_ablation_figure_with_accuracies(table):
    data = with_tasks(table)
    fig = ablate.ablation_figure(data["results"], data["baseline"])
    assert fig.layout.yaxis2.title.text == "accuracy" and fig.layout.yaxis.type == "log"
    acc = [t for t in fig.data if t.yaxis == "y2" and t.name.startswith("zero · ")]
    assert [t.name for t in acc] == ["zero · probe_builtins", "zero · probe_pydoc_topics"]
    assert list(acc[0].y) == pytest.approx([0.25, 0.24])
    assert {"acc probe_builtins", "acc probe_pydoc_topics"} <= {t.name for t in fig.data}
    assert "chance 0.25" in annotations(fig) and "baseline 0.480" in annotations(fig)
    log_annotations_on_scale(fig)


def all_figures(result, detail, table):
    data = with_tasks(table)
    return {"residual": massive.residual_profile(result), "ratio": massive.ratio_profile(result),
            "tokens": massive.massive_tokens(result), "heatmap": massive.origin_heatmap(detail),
            "neurons": massive.neuron_profile(detail), "norms": massive.weight_row_norms(detail),
            "ablation": ablate.ablation_figure(table), "ablation_acc": ablate.ablation_figure(data["results"], data["baseline"])}


def test_every_figure_has_template_titles_and_axis_labels(result, detail, table):
    for name, fig in all_figures(result, detail, table).items():
        assert fig.layout.template == pio.templates["plotly_white"], name
        assert fig.layout.title.text, name
        assert fig.layout.xaxis.title.text or fig.layout.xaxis2.title.text, name
        assert fig.layout.yaxis.title.text, name
        assert all(t.hovertemplate for t in fig.data if t.x is not None and len(t.x) and t.x[0] is not None), name


def test_every_figure_exports_through_plotly(chrome, result, detail, table, tmp_path):
    """All figures in one kaleido session, each at its layout size times the scale."""
    figs = all_figures(result, detail, table)
    paths = save_figures(figs, tmp_path, scale=1)
    assert [p.name for p in paths] == [f"{n}.png" for n in figs]
    for (name, fig), path in zip(figs.items(), paths):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        size = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # the IHDR chunk
        assert size == figure_size(fig), name


def test_long_titles_wrap_at_spaces_and_make_room(result):
    text = "word " * 40 + "end"
    lines = style.title(text)["text"].split("<br>")
    assert len(lines) > 1 and all(len(line) <= style.TITLE_WIDTH for line in lines) and " ".join(lines) == text
    long = dataclasses.replace(result, model="A Checkpoint With A Long Own Name " * 4)
    fig = massive.residual_profile(long)
    lines = fig.layout.title.text.split("<br>")
    assert len(lines) > 1 and all(len(line) <= style.TITLE_WIDTH for line in lines)
    assert fig.layout.margin.t >= 60 + 24 * len(lines)  # the lines do not run into the plot
