#!/usr/bin/env python
"""Cost of running an ablation as interventions inside nnsight traces (what runs on NDIF) against
the weight edit (the anchor), on the same plan and rows.

Run from the repository root: ``.venv/bin/python benchmarks/ablate_traced.py --rounds 5``. One
measurement is :func:`analyses.ablate.measure` of the plan "zero the top-5 massive weights at
the origin layer" (perplexity on 8 x 256 tokens, one batch): the weight edit with torch
(anchor), the same plan as in-trace interventions through ``nnsight.NNsight``, and through
nnsight's ``remote="local"`` simulation of an NDIF request (serialised, deserialised, run
here; no network). Variants run in interleaved rounds; the table gives medians and the ratio
to the anchor, and checks that the three perplexities agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import loadavg, log  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    from analyses.ablate import Plan, measure
    from analyses.evaluate import eval_windows
    from probe.backends import as_nnsight
    from probe.models import load_model

    lm = load_model("smollm2")
    rows = eval_windows(lm.tokenizer, seq_len=256, n_seqs=8)
    plan = Plan("zero", 11, 5, (1229, 1487, 1010, 926, 1401))
    local, simulated = as_nnsight(lm.model), as_nnsight(lm.model, "local", lm.tokenizer)
    variants = {
        "weight edit, torch (anchor)": lambda: measure(lm.model, rows, plan),
        "interventions in an nnsight trace": lambda: measure(local, rows, plan, backend="nnsight"),
        "interventions, simulated NDIF request (remote='local')":
            lambda: measure(simulated, rows, plan, backend="nnsight", remote="local"),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    ppl: dict[str, float] = {}
    for name, fn in variants.items():  # warm-up
        ppl[name] = fn()["ppl"]
    log(f"load average before the rounds: {loadavg()}")
    for r in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        log(f"round {r + 1}/{args.rounds} done")
    anchor = statistics.median(next(iter(times.values())))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average after: {loadavg()}")
    print("| variant | median s | ratio to weight edit | ppl |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / anchor:.3f}x | {ppl[name]:.4f} |")
    if len(set(ppl.values())) != 1:
        raise SystemExit(f"perplexities differ: {ppl}")


if __name__ == "__main__":
    main()
