"""The chunked LM head (issue 17, part 6): perplexity without materialising a batch's logits,
the same numbers as the materialised path on every family and on SmolLM2.

What holds (module docstring of :mod:`analyses.evaluate.likelihood`): per-token logits and NLLs
bit for bit, so batch totals (summed in ``F.cross_entropy``'s order) and perplexities too; with
chunks of a few tokens only the last bits of a token's logits may differ (another GEMM kernel).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analyses.evaluate import eval_windows, perplexity, sum_nll
from analyses.evaluate.likelihood import sum_token_nll, token_nll
from probe.arch import final_hidden, logits_from_hidden
from families import FAMILIES, VOCAB, one_thread  # noqa: F401

WINDOWS = torch.randint(3, VOCAB - 8, (3, 12), generator=torch.Generator().manual_seed(1))


def _tiny(family):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(family.config(), attn_implementation="eager").eval()


def _reference(model, batch):
    """The materialised path: per-token NLLs and their sum from ``model(batch).logits``."""
    logits = model(batch).logits
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    return logits, F.cross_entropy(flat, batch[:, 1:].reshape(-1), reduction="none"), sum_nll(logits, batch)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
@torch.no_grad()
def test_chunked_head_equals_materialised_logits_bit_for_bit(family):
    model = _tiny(family)
    logits, per_token, total = _reference(model, WINDOWS)
    assert torch.equal(logits_from_hidden(model, final_hidden(model, WINDOWS)), logits)
    for chunk in (1024, 11):  # one chunk of 33 tokens; three of 11
        nll = token_nll(model, WINDOWS, chunk)
        assert nll.shape == (3, 11) and nll.dtype == torch.float32
        assert torch.equal(nll.reshape(-1), per_token), chunk
        assert torch.equal(sum_token_nll(nll), total), chunk
    assert perplexity(model, WINDOWS, batch_size=2) == perplexity(model, WINDOWS, batch_size=2, chunk=None)
    tiny = token_nll(model, WINDOWS, 4)  # chunks of 3-4 tokens: last bits may differ
    assert torch.allclose(tiny.reshape(-1), per_token, rtol=1e-6, atol=0)
    assert float(sum_token_nll(tiny)) == pytest.approx(float(total), rel=1e-6)


def test_sum_token_nll_adds_in_cross_entropys_order():
    """Not ``nll.sum()``: the cascade sum of ``F.nll_loss`` over many tokens, whatever the vocabulary."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 50, generator=gen) * 4
    targets = torch.randint(0, 50, (3000,), generator=gen)
    per_token = F.cross_entropy(logits, targets, reduction="none")
    assert torch.equal(sum_token_nll(per_token), F.cross_entropy(logits, targets, reduction="sum"))


@torch.no_grad()
def test_smollm2_chunked_perplexity_equals_materialised(smol):
    ev = eval_windows(smol.tokenizer, seq_len=64, n_seqs=4)
    batch = ev[:2]
    _, per_token, total = _reference(smol.model, batch)
    nll = token_nll(smol.model, batch)  # 126 tokens: one chunk
    assert torch.equal(nll.reshape(-1), per_token) and torch.equal(sum_token_nll(nll), total)
    small = token_nll(smol.model, batch, chunk=40)  # four chunks of 31-32 tokens
    assert torch.allclose(small.reshape(-1), per_token, rtol=1e-5, atol=1e-5)
    assert float(sum_token_nll(small)) == pytest.approx(float(total), rel=1e-6)
    assert perplexity(smol.model, ev, batch_size=2) == perplexity(smol.model, ev, batch_size=2, chunk=None)
