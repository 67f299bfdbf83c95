#!/usr/bin/env python
"""Peak RSS of an ablation sweep against the loaded model: edits never copy the model.

Run from the repository root: ``.venv/bin/python benchmarks/ablate_memory.py``. It loads the
embedded model, runs one perplexity batch (so the memory-mapped weights are resident and the
evaluation's working set is there), reads that peak (VmHWM) as the loaded model's, resets the high-water mark (``/proc/self/clear_refs``), runs the
scan and a sweep (zero top-1/2/3/5, retain top-5, random 5 x 3 seeds, super weight) with
perplexity on 16 x 256 tokens, then reads VmHWM. The ratio compares the peak with the RSS of the
loaded model (weights plus the Python/torch runtime), as issue 4 asks (target <= 1.2x).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main() -> None:
    from analyses.ablate import make_plans, run_plans
    from analyses.evaluate import eval_windows
    from analyses.massive import scan
    from probe.data import load_corpus, token_windows
    from probe.models import load_model

    from analyses.evaluate import perplexity

    lm = load_model("smollm2")
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    ev = eval_windows(lm.tokenizer)
    perplexity(lm.model, ev[:8])  # the loaded model in use: weights paged in, one evaluation batch run
    loaded = status_kib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    result = scan(lm.model, lm.tokenizer)
    rows = token_windows(lm.tokenizer, load_corpus(), seq_len=128, n_seqs=16)
    plans = make_plans(lm.model, rows, result, "zero", [1, 2, 3, 5])
    plans += make_plans(lm.model, rows, result, "retain", [5])
    plans += make_plans(lm.model, rows, result, "random", [5], seeds=3)
    plans += make_plans(lm.model, rows, result, "super", [1])
    table = run_plans(lm.model, ev, plans)
    peak = status_kib("VmHWM")
    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    print(f"plans: {len(plans)} + baseline, {time.perf_counter() - start:.0f} s; baseline ppl {table['baseline']['ppl']:.2f}")
    print(f"model weights (float32): {weights / 2**20:.1f} MiB")
    print(f"peak RSS of the loaded model evaluating one batch: {mib(loaded)}; peak RSS during scan + sweep: {mib(peak)}; ratio {peak / loaded:.3f}x")
    print(f"peak minus loaded: {mib(peak - loaded)} (scan reducers, allocator slack; a model copy would add "
          f"{weights / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
