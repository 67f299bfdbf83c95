"""What ``probe report`` runs: each analysis becomes one report :class:`~analyses.report.Section`
(figures plus a sentence or two with the numbers that matter) and one entry of ``results.json``.

Sections: ``massive`` (scan, origin layer, massive weights, super weight), ``ablation`` (zero /
retain / random / super weight, re-evaluated by perplexity), ``lid`` and ``collapse`` (one
geometry pass, :func:`analyses.geometry.geometry`). Every edit is undone before the next
step (:func:`analyses.ablate.run_plans` restores the weights, also on Ctrl-C).
"""

from __future__ import annotations

import platform
import time
import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Any, Callable, Sequence

from analyses.report.html import Section
from probe.errors import ProbeError

SECTIONS = ("massive", "ablation", "lifecycle", "lid", "collapse", "census")  # report order
DEFAULT_SECTIONS = SECTIONS[:-1]  # the census (minutes per model) only when asked for
TOP = 10  # rows of a long list shown in the report; results.json has them all


@dataclass
class ReportConfig:
    """Sizes of each step (defaults keep the embedded model's report under 3 minutes on 2 cores)."""

    corpus: str = "stdlib"
    prepend: str = "auto"  # window protocol (probe.data.window_protocol)
    compare_prepend: bool = True  # also scan under the other protocols; a banner when the picture moves
    n_seqs: int = 16
    seq_len: int = 128
    k: int = 5
    abs_threshold: float = 100.0  # massive: |v| above this and above ratio x the layer median (Sun et al. 2024)
    ratio: float = 1000.0
    ablation_ks: tuple[int, ...] = (1, 2, 5)
    seeds: int = 2
    eval_seqs: int = 16
    eval_len: int = 256
    geometry_seqs: int = 16
    lid_points: int = 2000
    lid_k: int = 64
    top_classes: int = 256
    groups: int = 5  # groups of windows for the jackknife intervals of the collapse metrics
    n_boot: int = 1000  # resamples of the per-token LID values
    census_layers: tuple[int, ...] | None = None  # the census (analyses.census): None = every layer
    census_candidates: int = 2
    census_controls: int = 8
    census_eval_seqs: int = 8
    census_eval_len: int = 64


def parse_sections(chosen: Sequence[str]) -> list[str]:
    """The sections to run, in report order; ``ablation`` brings ``massive`` (it edits the weights
    the scan finds)."""
    chosen = list(chosen)
    if bad := [s for s in chosen if s not in SECTIONS]:
        raise ProbeError(f"unknown report section {', '.join(map(repr, bad))}: choose from {', '.join(SECTIONS)}")
    if not chosen:
        raise ProbeError(f"no report section chosen: choose from {', '.join(SECTIONS)}")
    if {"ablation", "lifecycle", "census"} & set(chosen) and "massive" not in chosen:
        chosen.insert(0, "massive")  # ablations, the lifecycle and the census edit the weights the scan finds
    return [s for s in SECTIONS if s in chosen]


@dataclass
class Run:
    """What the sections of one report share: the model, the sizes, the sections asked for, and
    what each leaves behind (``results`` for results.json; ``scan`` for the ablations)."""

    loaded: Any
    cfg: ReportConfig
    chosen: list[str]
    results: dict[str, Any] = field(default_factory=dict)
    scan: Any = None
    geometry: Any = None  # computed in the scan's pass when both are asked for


@dataclass(frozen=True)
class Registered:
    names: tuple[str, ...]  # the section names it serves (lid and collapse share one geometry pass)
    label: str  # progress-bar label
    steps: Callable[[Run], int]  # progress-bar total
    build: Callable[[Run, Callable[[int], None] | None], list[Section]]


_REGISTRY: list[Registered] = []


