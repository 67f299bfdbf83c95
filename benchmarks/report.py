#!/usr/bin/env python
"""``probe report``'s cost against the forward work it cannot avoid, and what shared prefixes save.

Run from the repository root (the embedded model, the report's default sizes)::

    .venv/bin/python benchmarks/report.py                # 2 rounds
    .venv/bin/python benchmarks/report.py --rounds 3 --no-compare-prepend

In interleaved rounds, in one process, each round:

1. **the report**: every section (``analyses.report.sections.run_sections``) and the HTML file
   (``write_report``) into a temporary folder, as ``probe report --model smollm2`` does after loading;
   its time per step comes from ``results.json`` (``timings``);
2. **the floor**, the work the report cannot do without, each part timed alone on the same
   inputs, no hooks: one plain forward over the scan windows (the scan and the geometry share it),
   one per other window protocol of the comparison section, faiss' exact kNN (``IndexFlatL2``,
   every core) of each layer's LID sample (the search every LID estimate needs), the baseline
   forward with its loss over the evaluation windows (``model(x, labels=x)``: a perplexity needs
   the log-softmax of the logits), per ablation plan the blocks from its first edited layer on plus
   the head and the loss (a :class:`probe.prefix.SharedPrefix` replay of the unedited model: the
   part of a plan's evaluation that depends on its edit), and for the lifecycle one forward over
   the scan windows with eager attention (the sink measurement needs the attention probabilities)
   plus, per lifecycle plan, the blocks from its first edited layer on (shared prefixes there too);
   also timed, outside the floor, the baseline forward without its loss (what the loss adds);
3. **the ablation table twice**, with and without shared prefixes (``run_plans(share_prefix=...)``),
   asserted equal float for float.

Printed: medians of each, the report as a ratio to the floor, and the speed-up of shared prefixes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import loadavg, log  # noqa: E402

import torch  # noqa: E402

from analyses.ablate.modes import get_mode  # noqa: E402
from analyses.ablate.plans import make_plans  # noqa: E402
from analyses.ablate.run import run_plans  # noqa: E402
from analyses.evaluate.likelihood import eval_windows  # noqa: E402
from analyses.massive.prepend import others  # noqa: E402
from analyses.report import sections as S  # noqa: E402
from analyses.report.html import write_report  # noqa: E402
from probe.data import load_corpus, token_windows  # noqa: E402
from probe.models import load_model  # noqa: E402
from probe.prefix import SharedPrefix  # noqa: E402


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def report(loaded: Any, cfg: S.ReportConfig) -> tuple[dict[str, float], Any]:
    """The report (sections and HTML) with its per-step times; returns the run for its scan and plans."""
    run = S.Run(loaded, cfg, list(S.DEFAULT_SECTIONS))
    parts = S.run_sections(run, lambda label, total: _no_bar())
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_report(Path(folder) / "report", {"model": loaded.name}, parts, run.results)
        run.results["timings"]["html"] = time.perf_counter() - start
    return dict(run.results["timings"]), run


class _no_bar:
    def __enter__(self) -> Callable[[int], None]:
        return lambda n: None

    def __exit__(self, *exc: object) -> None:
        return None


@torch.no_grad()
def forwards(model: torch.nn.Module, windows: torch.Tensor, batch: int = 8, loss: bool = False) -> None:
    """Plain forwards over ``windows``; ``loss``: with the language-modelling loss, as plain
    transformers computes a perplexity (``model(x, labels=x).loss``: logits to float32, their
    log-softmax, the mean negative log-likelihood)."""
    for s in range(0, windows.shape[0], batch):
        w = windows[s:s + batch]
        model(w, labels=w if loss else None)


@torch.no_grad()
def suffixes(model: torch.nn.Module, windows: torch.Tensor, layers: list[int], batch: int = 8,
             loss: bool = False) -> float:
    """Seconds of the forwards from each of ``layers`` on (one per plan), prefixes replayed."""
    shared = SharedPrefix(model, sorted(set(l for l in layers if l > 0)))
    with shared.recording():
        forwards(model, windows, batch)
    total = 0.0
    for layer in layers:
        if layer == 0:
            total += timed(lambda: forwards(model, windows, batch, loss))[0]
            continue
        with shared.replaying(layer):
            total += timed(lambda: forwards(model, windows, batch, loss))[0]
    return total


def lid_samples(run: Any) -> list[Any]:
    """The LID sample of every layer, as the report's geometry pass draws it (float32, (n, D) each)."""
    gp = S.geometry_pass(run, run.loaded.tokenizer)
    with gp.feeding():
        forwards(run.loaded.model, gp.windows)
    return [gp.cap.results[p]["sample"].vectors.float().numpy() for p in gp.points]


