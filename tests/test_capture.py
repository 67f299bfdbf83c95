"""Capture on the embedded model: three backends agree, hooks always go away, bad input is refused."""

from __future__ import annotations

import pytest
import torch

from probe import EmptyInputError, HookPointError, LayerError, capture
from probe.backends import as_bridge, as_nnsight
from probe.reducers import Full, MaxMedian, TopK

POINTS = ["blocks.*.mlp.hook_post", "blocks.*.hook_resid_post"]


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def full_torch(smol, smol_ids):
    with capture(smol.model, POINTS, reduce=Full()) as cap:
        cap.run(smol_ids)
    return cap.results


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) == 60
    for name in a:
        scale = a[name].abs().max()
        assert (a[name] - b[name]).abs().max() / scale <= 1e-4, name


def test_torch_backend_matches_plain_hooks(smol, smol_ids, full_torch):
    model = smol.model
    seen = {}
    layer = model.model.layers[7]
    h1 = layer.mlp.down_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("post", i[0].clone()))
    h2 = layer.register_forward_hook(lambda m, i, o: seen.__setitem__("resid", o.clone()))
    with torch.no_grad():
        model(smol_ids)
    h1.remove(), h2.remove()
    assert torch.equal(full_torch["blocks.7.mlp.hook_post"], seen["post"])
    assert torch.equal(full_torch["blocks.7.hook_resid_post"], seen["resid"])


def test_nnsight_backend_agrees(smol, smol_ids, full_torch):
    with capture(as_nnsight(smol.model), POINTS, reduce=Full(), backend="nnsight") as cap:
        cap.run(smol_ids)
    _assert_same(full_torch, cap.results)


def test_transformer_lens_backend_agrees(smol, smol_ids, full_torch):
    bridge = as_bridge(smol.model)
    with capture(bridge, POINTS, reduce=Full(), backend="transformer_lens") as cap:
        cap.run(smol_ids)
    _assert_same(full_torch, cap.results)
    # and against TransformerLens' own cache
    _, cache = bridge.run_with_cache(smol_ids, names_filter=lambda n: n == "blocks.11.mlp.hook_post")
    ref = cache["blocks.11.mlp.hook_post"]
    assert (ref - full_torch["blocks.11.mlp.hook_post"]).abs().max() <= 1e-4 * ref.abs().max()


def test_topk_reducer_equals_torch_topk_on_captured_tensor(smol, smol_ids, full_torch):
    with capture(smol.model, POINTS, reduce=TopK(5)) as cap:
        smol.model(smol_ids)  # calling the model directly also feeds the reducers
    for name in ("blocks.3.hook_resid_post", "blocks.20.mlp.hook_post"):
        full = full_torch[name]
        vals, idx = full.abs().flatten().topk(5)
        res = cap[name]
        assert torch.equal(res.values.abs(), vals)
        assert torch.equal(res.indices, torch.stack(torch.unravel_index(idx, full.shape), 1))
        assert torch.equal(res.tokens, smol_ids[res.batch, res.position])


def test_several_reducers_and_batches_stream(smol, smol_ids, full_torch):
    with capture(smol.model, "blocks.5.hook_resid_post", reduce={"top": TopK(3), "stats": MaxMedian()}) as cap:
        cap.run(smol_ids[:1])
        cap.run(smol_ids[1:])
    res = cap["blocks.5.hook_resid_post"]
    full = full_torch["blocks.5.hook_resid_post"]
    assert res["stats"].max == pytest.approx(float(full.abs().max()))
    assert abs(res["stats"].median / float(full.abs().median()) - 1) < 0.008
    assert set(res["top"].batch.tolist()) <= {0, 1}
    assert torch.equal(res["top"].values.abs(), full.abs().flatten().topk(3).values)


@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_hooks_are_removed_even_when_the_body_raises(smol, smol_ids, backend):
    before = _hook_count(smol.model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(smol.model, POINTS, reduce=TopK(2), backend=backend) as cap:
            cap.run(smol_ids)
            raise RuntimeError("boom")
    assert _hook_count(smol.model) == before
    with pytest.raises(KeyboardInterrupt):
        with capture(smol.model, POINTS, reduce=TopK(2)):
            raise KeyboardInterrupt
    assert _hook_count(smol.model) == before


def test_unknown_hook_point(smol):
    with pytest.raises(HookPointError, match="no hook point matches 'blocks.0.mlp.hook_nope'.*available"):
        capture(smol.model, "blocks.0.mlp.hook_nope", reduce=TopK(1))


def test_layer_out_of_range(smol):
    with pytest.raises(LayerError, match="layer 30 is out of range.*30 layers"):
        capture(smol.model, "blocks.30.hook_resid_post", reduce=TopK(1))


def test_empty_input(smol):
    with capture(smol.model, "blocks.0.hook_resid_post", reduce=TopK(1)) as cap:
        with pytest.raises(EmptyInputError):
            cap.run(torch.zeros(1, 0, dtype=torch.long))


def test_unknown_backend(smol):
    with pytest.raises(ValueError, match="unknown backend"):
        capture(smol.model, "blocks.0.hook_resid_post", reduce=TopK(1), backend="jax")


def test_attention_pattern_needs_eager(smol, smol_ids):
    with capture(smol.model, "blocks.0.attn.hook_pattern", reduce=Full()) as cap:
        with pytest.raises(HookPointError, match="eager"):
            cap.run(smol_ids)
