#!/usr/bin/env python
"""Streaming next-token collapse on every layer vs the plain forward over the same tokens.

Run from the repository root: ``.venv/bin/python benchmarks/collapse.py [--tokens 100000]``;
``--metrics-only`` skips the model and times :meth:`CollapseStats.metrics` and
:func:`bootstrap_intervals` (8 groups) on synthetic statistics of the same size (C = 512, D = 576).
Each batch of windows (stdlib corpus, 128 tokens each) is run twice, alternating which goes
first: a plain HF forward, and a forward that feeds :class:`analyses.geometry.layers.NextTokenCollapse`
on all 30 ``hook_resid_post`` points (classes: the 512 most frequent next tokens). The collapse
side also pays for computing every metric at the end. Memory: the bytes held by the statistics
and the peak RSS (VmHWM) after a quarter of the tokens and at the end; the state is
``O(C*D + D^2)`` per layer, so neither should grow with the token count.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def vm_hwm_mib() -> float:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def state_bytes(groups) -> int:
    arrays = [a for s in groups for a in (s.means_, s.unit_sum_, s.scatter_, s.counts_, s.m2_trace_, s.unit_sq_)]
    return sum(a.nbytes for a in arrays if a is not None)


def metrics_only(n_boot: int) -> None:
    """CPU seconds (this process) and wall seconds of metrics() and of one layer's bootstrap."""
    import numpy as np

    from analyses.geometry.collapse import CollapseStats, bootstrap_intervals

    rng = np.random.default_rng(0)
    c, d, n = 512, 576, 60_000
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    x = (rng.normal(size=(c, d))[y] * 0.5 + rng.normal(size=(n, d))) * np.r_[np.full(3, 30.0), np.ones(d - 3)] + 3
    w = rng.normal(size=(c, d))
    groups = [CollapseStats().fit(x[g::8], y[g::8]) for g in range(8)]
    stats = CollapseStats.merged(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for label, fn, reps in (("metrics()", lambda: stats.metrics(classifier=w), 10),
                                (f"bootstrap_intervals, {n_boot} replicates", lambda: bootstrap_intervals(
                                    groups, n_boot=n_boot, classifier=w), 1)):
            fn()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(reps):
                fn()
            print(f"| {label} | {(time.perf_counter() - wall) / reps:.3f} s wall | "
                  f"{(time.process_time() - cpu) / reps:.3f} s CPU |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top-classes", type=int, default=512)
    ap.add_argument("--metrics-only", action="store_true")
    ap.add_argument("--groups", type=int, default=1, help="accumulators per layer (windows dealt round robin)")
    ap.add_argument("--boot", type=int, default=50, help="bootstrap replicates per layer (with --groups > 1)")
    args = ap.parse_args()
    if args.metrics_only:
        metrics_only(args.boot)
        return

    import torch

    from analyses.geometry import NextTokenCollapse, next_token_classes
    from analyses.geometry.collapse import CollapseStats, bootstrap_intervals
    from probe.capture import capture
    from probe.data import load_corpus, token_windows
    from probe.models import load_model

    torch.set_num_threads(2)
    lm = load_model("smollm2")
    model = lm.model
    rows = token_windows(lm.tokenizer, load_corpus("stdlib"), seq_len=128, n_seqs=-(-args.tokens // 128))
    classes = next_token_classes(rows, args.top_classes, 2)
    points = [f"blocks.{l}.hook_resid_post" for l in range(30)]
    batches = [rows[s:s + args.batch] for s in range(0, len(rows), args.batch)]
    t_plain = t_collapse = 0.0
    quarter = None
    reduce = NextTokenCollapse(classes, groups=args.groups)
    cap = capture(model, points, reduce=reduce)  # re-entrant: state kept between blocks
    with torch.no_grad():
        for i, ids in enumerate(batches):
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                if side == 0:
                    model(ids)
                    t_plain += time.perf_counter() - start
                else:
                    with cap:
                        cap.run(ids)
                    t_collapse += time.perf_counter() - start
            if i == len(batches) // 4:
                quarter = (vm_hwm_mib(), sum(state_bytes(cap[p]) for p in points))
    start = time.perf_counter()
    W_U = model.get_output_embeddings().weight.detach().double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = [CollapseStats.merged(cap[p]).metrics(classifier=W_U) for p in points]
    t_metrics = time.perf_counter() - start
    start = time.perf_counter()
    if len(cap[points[0]]) > 1:
        for p in points:
            bootstrap_intervals(cap[p], n_boot=args.boot, classifier=W_U)
    t_boot = time.perf_counter() - start
    end = (vm_hwm_mib(), sum(state_bytes(cap[p]) for p in points))
    n = rows.numel()
    total = t_collapse + t_metrics
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    print(f"benchmarks/collapse.py, {date.today()}, {cpu}, {torch.get_num_threads()} threads; "
          f"{n} tokens ({len(rows)} x 128), {len(classes)} classes, 30 layers")
    print("| pass | seconds | tokens/s | ratio to plain forward |")
    print("|---|---|---|---|")
    print(f"| plain HF forward | {t_plain:.1f} | {n / t_plain:.0f} | 1.00x |")
    print(f"| forward + streaming collapse, 30 layers | {t_collapse:.1f} | {n / t_collapse:.0f} | {t_collapse / t_plain:.2f}x |")
    print(f"| ... + all metrics at the end | {total:.1f} | {n / total:.0f} | {total / t_plain:.2f}x |")
    print(f"bootstrap over the groups, {args.boot} replicates x 30 layers: {t_boot:.1f} s")
    print(f"state held: {quarter[1] / 2**20:.1f} MiB after {len(batches) // 4 + 1} batches, {end[1] / 2**20:.1f} MiB "
          f"at the end; peak RSS {quarter[0]:.0f} MiB after a quarter, {end[0]:.0f} MiB at the end")
    last = metrics[-1]
    print(f"layer 29: nc1 {last['nc1']:.3f}, nc3 {last['nc3']:.3f}, unc3 {last['unc3']:.4f}, "
          f"gnc2 {last['gnc2']:.4f}, cdnv {last['cdnv']:.3f}, cdnv_dist4 {last['cdnv_dist4']:.4f}")


if __name__ == "__main__":
    main()
