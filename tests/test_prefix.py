"""Shared prefixes (issue 17, part 5b): replaying the blocks in front of layer L gives the same
forward, bit for bit, on every family; ``run_plans`` with and without sharing gives the same table."""

from __future__ import annotations

import pytest
import torch

from analyses.ablate import make_plans, run_plans
from analyses.ablate.data import Plan
from analyses.evaluate import eval_windows
from analyses.massive import scan
from probe.arch import decoder_layers
from probe.errors import ProbeError
from probe.prefix import SharedPrefix, can_share
from families import FAMILIES, VOCAB, one_thread  # noqa: F401

LAYERS = 3
WINDOWS = torch.randint(3, VOCAB - 8, (4, 10), generator=torch.Generator().manual_seed(2))


def _tiny(family):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(family.config(LAYERS), attn_implementation="eager").eval()


@pytest.mark.parametrize("family", FAMILIES, ids=str)
@torch.no_grad()
def test_replayed_prefix_equals_the_full_forward(family):
    model = _tiny(family)
    assert can_share(model)
    batches = WINDOWS[:2], WINDOWS[2:]
    shared = SharedPrefix(model, [1, 2])
    with shared.recording():
        full = [model(b).logits for b in batches]
    for layer in (1, 2):
        with shared.replaying(layer):
            assert all(torch.equal(model(b).logits, f) for b, f in zip(batches, full))
    with pytest.raises(ProbeError, match="not the recorded one"), shared.replaying(1):
        model(batches[1])
    assert torch.equal(model(batches[0]).logits, full[0])  # the blocks' own forward is back
    # each recorded batch repeated 3 times along the batch axis (one copy per edit, as the census runs)
    repeated = [model(b.repeat(3, 1)).logits for b in batches]
    with shared.replaying(2, copies=3):  # equal up to kernels that may block another batch size otherwise
        for b, r in zip(batches, repeated):
            torch.testing.assert_close(model(b.repeat(3, 1)).logits, r, rtol=1e-5, atol=1e-5)
    with pytest.raises(ProbeError, match="not the recorded one"), shared.replaying(2, copies=2):
        model(batches[0].repeat(3, 1))


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_run_plans_with_and_without_sharing_are_identical(family):
    model = _tiny(family)
    plans = [Plan("zero", 1, 2, (3, 7)), Plan("retain", 2, 2, (3, 7)), Plan("super", 1, 1, (5,), dims=(4,)),
             Plan("residual-zero", 2, 1, dims=(4,), positions=(1,)), Plan("zero", 0, 1, (9,))]
    calls = []
    inner = next(decoder_layers(model)[0].children())  # runs only when block 0 really runs
    handle = inner.register_forward_hook(lambda *_: calls.append(1))
    shared = run_plans(model, WINDOWS, plans)
    assert len(calls) == 2  # the baseline and the layer-0 plan; the others replay the prefix
    assert shared == run_plans(model, WINDOWS, plans, share_prefix=False)
    assert len(calls) == 2 + 1 + len(plans)
    handle.remove()
    assert len({r["ppl"] for r in shared["results"]}) == len(plans)  # every plan changed something


def test_smollm2_report_plans_identical_with_sharing(smol):
    result = scan(smol.model, smol.tokenizer, n_seqs=4, seq_len=64)
    model = smol.model
    plans = make_plans(model, None, result, "zero", [1, 2, 5])
    plans += make_plans(model, None, result, "retain", [5])
    plans += make_plans(model, None, result, "random", [5], seeds=2)
    plans += make_plans(model, None, result, "super", [1])
    ev = eval_windows(smol.tokenizer, seq_len=64, n_seqs=3)
    shared = run_plans(model, ev, plans)
    assert shared == run_plans(model, ev, plans, share_prefix=False)
    assert {p.layer for p in plans} == {result.origin_layer} and result.origin_layer > 0
