#!/usr/bin/env python
"""Peak RSS of :func:`analyses.attention.sinks` on the embedded SmolLM2 with 16 against 64 windows of
128 tokens (batches of 8), each in a fresh subprocess: the reducers keep ``O(layers x heads)``
numbers, so the peak should not grow with the number of windows (the batch's transient
attention patterns, 8 x 9 x 128 x 128 floats per layer, are the same for both).

Run from the repository root: ``.venv/bin/python benchmarks/sinks_memory.py``. Each child reports
its RSS with the model loaded, its peak (``getrusage`` maxrss) and the wall time; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import loadavg, log, rss_kib  # noqa: E402


def child(n_seqs: int) -> None:
    import torch

    from analyses.attention import sinks
    from probe.models import load_model

    lm = load_model("smollm2")
    with torch.no_grad():
        for p in lm.model.parameters():  # page in the weights: "loaded" means resident
            p.sum()
    loaded = rss_kib()
    start = time.perf_counter()
    result = sinks(lm.model, lm.tokenizer, n_seqs=n_seqs, seq_len=128, batch_size=8)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n_seqs": result.n_seqs, "loaded_kib": loaded, "peak_kib": peak, "seconds": seconds,
                      "onset": result.onset_layer}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    rows = []
    for n in args.windows:
        log(f"sinks on {n} windows ...")
        done = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True,
                              cwd=ROOT, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_kib"]
    print(f"sinks memory, SmolLM2-135M fp32, seq_len 128, batch 8; {datetime.date.today()}, load {loadavg()}\n")
    print("| windows | RSS loaded (MiB) | peak RSS (MiB) | peak - loaded (MiB) | peak / first | time (s) | onset |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n_seqs']} | {r['loaded_kib'] / 1024:.0f} | {r['peak_kib'] / 1024:.0f} | "
              f"{(r['peak_kib'] - r['loaded_kib']) / 1024:.0f} | {r['peak_kib'] / base:.3f} | {r['seconds']:.1f} | "
              f"{r['onset']} |")


if __name__ == "__main__":
    main()
