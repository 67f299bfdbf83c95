"""The report's sections on the embedded model: the registry runs what is asked for, in report
order; titles carry the model's own name and each path once; long lists are cut to a short table."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import pytest

from analyses.cli.options import split_list
from analyses.report import sections as S
from probe.errors import ProbeError
from probe.models import load_model


@pytest.fixture(scope="module")
def run(smol):
    """The massive section with thresholds low enough that dozens of dims count as massive."""
    cfg = S.ReportConfig(n_seqs=2, seq_len=32, abs_threshold=1.0, ratio=2.0, compare_prepend=False)
    bars: list[tuple[str, int]] = []

    @contextmanager
    def progress_bar(label, total):
        bars.append((label, total))
        yield lambda n: None

    run = S.Run(smol, cfg, S.parse_sections(["massive"]))
    return run, S.run_sections(run, progress_bar), bars


def test_registry_runs_the_chosen_sections_in_report_order(run):
    state, parts, bars = run
    assert bars == [("scanning", 2)]  # massive only (2 windows): no ablation, no geometry pass
    assert set(state.results["timings"]) == {"scanning"} and state.geometry is None
    assert [p.title for p in parts] == ["Massive activations per layer", "Where the massive activations sit",
                                        "Massive weights and the super weight"]
    assert state.results["massive"] == state.scan.to_dict() and "origin_detail" in state.results
    assert S.parse_sections(["collapse", "ablation"]) == ["massive", "ablation", "collapse"]  # ablation needs the scan


def test_long_carrier_lists_become_a_short_table(run):
    state, parts, _ = run
    where = parts[1]
    n = len(state.scan.carriers)
    assert n > S.TOP  # the low thresholds make many massive dims
    assert len(where.table) == S.TOP and [r["massive dim"] for r in where.table] == [c["dim"] for c in state.scan.carriers[:S.TOP]]
    assert f"the top {S.TOP} of {n}; results.json lists all" in where.text
    assert f"and {len(state.scan.massive_dims) - S.TOP} more" in where.text
    assert len(state.results["massive"]["carriers"]) == n  # the full list stays in results.json


def test_titles_use_the_models_own_name_and_paths_appear_once(smol, run):
    state, parts, _ = run
    head = S.header(smol, "stdlib", "64", argv=["report"])
    assert head["model"] == smol.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert head["loaded from"] == f"smollm2 (loaded from {smol.source})"
    assert smol.source not in parts[0].figures[0].layout.title.text
    assert smol.name in parts[0].figures[0].layout.title.text
    # A folder: the name the GGUF file gave itself (general.name, kept by transformers in the config).
    folder = load_model(smol.source)
    assert folder.name == "Smollm2 135M 8k Lc100K Mix1 Ep2" and folder.where() == smol.source


def test_one_comma_list_parser():
    assert split_list(" ppl, tasks,,", "--eval", ("ppl", "tasks")) == ["ppl", "tasks"]
    with pytest.raises(ProbeError, match=r"^--eval 'ppl,nope': 'nope' unknown; choose from ppl, tasks$"):
        split_list("ppl,nope", "--eval", ("ppl", "tasks"))
    with pytest.raises(ProbeError, match="no report section chosen"):
        S.parse_sections(split_list(",", "--sections", S.SECTIONS))


def test_lid_and_collapse_share_one_geometry_pass(smol):
    cfg = S.ReportConfig(seq_len=32, geometry_seqs=3, lid_points=60, lid_k=8, top_classes=16)
    bars: list[tuple[str, int]] = []

    @contextmanager
    def progress_bar(label, total):
        bars.append((label, total))
        yield lambda n: None

    run = S.Run(smol, cfg, S.parse_sections(["lid", "collapse"]))
    parts = S.run_sections(run, progress_bar)
    assert bars == [("geometry", 3)]
    assert [p.title for p in parts] == ["Local intrinsic dimension", "Neural collapse with next tokens as classes"]
    assert len(run.results["geometry"]["layers"]) == 30
    assert [len(p.figures) for p in parts] == [2, 1]  # LID with its interval, and LID across scales (Gride)
    for part in parts:
        for fig in part.figures:
            assert smol.name in fig.layout.title.text and fig.layout.yaxis.title.text and fig.layout.xaxis.title.text


def test_scan_and_geometry_share_one_forward_pass(smol, monkeypatch):
    """With the massive section chosen, the geometry rides on the scan's pass: no second pass over
    the windows (counted on the model's forward calls), the same numbers as a pass of its own."""
    cfg = S.ReportConfig(n_seqs=3, seq_len=32, geometry_seqs=3, lid_points=60, lid_k=8, top_classes=16,
                         compare_prepend=False, groups=1)
    calls = []
    handle = smol.model.register_forward_hook(lambda m, a, out: calls.append(a[0].shape if a else None))
    try:
        run = S.Run(smol, cfg, S.parse_sections(["massive", "lid"]))
        S.run_sections(run, lambda label, total: _bar())
    finally:
        handle.remove()
    batched = [c for c in calls if c is not None and c[0] > 1]
    assert batched == [(3, 32)]  # one batch of the 3 windows; the rest are one-sequence re-runs of the scan
    alone = S.Run(smol, cfg, S.parse_sections(["lid"]))
    S.run_sections(alone, lambda label, total: _bar())
    assert run.results["geometry"] == alone.results["geometry"]
    assert set(run.results["timings"]) == {"scanning", "geometry"}


@contextmanager
def _bar():
    yield lambda n: None


def test_lifecycle_section_reuses_the_ablation_table(smol, monkeypatch):
    """The lifecycle section brings the scan, measures 5 stages (the unedited model, the super weight,
    top-k zeroed and kept alone, a random control), and takes the perplexities from the ablation
    section's table instead of evaluating again."""
    import analyses.ablate.run as run_module

    cfg = S.ReportConfig(n_seqs=3, seq_len=32, eval_seqs=2, eval_len=48, compare_prepend=False, seeds=1,
                         ablation_ks=(5,))
    assert S.parse_sections(["lifecycle"]) == ["massive", "lifecycle"]
    run = S.Run(smol, cfg, S.parse_sections(["ablation", "lifecycle"]))
    S.run_sections(run, lambda label, total: nullcontext(lambda n: None))
    evaluated = []
    monkeypatch.setattr(run_module, "run_plans", lambda *a, **kw: evaluated.append(a) or {})
    parts = S.lifecycle_report(run)
    assert evaluated == []  # every lifecycle plan is in the ablation table
    assert [p.title for p in parts] == ["Outlier lifecycle"] and len(parts[0].figures) == 2
    stages = run.results["lifecycle"]["stages"]
    assert [s["plan"]["mode"] if s["plan"] else None for s in stages] == [None, "super", "zero", "retain", "random"]
    table = {(r["mode"], r["k"], r["seed"]): r["ppl"] for r in run.results["ablation"]["results"]}
    assert stages[1]["ppl"] == table[("super", 1, None)] and stages[4]["ppl"] == table[("random", 5, 0)]



def test_census_section_on_the_scan(smol):
    """The census section (only when asked for) brings the scan, censuses the chosen layer on the scan's
    windows, and shows the scan's super weight with its effect and controls."""
    assert "census" not in S.DEFAULT_SECTIONS and S.parse_sections(["census"]) == ["massive", "census"]
    cfg = S.ReportConfig(n_seqs=3, seq_len=32, compare_prepend=False, census_layers=(11,), census_candidates=1,
                         census_controls=2, census_eval_seqs=2, census_eval_len=32)
    run = S.Run(smol, cfg, S.parse_sections(["census"]))
    bars = []

    @contextmanager
    def progress_bar(label, total):
        bars.append((label, total))
        yield lambda n: None

    parts = S.run_sections(run, progress_bar)
    assert bars[-1] == ("census", 1 * 3 * 4)
    census = run.results["census"]
    assert census["layers"] == [11] and len(census["controls"]) == 2 * len(census["rows"])
    sw = run.scan.super_weight
    row = next(r for r in census["rows"] if r["super_weight"])
    assert (row["layer"], row["row"], row["col"]) == (sw["layer"], sw["row"], sw["col"])
    section = parts[-1]
    assert section.title == "Which single weights are causal: the census" and len(section.figures) == 1
    assert f"W_down[{sw['row']}, {sw['col']}] of layer 11" in section.text
    assert any(r["W_down"] == f"[{sw['row']}, {sw['col']}]" for r in section.table)
