"""Reversible edits restore every parameter bit-exactly, whatever happens in the block."""

from __future__ import annotations

import pytest
import torch

from probe import EditError, capture, edit_residual, keep_rows, scale, set_mean, zero_rows
from probe.edit import matrix
from probe.reducers import Full


def _bytes(model) -> dict[str, bytes]:
    return {n: p.detach().contiguous().view(torch.uint8).clone() for n, p in model.named_parameters()}


def _same_bytes(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_edits_change_the_model_and_restore_bit_exactly(smol, smol_ids):
    model = smol.model
    before, base = _bytes(model), _logits(model, smol_ids)
    with zero_rows(model, "blocks.3.mlp.W_up", [1, 2, 3]), keep_rows(model, "blocks.4.mlp.W_gate", [5, 9]), \
            scale(model, "blocks.5.mlp.W_down", [0], 3.0, cols=[7]), set_mean(model, "blocks.6.mlp.W_up", [11]):
        up = matrix(model, "blocks.3.mlp.W_up")
        gate = matrix(model, "blocks.4.mlp.W_gate")
        assert up[[1, 2, 3]].abs().sum() == 0 and up[0].abs().sum() > 0
        assert gate[5].abs().sum() > 0 and gate[9].abs().sum() > 0
        assert gate.abs().sum(1).count_nonzero() == 2
        assert (_logits(model, smol_ids) - base).abs().max() > 1e-3
    assert _same_bytes(before, _bytes(model))
    assert torch.equal(_logits(model, smol_ids), base)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_restore_when_body_raises(smol, exc):
    model = smol.model
    before = _bytes(model)
    with pytest.raises(exc):
        with zero_rows(model, "blocks.3.mlp.W_up", [1, 2]), keep_rows(model, "blocks.3.mlp.W_gate", [0]):
            raise exc("interrupted")
    assert _same_bytes(before, _bytes(model))


def test_zero_one_entry_like_a_super_weight(smol):
    model = smol.model
    w = model.model.layers[2].mlp.down_proj.weight
    original = w[10, 20].item()
    with zero_rows(model, "blocks.2.mlp.W_down", rows=[10], cols=[20]):
        assert w[10, 20].item() == 0.0 and w[10, 21].item() != 0.0 and w[11, 20].item() != 0.0
    assert w[10, 20].item() == original


def test_raw_parameter_names_work(smol):
    model = smol.model
    name = "model.layers.0.mlp.up_proj.weight"
    with zero_rows(model, name, [0]):
        assert model.model.layers[0].mlp.up_proj.weight[0].abs().sum() == 0
    assert model.model.layers[0].mlp.up_proj.weight[0].abs().sum() > 0


def test_bad_edits_are_refused_without_touching_weights(smol):
    model = smol.model
    before = _bytes(model)
    with pytest.raises(EditError, match="out of range"):
        with zero_rows(model, "blocks.3.mlp.W_up", [1536]):
            pass
    with pytest.raises(EditError, match="unknown weight"):
        with zero_rows(model, "not.a.weight", [0]):
            pass
    with pytest.raises(Exception, match="layer 99 is out of range"):
        with zero_rows(model, "blocks.99.mlp.W_up", [0]):
            pass
    assert _same_bytes(before, _bytes(model))


def test_residual_edit_sets_positions_and_dims_and_propagates(smol, smol_ids):
    model = smol.model
    point = "blocks.2.hook_resid_post"
    with edit_residual(model, point, positions=[0, 3], dims=[5, 6], value=0.0):
        with capture(model, [point, "blocks.3.hook_resid_pre"], reduce=Full()) as cap:
            cap.run(smol_ids)
    out, nxt = cap[point], cap["blocks.3.hook_resid_pre"]
    assert out[:, [0, 3]][:, :, [5, 6]].abs().sum() == 0
    assert out[:, 1, 5].abs().sum() > 0
    assert torch.equal(out, nxt)
    with capture(model, point, reduce=Full()) as cap:
        cap.run(smol_ids)
    assert cap[point][:, 0, 5].abs().sum() > 0  # hook removed
    with pytest.raises(EditError, match="beyond the sequence length"):
        with edit_residual(model, point, positions=[999], dims=[0]):
            _logits(model, smol_ids)
