"""Ablation plans on the embedded model: what each edit touches, and exact restore."""

from __future__ import annotations

import pytest
import torch

from analyses.ablate import applied, make_plans, run_plans
from analyses.evaluate import eval_windows, perplexity
from analyses.massive import scan
from probe.data import load_corpus, token_windows
from probe.edit import matrix
from probe.errors import ProbeError


@pytest.fixture(scope="module")
def setup(smol):
    result = scan(smol.model, smol.tokenizer, n_seqs=4, seq_len=64)
    rows = token_windows(smol.tokenizer, load_corpus(), seq_len=64, n_seqs=4)
    return result, rows, eval_windows(smol.tokenizer, seq_len=64, n_seqs=2)


def test_zero_then_restore_returns_the_baseline_exactly(smol, setup):
    result, rows, ev = setup
    plans = make_plans(smol.model, rows, result, "zero", [5])
    table = run_plans(smol.model, ev, plans)
    assert table["results"][0]["ppl"] > 1.5 * table["baseline"]["ppl"]
    assert perplexity(smol.model, ev).ppl == table["baseline"]["ppl"]


def test_retain_zeroes_every_other_row(smol, setup):
    result, rows, _ = setup
    (plan,) = make_plans(smol.model, rows, result, "retain", [5])
    with applied(smol.model, plan):
        for name in ("W_up", "W_gate"):
            m = matrix(smol.model, f"blocks.{plan.layer}.mlp.{name}")
            nonzero = m.abs().sum(1).nonzero().flatten().tolist()
            assert nonzero == sorted(plan.neurons)
    assert matrix(smol.model, f"blocks.{plan.layer}.mlp.W_up").abs().sum(1).count_nonzero() == 1536


def test_random_controls_exclude_the_massive_rows_and_barely_matter(smol, setup):
    result, rows, ev = setup
    plans = make_plans(smol.model, rows, result, "random", [5], seeds=3)
    assert len({p.neurons for p in plans}) == 3
    for plan in plans:
        assert not set(plan.neurons) & set(result.massive_neurons[:5])
    zero = run_plans(smol.model, ev, make_plans(smol.model, rows, result, "zero", [5]))["results"][0]["ppl"]
    rand = run_plans(smol.model, ev, plans[:1])["results"][0]["ppl"]
    assert zero > 1.5 * rand


def test_super_weight_and_residual_plans_touch_one_place(smol, setup):
    result, rows, _ = setup
    (sup,) = make_plans(smol.model, rows, result, "super", [1])
    w = smol.model.model.layers[sup.layer].mlp.down_proj.weight
    before = w.clone()
    with applied(smol.model, sup):
        diff = (w != before).nonzero().tolist()
        assert diff == [[sup.dims[0], sup.neurons[0]]]
    assert torch.equal(w, before)
    (res,) = make_plans(smol.model, rows, result, "residual-mean", [1])
    assert res.positions == (0,) and res.value > 1000


def test_bad_plans_are_refused(smol, setup):
    result, rows, _ = setup
    with pytest.raises(ProbeError, match="out of range"):
        make_plans(smol.model, rows, result, "zero", [5000])
    with pytest.raises(ProbeError, match="unknown ablation mode"):
        make_plans(smol.model, rows, result, "melt", [5])
    with pytest.raises(ProbeError, match="layer 40 is out of range"):
        make_plans(smol.model, rows, result, "zero", [5], layer="40")
