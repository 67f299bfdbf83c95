"""MacDrop: schedules, masks that touch only the k massive rows and only during a step, and
p0 = 0 being plain LoRA fine-tuning (issue 7, first slice)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from analyses.training import MacDrop, macdrop_callback, schedule
from probe.arch import weight_view
from probe.errors import LayerError, ProbeError

LAYER, ROWS = 11, [1229, 1487, 1010, 926, 1401]  # the embedded model's origin layer and top-5 neurons


def test_schedules_follow_their_formulas():
    step = schedule("step", p0=0.8, total_steps=200)
    assert [step(t) for t in (0, 50, 100, 200, 250)] == pytest.approx([0.8, 0.6, 0.4, 0.0, 0.0])
    exp = schedule("exp", p0=0.8, alpha=0.01)
    assert exp(0) == 0.8 and exp(100) == pytest.approx(0.8 * math.exp(-1))
    assert schedule("constant", p0=0.3)(1000) == 0.3 and schedule("none")(0) == 0.0
    with pytest.raises(ProbeError, match="schedule"):
        schedule("cosine")
    with pytest.raises(ProbeError):
        schedule("step", p0=1.5)


def test_step_zeroes_only_the_dropped_massive_rows_and_restores_bit_exactly(smol):
    model = smol.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    drop = MacDrop(model, LAYER, ROWS, schedule("constant", p0=1.0))
    with drop.step(0) as dropped:
        assert dropped == ROWS
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed == {f"model.layers.{LAYER}.mlp.gate_proj.weight", f"model.layers.{LAYER}.mlp.up_proj.weight"}
        for role in ("W_up", "W_gate"):
            W = weight_view(model, LAYER, role).matrix
            assert torch.all(W[ROWS] == 0)
            others = torch.ones(W.shape[0], dtype=torch.bool)
            others[ROWS] = False
            name = f"model.layers.{LAYER}.mlp.{'up' if role == 'W_up' else 'gate'}_proj.weight"
            assert torch.equal(W[others], before[name][others])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(RuntimeError), drop.step(1):
        raise RuntimeError("a failing forward")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_masks_are_bernoulli_with_the_scheduled_probability(smol):
    drop = MacDrop(smol.model, LAYER, ROWS, schedule("constant", p0=0.3), seed=1)
    counts = [len(drop.mask(t)) for t in range(2000)]
    assert sum(counts) / (2000 * len(ROWS)) == pytest.approx(0.3, abs=0.02)
    none = MacDrop(smol.model, LAYER, ROWS, schedule("none"))
    assert all(none.mask(t) == [] for t in range(50))
    with pytest.raises(LayerError):
        MacDrop(smol.model, 30, ROWS, schedule("none"))
    with pytest.raises(ProbeError):
        MacDrop(smol.model, LAYER, [1229, 1229], schedule("none"))


def test_trainer_callback_applies_for_the_step_only(smol):
    W = weight_view(smol.model, LAYER, "W_up").matrix
    saved = W[ROWS].clone()
    cb = macdrop_callback(MacDrop(smol.model, LAYER, ROWS, schedule("constant", p0=1.0)))
    state = SimpleNamespace(global_step=0)
    cb.on_step_begin(None, state, None)
    assert torch.all(W[ROWS] == 0)
    cb.on_step_end(None, state, None)
    assert torch.equal(W[ROWS], saved)
    cb.on_step_begin(None, state, None)
    cb.on_train_end(None, state, None)
    assert torch.equal(W[ROWS], saved)


def _lora_run(base, ids: torch.Tensor, drop_kind: str | None, steps: int = 3) -> dict[str, torch.Tensor]:
    """A few LoRA steps (q/v/up/gate adapters) on a copy of ``base``; returns the adapter weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                                          target_modules=["q_proj", "v_proj", "up_proj", "gate_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    drop = MacDrop(model, LAYER, ROWS, schedule(drop_kind, p0=0.8 if drop_kind != "none" else 0.0,
                                                total_steps=steps)) if drop_kind else None
    for t in range(steps):
        opt.zero_grad()
        if drop:
            with drop.step(t):
                model(ids, labels=ids).loss.backward()
        else:
            model(ids, labels=ids).loss.backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_p0_zero_is_plain_lora_and_dropping_changes_the_adapter(smol, smol_ids):
    ids = smol_ids[:, :16]
    plain = _lora_run(smol.model, ids, None)
    none = _lora_run(smol.model, ids, "none")
    assert plain.keys() == none.keys() and all(torch.equal(plain[n], none[n]) for n in plain)
    dropped = _lora_run(smol.model, ids, "constant")
    assert any(not torch.equal(plain[n], dropped[n]) for n in plain)


def test_dora_norm_reads_the_full_rows_during_a_step(smol):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(smol.model), LoraConfig(r=4, target_modules=["up_proj", "gate_proj"], use_dora=True))
    ids = torch.tensor([[0, 504, 3458, 314, 260, 1789, 30]])
    drop = MacDrop(model, LAYER, ROWS, schedule("constant", p0=1.0))
    with drop.step(0):
        loss = model(ids, labels=ids).loss
        loss.backward()
        up = model.get_base_model().model.layers[LAYER].mlp.up_proj
        # The dropped rows' DoRA output is m * (B A x) / ||W + B A||: B = 0 at init, so 0, not 0/0.
        x = torch.randn(1, up.in_features)
        assert torch.all(up(x)[0, ROWS] == 0) and torch.isfinite(up(x)).all()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad and p.grad is not None)
    assert drop.dora[0] and drop.dora[1] and all("get_weight_norm" not in vars(d) for d in drop.dora[0] + drop.dora[1])
