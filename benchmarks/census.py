#!/usr/bin/env python
"""The super-weight census of the embedded SmolLM2 timed against one perplexity evaluation (issue 19).

Run from the repository root: ``.venv/bin/python benchmarks/census.py``. The census
(:func:`analyses.census.census`, every layer by default) runs once; one perplexity evaluation of
the same evaluation windows (:func:`analyses.evaluate.likelihood.perplexity`) runs ``--rounds``
times before and after it, and the table gives the census time as a multiple of their median, next
to the naive cost (one full perplexity evaluation per single-weight edit). Then the cost is
extrapolated to Llama-3-8B in perplexity-evaluation units (assumptions printed with it).
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

H100_FLOPS = 300e12  # assumed sustained bf16 FLOP/s of one H100 on these matmuls
LLAMA3_8B = {"layers": 32, "d_model": 4096, "d_ff": 14336, "kv": 1024, "vocab": 128256}


def block_params(layers: int, d_model: int, d_ff: int, kv: int, vocab: int) -> tuple[float, float]:
    """Parameters per block (attention q, o: ``d x d``; k, v: ``d x kv``; gated MLP: ``3 d d_ff``) and of the LM head."""
    return 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * d_ff, d_model * vocab


def edited_fraction(layer: int, layers: int, block: float, head: float) -> float:
    """FLOPs of a forward from block ``layer`` on (blocks ``layer..`` and the head) over a full forward's."""
    return ((layers - layer) * block + head) / (layers * block + head)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="all", help="all, or a comma list")
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--controls", type=int, default=2)
    parser.add_argument("--n-seqs", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--eval-seqs", type=int, default=4)
    parser.add_argument("--eval-len", type=int, default=16)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from analyses.census import census
    from analyses.evaluate.likelihood import eval_windows, perplexity
    from probe.models import load_model

    lm = load_model("smollm2")
    windows = eval_windows(lm.tokenizer, seq_len=args.eval_len, n_seqs=args.eval_seqs)
    layers = None if args.layers == "all" else [int(x) for x in args.layers.split(",")]

    def ppl() -> float:
        start = time.perf_counter()
        perplexity(lm.model, windows)
        return time.perf_counter() - start

    ppl()  # warm-up
    times = [ppl() for _ in range(args.rounds)]
    log("census ...")
    start = time.perf_counter()
    result = census(lm.model, lm.tokenizer, name=lm.name, layers=layers, candidates=args.candidates,
                    controls=args.controls, n_seqs=args.n_seqs, seq_len=args.seq_len, eval_seqs=args.eval_seqs,
                    eval_len=args.eval_len, rows_per_forward=args.rows)
    total = time.perf_counter() - start
    times += [ppl() for _ in range(args.rounds)]
    one = statistics.median(times)
    edits = len(result.rows) * (args.controls + 2)
    cfg = lm.model.config
    block, head = block_params(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
                               cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads, cfg.vocab_size)
    flops = sum(edited_fraction(r["layer"], cfg.num_hidden_layers, block, head) for r in result.rows) \
        * (args.controls + 2) / max(edits, 1)

    print(f"## Super-weight census of {lm.name} ({datetime.date.today()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load {loadavg()})\n")
    print(f"layers {len(result.layers)}, candidates {args.candidates} (+ the scan's), controls {args.controls}; "
          f"scan {args.n_seqs} x {args.seq_len}; evaluation {args.eval_seqs} x {args.eval_len} tokens; "
          f"{args.rows} rows per forward\n")
    print("| what | seconds | x one perplexity evaluation |")
    print("|---|---:|---:|")
    print(f"| one perplexity evaluation (median of {len(times)}) | {one:.3f} | 1.0 |")
    print(f"| census: scan + spike pairs | {result.timing['scan_s']:.2f} | {result.timing['scan_s'] / one:.1f} |")
    print(f"| census: {edits} single-weight edits ({result.timing['forwards']} forwards) | "
          f"{result.timing['evaluate_s']:.2f} | {result.timing['evaluate_s'] / one:.1f} |")
    print(f"| census, total | {total:.2f} | {total / one:.1f} |")
    print(f"| naive: one full perplexity evaluation per edit | {edits * one:.1f} | {edits} |")
    print(f"\nper edit: {result.timing['evaluate_s'] / one / max(edits, 1):.3f} perplexity evaluations "
          f"(FLOP share of the replayed layers and head: {flops:.3f})\n")
    extrapolate(args.candidates, args.controls)


def extrapolate(candidates: int, controls: int) -> None:
    """Cost of a full census of Llama-3-8B in perplexity evaluations, by FLOPs."""
    c = LLAMA3_8B
    block, head = block_params(c["layers"], c["d_model"], c["d_ff"], c["kv"], c["vocab"])
    share = statistics.mean(edited_fraction(L, c["layers"], block, head) for L in range(c["layers"]))
    tokens = 16 * 64
    flop = 2 * (c["layers"] * block + head) * tokens
    seconds = flop / H100_FLOPS
    for cand, ctrl in ((candidates, controls), (8, 32)):
        edits = c["layers"] * (cand + 2) * (ctrl + 2)
        print(f"Llama-3-8B, all 32 layers, {cand} (+1-2 scan) candidates x ({ctrl} controls + zeroed + restored): "
              f"at most {edits} edits x {share:.3f} (mean FLOP share of blocks L.. and the head) = "
              f"{edits * share:.0f} perplexity evaluations of the same windows, about "
              f"{edits * share * seconds / 60:.1f} min on one H100")
    print(f"\nassumptions: an edit costs the FLOPs of blocks L.. and the head (shared prefix; on a GPU batching "
          f"saves launch overhead, not FLOPs; the exact edit's extra down projection, 1/{3 * c['layers']} of a "
          f"forward at most, ignored); evaluation on 16 x 64 tokens, {flop / 1e12:.1f} TFLOP per evaluation, "
          f"{H100_FLOPS / 1e12:.0f} TFLOP/s sustained bf16 ({seconds:.3f} s per evaluation); the scan, one "
          f"evaluation-sized pass, not counted. Measured here on CPU the edits cost less than their FLOP share "
          f"(batching amortises per-forward overhead on small windows); not measured on a GPU.")


if __name__ == "__main__":
    main()