def knn_floor(samples: list[Any], k: int) -> float:
    """Seconds of faiss' exact kNN (``IndexFlatL2``, every core) of each sample against itself:
    the search that the LID of each layer cannot do without."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    for X in samples:
        index = faiss.IndexFlatL2(X.shape[1])
        index.add(X)
        index.search(X, k + 1)
    return time.perf_counter() - start


def eager_suffixes(model: torch.nn.Module, windows: torch.Tensor, layers: list[int]) -> float:
    """:func:`suffixes` with eager attention (what the sink measurement runs: attention
    probabilities need it)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        return suffixes(model, windows, layers)
    finally:
        model.set_attn_implementation(previous)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-compare-prepend", action="store_true", help="leave out the window-protocol comparison")
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load_model("smollm2")
    model, tok = loaded.model, loaded.tokenizer
    cfg = S.ReportConfig(compare_prepend=not args.no_compare_prepend)
    scan_windows = token_windows(tok, load_corpus(cfg.corpus), seq_len=cfg.seq_len, n_seqs=cfg.n_seqs, prepend=cfg.prepend)
    ev = eval_windows(tok, cfg.corpus, seq_len=cfg.eval_len, n_seqs=cfg.eval_seqs, prepend=cfg.prepend)
    protocols = others(tok, cfg.prepend) if cfg.compare_prepend else []
    other_windows = [token_windows(tok, load_corpus(cfg.corpus), seq_len=cfg.seq_len, n_seqs=cfg.n_seqs, prepend=p)
                     for p in protocols]
    log("warm-up report ...")
    _, run = report(loaded, cfg)
    scan = run.scan
    plans = make_plans(model, None, scan, "zero", list(cfg.ablation_ks))
    plans += make_plans(model, None, scan, "retain", [cfg.k])
    plans += make_plans(model, None, scan, "random", [cfg.k], seeds=cfg.seeds)
    plans += make_plans(model, None, scan, "super", [1])
    first = [get_mode(p.mode).first_layer(p) for p in plans]
    samples = lid_samples(run)
    stages = [0] + [get_mode(p.mode).first_layer(p) for p in S.lifecycle_plans(run)]  # unedited, then each plan
    rows: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        rows.setdefault(key, []).append(seconds)

    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds} (load {loadavg()})")
        seconds, (steps, _) = timed(lambda: report(loaded, cfg))
        add("report, default sections + HTML", seconds)
        for step, t in steps.items():
            add(f"  step: {step}", t)
        scan_t = timed(lambda: forwards(model, scan_windows))[0]
        add("floor: forward over the scan windows (scan + geometry)", scan_t)
        add("floor: forwards over the other protocols' windows", sum(timed(lambda w=w: forwards(model, w))[0]
                                                                    for w in other_windows))
        add("floor: exact kNN of each layer's LID sample (faiss)", knn_floor(samples, cfg.lid_k))
        add("floor: baseline forward + loss over the evaluation windows", timed(lambda: forwards(model, ev, loss=True))[0])
        add("(not in the floor) baseline forward without the loss", timed(lambda: forwards(model, ev))[0])
        add(f"floor: {len(plans)} plans, blocks from the first edited layer on + loss", suffixes(model, ev, first, loss=True))
        add(f"floor: lifecycle, {len(stages)} eager forwards over the scan windows (plans: from the first edited layer on)",
            eager_suffixes(model, scan_windows, stages))
        t_full, full = timed(lambda: run_plans(model, ev, plans, share_prefix=False))
        t_shared, shared = timed(lambda: run_plans(model, ev, plans, share_prefix=True))
        assert full == shared, "shared prefixes changed the ablation table"
        add("ablation table, full forwards", t_full)
        add("ablation table, shared prefixes", t_shared)

    med = {k: statistics.median(v) for k, v in rows.items()}
    floor = sum(v for k, v in med.items() if k.startswith("floor:"))
    print(f"# probe report vs its unavoidable forward work ({datetime.date.today()}, {os.cpu_count()} cores, "
          f"load {loadavg()}, torch {torch.__version__}, {args.rounds} rounds, medians)\n")
    print(f"SmolLM2-135M, {cfg.n_seqs} x {cfg.seq_len} scan/geometry windows, {len(protocols)} other protocols, "
          f"{cfg.eval_seqs} x {cfg.eval_len} evaluation windows, {len(plans)} plans (first edited layers {sorted(set(first))})\n")
    print("| what | seconds |\n|---|---:|")
    for key, value in med.items():
        print(f"| {key} | {value:.2f} |")
    print(f"| **floor (sum of the floor rows)** | **{floor:.2f}** |")
    print(f"\nreport / floor = **{med['report, default sections + HTML'] / floor:.2f}x**; shared prefixes: ablation table "
          f"{med['ablation table, full forwards'] / med['ablation table, shared prefixes']:.2f}x faster, identical table "
          f"(asserted `==` in every round)")
    loss = (1 + len(plans)) * (med["floor: baseline forward + loss over the evaluation windows"]
                               - med["(not in the floor) baseline forward without the loss"])
    forward_only = floor - med["floor: exact kNN of each layer's LID sample (faiss)"] - loss
    print(f"\nwithout the kNN and the {1 + len(plans)} losses ({loss:.2f} s) in the floor, forwards only: report / "
          f"{forward_only:.2f} = {med['report, default sections + HTML'] / forward_only:.2f}x")


if __name__ == "__main__":
    main()
