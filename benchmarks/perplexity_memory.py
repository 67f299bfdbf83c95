#!/usr/bin/env python
"""Peak RSS of one perplexity evaluation: materialised logits (the old path, ``chunk=None``)
against the chunked LM head (``chunk=1024``), each in a fresh subprocess.

Run from the repository root: ``.venv/bin/python benchmarks/perplexity_memory.py``. Two models:
the embedded SmolLM2 (vocab 49152) on 8 x 256 tokens of the stdlib corpus, one batch of 8; and a
random-init Llama-style model with a 262144-token vocabulary (Gemma 3's), d_model 64, 2 layers,
on 8 x 1024 random tokens in batches of ``--big-batch`` (2 by default: the materialised path needs
~10 bytes x tokens x vocab, 21 GiB for a batch of 8 x 1024, more than this 24 GB machine has
to spare). Each child reports the RSS with the model loaded and its weights paged in (before the
evaluation) and its peak
(``getrusage`` maxrss), and the perplexity, which must be the same for both paths.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import loadavg, log, rss_kib  # noqa: E402


def child(which: str, chunk: int | None, big_batch: int) -> None:
    import torch

    from analyses.evaluate.likelihood import eval_windows, perplexity

    torch.manual_seed(0)
    if which == "smollm2":
        from probe.models import load_model

        lm = load_model("smollm2")
        model, windows, batch = lm.model, eval_windows(lm.tokenizer, seq_len=256, n_seqs=8), 8
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=262144, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             tie_word_embeddings=True)
        model = LlamaForCausalLM(config).eval()
        windows = torch.randint(0, 262144, (8, 1024), generator=torch.Generator().manual_seed(0))
        batch = big_batch
    with torch.no_grad():
        for p in model.parameters():  # page in memory-mapped weights: "loaded" means resident
            p.sum()
    before = rss_kib()
    ppl = perplexity(model, windows, batch_size=batch, chunk=chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    vocab = model.config.vocab_size
    print(json.dumps(dict(before=before, peak=peak, ppl=ppl.ppl, nll=ppl.nll, vocab=vocab, batch=batch,
                          tokens=list(windows.shape))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CHUNK"))
    parser.add_argument("--big-batch", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        which, chunk = args.child
        child(which, None if chunk == "none" else int(chunk), args.big_batch)
        return
    rows = []
    for which in ("smollm2", "vocab262k"):
        found = {}
        for chunk in ("none", "1024"):
            log(f"{which}, chunk {chunk} ...")
            out = subprocess.run([sys.executable, __file__, "--child", which, chunk, "--big-batch", str(args.big_batch)],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            found[chunk] = json.loads(out.stdout.strip().splitlines()[-1])
        assert found["none"]["ppl"] == found["1024"]["ppl"], found
        for chunk, r in found.items():
            rows.append((which, r, chunk))
    gib = lambda kib: f"{kib / 2**20:.2f} GiB"  # noqa: E731
    print(f"perplexity memory, {datetime.date.today()}, nproc {os.cpu_count()}, loadavg {loadavg()}\n")
    print("| model | vocab | windows | batch | LM head | RSS loaded | peak RSS | evaluation adds | ppl |")
    print("|---|---|---|---|---|---|---|---|---|")
    for which, r, chunk in rows:
        head = "materialised logits (old)" if chunk == "none" else f"chunked, {chunk} tokens"
        print(f"| {which} | {r['vocab']} | {r['tokens'][0]} x {r['tokens'][1]} | {r['batch']} | {head} | "
              f"{gib(r['before'])} | {gib(r['peak'])} | {gib(r['peak'] - r['before'])} | {r['ppl']:.4f} |")
    print("\nSame perplexity, float for float, on both paths (asserted).")


if __name__ == "__main__":
    main()