def section(*names: str, label: str, steps: Callable[[Run], int]) -> Callable[[Any], Any]:
    """Register ``build(run, progress) -> [Section, ...]`` for the report sections ``names``
    (the lm-eval registry habit: adding a section is one decorated function)."""
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise ValueError(f"add {sorted(unknown)} to SECTIONS (it fixes the report order)")

    def register(build: Any) -> Any:
        _REGISTRY.append(Registered(names, label, steps, build))
        return build

    return register


def run_sections(run: Run, progress_bar: Callable[[str, int], Any]) -> list[Section]:
    """Every registered section that ``run.chosen`` asks for, in report order, each inside
    ``progress_bar(label, total)`` (a context manager yielding ``advance(n)``)."""
    parts: list[Section] = []
    timings = run.results.setdefault("timings", {})
    for entry in sorted(_REGISTRY, key=lambda e: SECTIONS.index(e.names[0])):
        if set(entry.names) & set(run.chosen):
            start = time.perf_counter()
            with progress_bar(entry.label, entry.steps(run)) as advance:
                parts += entry.build(run, advance)
            timings[entry.label] = round(time.perf_counter() - start, 2)
    return parts


def header(loaded: Any, corpus: str, tokens: str, argv: list[str] | None = None,
           prepend: str | int | None = "auto") -> dict[str, str]:
    """Everything needed to reproduce a report: model, corpus, window protocol, tokens, versions,
    date, command."""
    from probe.data import window_protocol

    versions = ", ".join(f"{p} {version(p)}" for p in ("probe", "torch", "transformers", "plotly"))
    return {
        "model": loaded.name,
        "loaded from": loaded.where(),
        "corpus": corpus,
        "window protocol": window_protocol(loaded.tokenizer, prepend).describe(),
        "tokens": tokens,
        "versions": f"{versions}; Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["probe", *(sys.argv[1:] if argv is None else argv)]),
    }


