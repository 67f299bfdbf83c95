"""Perplexity against a direct log-softmax computation, and exact return to baseline after edits."""

from __future__ import annotations

import math

import torch

from analyses.evaluate import eval_windows, perplexity
from probe import zero_rows


def test_perplexity_equals_direct_log_softmax(smol):
    rows = eval_windows(smol.tokenizer, seq_len=32, n_seqs=3)
    res = perplexity(smol.model, rows, batch_size=2)
    with torch.no_grad():
        logp = torch.log_softmax(smol.model(rows).logits.double(), dim=-1)
    picked = logp[:, :-1].gather(-1, rows[:, 1:, None]).squeeze(-1)
    assert res.n_tokens == 3 * 31
    assert math.isclose(res.nll, float(-picked.mean()), rel_tol=1e-4)  # fp32 logits; batch shapes differ
    assert math.isclose(res.ppl, math.exp(float(-picked.mean())), rel_tol=1e-4)  # fp32 logits; batch shapes differ
    assert 1 < res.ppl < 200  # a trained model on English prose


def test_edit_then_restore_gives_the_baseline_exactly(smol):
    rows = eval_windows(smol.tokenizer, seq_len=32, n_seqs=2)
    base = perplexity(smol.model, rows)
    with zero_rows(smol.model, "blocks.3.mlp.W_up", list(range(0, 1536, 3))):
        edited = perplexity(smol.model, rows)
    assert edited.ppl != base.ppl
    assert perplexity(smol.model, rows).ppl == base.ppl
