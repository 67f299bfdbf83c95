#!/usr/bin/env python
"""Streaming next-token collapse on every layer vs the plain forward over the same tokens.

Run from the repository root: ``.venv/bin/python benchmarks/collapse.py [--tokens 100000]``.
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


def state_bytes(stats) -> int:
    arrays = [stats.means_, stats.unit_sum_, stats.scatter_, stats.counts_, stats.m2_trace_, stats.unit_sq_]
    return sum(a.nbytes for a in arrays if a is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top-classes", type=int, default=512)
    args = ap.parse_args()

    import torch

    from analyses.geometry import NextTokenCollapse, next_token_classes
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
    cap = capture(model, points, reduce=NextTokenCollapse(classes))  # re-entrant: state kept between blocks
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
        metrics = [cap[p].metrics(classifier=W_U) for p in points]
    t_metrics = time.perf_counter() - start
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
    print(f"state held: {quarter[1] / 2**20:.1f} MiB after {len(batches) // 4 + 1} batches, {end[1] / 2**20:.1f} MiB "
          f"at the end; peak RSS {quarter[0]:.0f} MiB after a quarter, {end[0]:.0f} MiB at the end")
    print(f"layer 29: nc1 {metrics[-1]['nc1']:.3f}, nc3 {metrics[-1]['nc3']:.3f}, cdnv {metrics[-1]['cdnv']:.3f}")


if __name__ == "__main__":
    main()