@section("massive", label="scanning", steps=lambda run: run.cfg.n_seqs)
def massive_report(run: Run, progress: Callable[[int], None] | None = None) -> list[Section]:
    """The scan (kept as ``run.scan`` for the ablations), its origin layer in full and, with
    ``compare_prepend``, the same scan under the other window protocols."""
    from analyses.massive import figures
    from analyses.massive.locate import scan
    from analyses.massive.origin import origin_detail

    loaded, cfg = run.loaded, run.cfg
    model, tok = loaded.model, loaded.tokenizer
    opts = dict(name=loaded.name, corpus=cfg.corpus, n_seqs=cfg.n_seqs, seq_len=cfg.seq_len, k=cfg.k,
                abs_threshold=cfg.abs_threshold, ratio=cfg.ratio)
    if set(run.chosen) & {"lid", "collapse"} and cfg.geometry_seqs == cfg.n_seqs:  # one pass for the scan and the geometry
        result, run.geometry = geometry_pass(run, tok).run(tok, loaded.name, cfg.corpus, cfg.prepend, progress=progress,
                                                            n_boot=cfg.n_boot,
                                                            k=cfg.k, ratio=cfg.ratio)
    else:
        result = scan(model, tok, prepend=cfg.prepend, progress=progress, **opts)
    run.scan = result
    run.results["massive"] = result.to_dict()
    sections = [Section(
        "Massive activations per layer",
        f"Largest |value| of the residual stream (hook_resid_post) per layer against the median, over "
        f"{result.n_tokens} tokens. A value is massive when |v| > {result.abs_threshold:g} and > {result.ratio:g}x "
        f"the layer median (Sun et al. 2024). Origin layer: {result.origin_layer}; by ratio threshold: "
        + ", ".join(f"{k} -> {v}" for k, v in result.origin_by_ratio.items())
        + "; precursors: " + (", ".join(f"dim {p['dim']} at layer {p['layer']}" for p in result.precursors) or "none")
        + ".",
        [figures.residual_profile(result), figures.ratio_profile(result)],
    )]
    if result.origin_layer is None:
        sections[0].text += " No massive activation at these thresholds, so there are no massive weights to show."
        return sections
    detail = origin_detail(model, tok, result)
    sw = result.super_weight
    sections += [
        Section(
            "Where the massive activations sit",
            f"|activation| over token position x dim at the origin layer {result.origin_layer} for the sequence "
            f"carrying the largest one; massive dims {_shortened(result.massive_dims)}, carried by "
            f"{result.carried_by()}. The table gives, per massive dim, how many windows carry it on their first token"
            + (f" (the top {TOP} of {len(result.carriers)}; results.json lists all)" if len(result.carriers) > TOP else "")
            + ".",
            [figures.origin_heatmap(detail), figures.massive_tokens(result)],
            table=[{"massive dim": c["dim"], "first token carries it": f"{c['first_token']}/{c['n_windows']} windows"}
                   for c in result.carriers[:TOP]],
        ),
        Section(
            "Massive weights and the super weight",
            f"FFN intermediate state at layer {result.origin_layer} on the massive token: the top-{len(result.massive_neurons)} "
            f"neurons {result.massive_neurons} (values {[round(v, 1) for v in result.neuron_values]}) are the massive "
            f"weights, the matching rows of W_up and W_gate (House of Cards, arXiv 2410.01866). Super weight "
            f"(Yu et al. 2024): W_down[{sw['row']}, {sw['col']}] of layer {sw['layer']} = {sw['value']:.4f}.",
            [figures.neuron_profile(detail), figures.weight_row_norms(detail)],
        ),
    ]
    run.results["origin_detail"] = detail.to_dict()
    if cfg.compare_prepend:
        from analyses.massive.prepend import PrependComparison, others

        rest = [scan(model, tok, prepend=p, **opts) for p in others(tok, cfg.prepend)]
        comparison = PrependComparison.of(loaded.name, [result, *rest])
        rows = comparison.rows()
        sections.append(Section(
            "Window protocol: does the picture move?",
            "The same scan under each window protocol (which token stands first in every window; massive activations "
            "sit there). " + (" ".join(comparison.warnings) if comparison.warnings else
                              "Origin layer, top massive dim, carrier position and super weight agree under all of them."),
            [comparison.figure()],
            table=[{"in front of each window": r["label"], "origin": r["origin_layer"], "dims": r["massive_dims"][:4],
                    "first token carries top dim": f"{r['first_token_windows']}/{r['n_windows']}"
                    if r["first_token_windows"] is not None else "-",
                    "top neuron": r["top_neuron"], "super weight": r["super_weight"]} for r in rows]))
        run.results["prepend_comparison"] = {"rows": rows, "warnings": comparison.warnings}
    return sections


def geometry_pass(run: Run, tokenizer: Any) -> Any:
    """The report's :class:`analyses.geometry.layers.GeometryPass` on its geometry windows."""
    from analyses.geometry.layers import GeometryPass
    from probe.data import load_corpus, token_windows

    cfg = run.cfg
    windows = token_windows(tokenizer, load_corpus(cfg.corpus), seq_len=cfg.seq_len, n_seqs=cfg.geometry_seqs,
                            prepend=cfg.prepend)
    return GeometryPass(run.loaded.model, windows, None, cfg.lid_points, cfg.lid_k, cfg.top_classes, groups=cfg.groups,
                        abs_threshold=cfg.abs_threshold)


