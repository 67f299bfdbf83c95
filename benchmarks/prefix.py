#!/usr/bin/env python
"""Shared-prefix evaluation of ablation plans against full forwards (issue 17, part 5b).

Run from the repository root: ``.venv/bin/python benchmarks/prefix.py``. The report's plan set on
the embedded SmolLM2 (``analyses.report.sections.ablation_report``: zero top-1/2/5, retain top-5,
random 5 x 2 seeds, the super weight; all at the scan's origin layer, 11 of 30), evaluated by
``run_plans`` with ``share_prefix=True`` (blocks 0..10 run once, in the baseline) and ``False``
(every forward from the embeddings), in interleaved rounds; medians, and the tables asserted
identical (``==`` on every float).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import loadavg, log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-seqs", type=int, default=8)
    parser.add_argument("--eval-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from analyses.ablate import make_plans, run_plans
    from analyses.evaluate import eval_windows
    from analyses.massive.locate import scan
    from probe.arch import n_layers
    from probe.models import load_model

    lm = load_model("smollm2")
    model, tok = lm.model, lm.tokenizer
    log("scan ...")
    result = scan(model, tok)
    plans = make_plans(model, None, result, "zero", [1, 2, 5])
    plans += make_plans(model, None, result, "retain", [5])
    plans += make_plans(model, None, result, "random", [5], seeds=2)
    plans += make_plans(model, None, result, "super", [1])
    ev = eval_windows(tok, seq_len=args.eval_len, n_seqs=args.eval_seqs)
    times: dict[bool, list[float]] = {False: [], True: []}
    tables = {}
    for r in range(args.rounds):
        for share in (False, True):
            log(f"round {r + 1}, share_prefix={share} ...")
            start = time.perf_counter()
            tables[share] = run_plans(model, ev, plans, share_prefix=share)
            times[share].append(time.perf_counter() - start)
        assert tables[True] == tables[False]
    full, shared = statistics.median(times[False]), statistics.median(times[True])
    layer = result.origin_layer
    print(f"shared-prefix ablation sweep, {datetime.date.today()}, nproc {os.cpu_count()}, loadavg {loadavg()}\n")
    print(f"SmolLM2-135M (float32, CPU), {len(plans)} plans + baseline at layer {layer} of {n_layers(model)}, "
          f"perplexity on {ev.shape[0]} x {ev.shape[1]} tokens, {args.rounds} interleaved rounds, medians\n")
    print("| run_plans | median s | rounds (s) | speed-up |")
    print("|---|---|---|---|")
    print(f"| full forwards (share_prefix=False) | {full:.1f} | {', '.join(f'{t:.1f}' for t in times[False])} | 1.00x |")
    print(f"| shared prefix (share_prefix=True) | {shared:.1f} | {', '.join(f'{t:.1f}' for t in times[True])} | "
          f"{full / shared:.2f}x |")
    print("\nTables identical, float for float (asserted every round).")


if __name__ == "__main__":
    main()
