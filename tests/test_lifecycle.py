"""The outlier lifecycle (issue 18, part 2): what zeroing the super weight does to the massive
activation, the attention sink and the loss, against plain transformers eager computations."""

from __future__ import annotations

import json

import pytest
import torch

from analyses.ablate.plans import make_plans
from analyses.ablate.run import run_plans
from analyses.attention import Lifecycle, lifecycle
from analyses.evaluate.likelihood import eval_windows
from analyses.massive.locate import scan
from probe.models import load_model


@pytest.fixture(scope="module")
def chain(smol):
    found = scan(smol.model, smol.tokenizer, name="smollm2", n_seqs=3, seq_len=48)
    plans = make_plans(smol.model, None, found, "super", [1]) + make_plans(smol.model, None, found, "random", [5], seeds=1)
    ev = eval_windows(smol.tokenizer, "stdlib", seq_len=64, n_seqs=2)
    return found, plans, ev, lifecycle(smol.model, smol.tokenizer, found, plans, ev, name="smollm2", batch_size=3)


def _eager_first_token_attention(windows: torch.Tensor, plan) -> tuple[list[float], list[float]]:
    """Per layer, by plain transformers on a separately loaded eager model, with the super weight
    zeroed by a plain tensor assignment: the mean attention of queries t >= 1 on position 0, and
    the largest |h| of each layer's output but the last."""
    model = load_model("smollm2", attn_implementation="eager").model
    if plan is not None:
        with torch.no_grad():
            model.model.layers[plan.layer].mlp.down_proj.weight[plan.dims[0], plan.neurons[0]] = 0.0
    with torch.no_grad():
        out = model(windows, output_attentions=True, output_hidden_states=True)
    attention = [float(a[:, :, 1:, 0].mean()) for a in out.attentions]
    maxes = [float(h.abs().max()) for h in out.hidden_states[1:-1]]  # the last one is after the final norm
    return attention, maxes


def test_super_weight_removes_the_late_sinks_and_leaves_early_layers_untouched(chain):
    found, plans, _, lc = chain
    original, zeroed = lc.stages[0], lc.stages[1]
    o = found.origin_layer
    assert zeroed.plan["mode"] == "super" and o == 11
    # before the origin layer the edited model is the same model
    assert zeroed.mean_attn_first[:o] == original.mean_attn_first[:o]
    assert zeroed.massive_max[:o] == original.massive_max[:o]
    # the massive activation shrinks at the origin, the last layer's sink almost vanishes, the loss rises
    assert zeroed.massive_max[o] < 0.5 * original.massive_max[o]
    assert original.mean_attn_first[-1] > 0.3 and zeroed.mean_attn_first[-1] < 0.02
    assert zeroed.ppl_ratio > 2.0
    # a random control of 5 rows at the same layer changes nothing that matters
    control = lc.stages[2]
    assert abs(control.mean_attn_first[-1] - original.mean_attn_first[-1]) < 0.01 and control.ppl_ratio < 1.05


@pytest.mark.parametrize("stage", [0, 1])
def test_stages_equal_a_plain_eager_computation(chain, stage):
    found, plans, _, lc = chain
    attention, maxes = _eager_first_token_attention(found.windows, None if stage == 0 else plans[0])
    got = lc.stages[stage]
    assert max(abs(a - b) for a, b in zip(got.mean_attn_first, attention)) < 1e-4
    assert max(abs(a - b) / b for a, b in zip(got.massive_max[:-1], maxes)) < 1e-5


def test_loss_from_the_ablation_table_and_reused(chain, smol):
    found, plans, ev, lc = chain
    table = run_plans(smol.model, ev, plans)
    assert [s.ppl for s in lc.stages] == [table["baseline"]["ppl"], *(r["ppl"] for r in table["results"])]
    again = lifecycle(smol.model, smol.tokenizer, found, plans[:1], ev, name="smollm2", batch_size=3, table=table)
    assert again.stages[1].ppl == table["results"][0]["ppl"]
    assert again.stages[1].mean_attn_first == lc.stages[1].mean_attn_first


def test_result_is_json_and_draws(chain):
    *_, lc = chain
    data = json.loads(json.dumps(lc.to_dict()))
    assert [s["label"] for s in data["stages"]][0] == "original" and data["origin_layer"] == 11
    assert isinstance(lc, Lifecycle) and len(lc.rows()) == 3
    fig = lc.figure()
    assert len(fig.data) == 3 * len(lc.stages) and "lifecycle" in fig.layout.title.text


def test_shared_prefixes_skip_the_unedited_blocks_and_change_nothing(chain, smol):
    """Both plans first edit layer 11: their passes run blocks 11.. on the recorded prefix (block 0's
    MLP runs only in the unedited pass), and every stage equals that of full passes, bit for bit."""
    from dataclasses import asdict

    found, plans, ev, _ = chain
    table = run_plans(smol.model, ev, plans)
    calls = []
    hook = smol.model.model.layers[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    try:
        shared = lifecycle(smol.model, smol.tokenizer, found, plans, ev, batch_size=3, table=table)
        n_shared = len(calls)
        full = lifecycle(smol.model, smol.tokenizer, found, plans, ev, batch_size=3, table=table, share_prefix=False)
    finally:
        hook.remove()
    assert n_shared == 1 and len(calls) - n_shared == 3  # 3 windows, one batch per pass
    assert [asdict(s) for s in shared.stages] == [asdict(s) for s in full.stages]