@section("ablation", label="ablating", steps=lambda run: len(run.cfg.ablation_ks) + 2 + run.cfg.seeds + 1)
def ablation_report(run: Run, progress: Callable[[int], None] | None = None) -> list[Section]:
    """Zero, retain, random and super-weight plans on ``run.scan``, re-evaluated by perplexity."""
    from analyses.ablate.plans import make_plans
    from analyses.ablate.run import run_plans
    from analyses.evaluate.likelihood import eval_windows

    cfg, result = run.cfg, run.scan
    if result.origin_layer is None:
        run.results["ablation"] = None
        return [Section("Ablations", "Skipped: the scan found no massive activation, so no massive weights.")]
    model, tok = run.loaded.model, run.loaded.tokenizer
    plans = make_plans(model, None, result, "zero", list(cfg.ablation_ks))
    plans += make_plans(model, None, result, "retain", [cfg.k])
    plans += make_plans(model, None, result, "random", [cfg.k], seeds=cfg.seeds)
    plans += make_plans(model, None, result, "super", [1])
    ev = eval_windows(tok, cfg.corpus, seq_len=cfg.eval_len, n_seqs=cfg.eval_seqs, prepend=cfg.prepend)
    run.results["ablation"] = table = run_plans(model, ev, plans, progress=progress)
    base = table["baseline"]["ppl"]
    by = {(r["mode"], r["k"]): r["ppl"] for r in table["results"] if r["mode"] != "random"}
    rand = [r["ppl"] for r in table["results"] if r["mode"] == "random"]
    k = cfg.k
    text = (f"Perplexity on {table['baseline']['n_tokens']} tokens of {cfg.corpus} with the edit applied, then "
            f"restored. Baseline {base:.2f}; zeroing the top-{k} massive weights (W_up and W_gate rows at layer "
            f"{result.origin_layer}) gives {by.get(('zero', k), float('nan')):.2f}; keeping only them (zeroing every other "
            f"row) gives {by.get(('retain', k), float('nan')):.2f}; {len(rand)} random sets of {k} rows give "
            f"{min(rand):.2f}-{max(rand):.2f}; the super weight alone gives {by.get(('super', 1), float('nan')):.2f}.")
    return [Section("Ablations: zero, retain, random", text, [table.figure()], table=[
        {"mode": r["mode"], "k": r["k"], "seed": r["seed"], "ppl": round(r["ppl"], 3), "x baseline": round(r["ratio"], 3)}
        for r in table["results"]])]


def lifecycle_plans(run: Run) -> list[Any]:
    """The lifecycle's edits: the super weight, the top-``k`` massive weights zeroed and kept alone,
    and one random control of ``k`` rows (the same plans as the ablation section's)."""
    from analyses.ablate.plans import make_plans

    model, result, k = run.loaded.model, run.scan, run.cfg.k
    return (make_plans(model, None, result, "super", [1]) + make_plans(model, None, result, "zero", [k])
            + make_plans(model, None, result, "retain", [k]) + make_plans(model, None, result, "random", [k], seeds=1))


@section("lifecycle", label="lifecycle", steps=lambda run: 5)
def lifecycle_report(run: Run, progress: Callable[[int], None] | None = None) -> list[Section]:
    """Super weight -> massive activation -> attention sink -> loss (:mod:`analyses.attention.lifecycle`)."""
    from analyses.attention.lifecycle import lifecycle
    from analyses.evaluate.likelihood import eval_windows

    cfg, result = run.cfg, run.scan
    if result.origin_layer is None:
        run.results["lifecycle"] = None
        return [Section("Outlier lifecycle", "Skipped: the scan found no massive activation, so no weights to edit.")]
    model, tok = run.loaded.model, run.loaded.tokenizer
    ev = eval_windows(tok, cfg.corpus, seq_len=cfg.eval_len, n_seqs=cfg.eval_seqs, prepend=cfg.prepend)
    lc = lifecycle(model, tok, result, lifecycle_plans(run), ev, name=run.loaded.name,
                   table=run.results.get("ablation"), progress=progress)
    run.results["lifecycle"] = lc.to_dict()
    base, sw = lc.sinks, lc.stages[1]
    o, last = result.origin_layer, len(base.layers) - 1
    text = (f"Attention that the queries after the first token give to it, per layer and head, on the scan's "
            f"{base.n_seqs} windows: Sink_{base.eps:g} (Gu et al. 2024, the share of heads whose mean "
            f"attention on the first token exceeds {base.eps:g}) is {base.sink_rate:.2f} over all layers; it first "
            f"reaches 0.5 at layer {base.onset_layer} and stays there from layer {base.sustained_onset_layer} on; the "
            f"massive activation appears at layer {o}. Then each edit, applied and restored: zeroing the super weight "
            f"takes the largest |h| at layer {o} from {lc.stages[0].massive_max[o]:.0f} to {sw.massive_max[o]:.0f}, the "
            f"last layer's attention on the first token from {lc.stages[0].mean_attn_first[last]:.3f} to "
            f"{sw.mean_attn_first[last]:.3f}, and the perplexity {sw.ppl_ratio:.2f}x; the layers before {o} are "
            f"untouched (massive activations act as attention biases, Sun et al. 2024; weight outliers cause "
            f"activation outliers cause attention outliers, An et al. 2025).")
    return [Section("Outlier lifecycle", text, [base.figure(), lc.figure()], table=lc.rows())]


@section("lid", "collapse", label="geometry", steps=lambda run: run.cfg.geometry_seqs)
def geometry_report(run: Run, progress: Callable[[int], None] | None = None) -> list[Section]:
    """The geometry (from the scan's pass when there was one, else its own pass with its own scan);
    a section for each of ``lid`` and ``collapse`` chosen."""
    from analyses.geometry.figures import collapse_figure, lid_figure, scale_figure

    loaded, cfg, chosen = run.loaded, run.cfg, run.chosen
    g = run.geometry
    if g is None:
        _, g = geometry_pass(run, loaded.tokenizer).run(loaded.tokenizer, loaded.name, cfg.corpus, cfg.prepend,
                                                        progress=progress, n_boot=cfg.n_boot,
                                                        k=cfg.k, ratio=cfg.ratio)
    x = [l.layer for l in g.layers]
    removed = g.carriers.get("n_tokens", 0)
    without = (f" Without the {removed} tokens that carry massive activations (positions "
               f"{', '.join(g.carriers['positions'])}), " if removed else " No token carries a massive activation, so "
               "there is nothing to leave out.")
    sections = []
    if "lid" in chosen:
        lid, lid_w = g.curve("lid_mean"), g.curve("lid_mean", "without_carriers")
        top = max(range(len(lid)), key=lid.__getitem__)
        ci = g.layers[top].lid_ci
        level = int(round(100 * g.bootstrap.get("level", 0.95)))
        known = [i for i in range(len(lid)) if lid_w[i] is not None]
        shift = max(known, key=lambda i: abs(lid[i] - lid_w[i]), default=None)
        sections.append(Section(
            "Local intrinsic dimension",
            f"Local TwoNN on each token's {g.k} nearest neighbours (Less is More, arXiv 2506.01034), "
            f"{g.layers[0].n_points} distinct sampled tokens per layer, with {level}% bootstrap intervals of the mean "
            f"(per-token values resampled). Mean LID {lid[0]:.2f} at layer {x[0]}, highest {lid[top]:.2f} "
            + (f"[{ci[0]:.2f}, {ci[1]:.2f}] " if ci else "") + f"at layer {x[top]}, {lid[-1]:.2f} at layer {x[-1]}."
            + (without + (f"the mean moves most at layer {x[shift]}: {lid[shift]:.2f} -> {lid_w[shift]:.2f}."
                           if shift is not None else "too few tokens are left for the LID.") if removed else without)
            + " Gride across neighbourhood scales (Denti et al. 2022) shows whether the estimate depends on the scale.",
            [lid_figure(g), scale_figure(g)]))
    if "collapse" in chosen:
        nc1, nc1_w = g.curve("nc1"), g.curve("nc1", "without_carriers")
        low = nc1.index(min(nc1))
        sections.append(Section(
            "Neural collapse with next tokens as classes",
            f"Class = next token (Wu & Papyan 2024), the {g.n_classes} most frequent, on {g.n_tokens} tokens. NC1 = "
            f"Tr(Sigma_W Sigma_B^+)/C falls from {nc1[0]:.2f} (layer {x[0]}) to {nc1[low]:.2f} (layer {x[low]}); "
            f"GNC2 is the hyperspherical uniformity of the class means and UNC3 the uniform duality of means and "
            f"unembedding rows (Linguistic Collapse); NC3 compares class means with the unembedding rows, NC4 the "
            f"nearest class mean with the model's prediction ({g.layers[-1].collapse.get('nc4', float('nan')):.3f} at "
            f"the last layer)." + (without + (f"NC1 at layer {x[low]} is {nc1_w[low]:.2f}." if nc1_w[low] is not None
                                                 else "too few tokens are left for the collapse metrics.")
                                      if removed else without),
            [collapse_figure(g)], table=[{"layer": l.layer, "LID": round(l.lid_mean, 2),
                                          **{k: round(l.collapse[k], 4) for k in
                                             ("nc1", "nc2_equinorm", "nc2_equiangular", "gnc2", "cdnv", "fisher_ratio",
                                              "cone", "nc3", "unc3", "nc4") if k in l.collapse},
                                          "nc1 w/o carriers": _rounded(l.value("nc1", "without_carriers"), 4)}
                                         for l in g.layers]))
    run.results["geometry"] = g.to_dict()
    return sections


def _census_edits(run: Run) -> int:
    from probe.arch import n_layers

    cfg = run.cfg
    layers = len(cfg.census_layers) if cfg.census_layers is not None else n_layers(run.loaded.model)
    return layers * (cfg.census_candidates + 2) * (cfg.census_controls + 2)  # the scan's candidates may add 2


@section("census", label="census", steps=_census_edits)
def census_report(run: Run, progress: Callable[[int], None] | None = None) -> list[Section]:
    """The causal super-weight census (:func:`analyses.census.census`) on the scan's windows: each
    candidate zeroed alone against matched controls."""
    from analyses.census.census import census

    cfg, loaded = run.cfg, run.loaded
    c = census(loaded.model, loaded.tokenizer, loaded.name, cfg.corpus,
               layers=list(cfg.census_layers) if cfg.census_layers is not None else None,
               candidates=cfg.census_candidates, controls=cfg.census_controls, eval_seqs=cfg.census_eval_seqs,
               eval_len=cfg.census_eval_len, scan=run.scan, progress=progress)
    run.results["census"] = c.to_dict()
    ev, causal = c.evaluation, c.causal
    sw = next((r for r in c.rows if r["super_weight"]), None)
    text = (f"Each candidate (per layer the top {cfg.census_candidates} by the spike method of Yu et al. 2024) zeroed "
            f"alone, its change in loss on {ev['n_tokens']} tokens with a bootstrap interval over windows, against "
            f"{cfg.census_controls} matched controls per candidate (single weights of the same layer and |weight| "
            f"band, zeroed the same way). A candidate is causal when its effect exceeds the controls' 99th percentile "
            f"and its interval excludes zero: {len(causal)} of {len(c.rows)} here"
            + (f"; the scan's super weight W_down[{sw['row']}, {sw['col']}] of layer {sw['layer']} adds "
               f"{sw['delta_loss']:.3g} nats per token [{sw['ci_low']:.3g}, {sw['ci_high']:.3g}] (controls' p99 "
               f"{sw['controls_p99']:.2g})" if sw is not None else "; the scan's super weight is not among the "
               "candidates of the layers censused")
            + ". With few controls the p99 is nearly their maximum: raise them where compute allows.")
    rows = sorted(c.rows, key=lambda r: -abs(r["delta_loss"]))[:TOP]
    return [Section("Which single weights are causal: the census", text, [c.figure()], table=[
        {"layer": r["layer"], "W_down": f"[{r['row']}, {r['col']}]", "value": round(r["value"], 4),
         "delta loss": f"{r['delta_loss']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]",
         "controls p99": f"{r['controls_p99']:.2g}", "causal": "yes" if r["causal"] else "no"} for r in rows])]


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _shortened(items: Sequence[Any], top: int = TOP) -> str:
    """``[1, 2, 3]``, or the first ``top`` and how many more: ``[1, ..., 10] and 70 more``."""
    items = list(items)
    return str(items) if len(items) <= top else f"{items[:top]} and {len(items) - top} more"
