"""``load_model(..., device_map=...)`` through accelerate: same scan, perplexity and ablations as a
plain load, also when blocks are offloaded (their weights sit on the meta device between forward
passes); bfloat16 finds the same massive weights."""

from __future__ import annotations

import pytest

from analyses.ablate import Plan, run_plans
from analyses.evaluate import eval_windows, perplexity
from analyses.massive import scan
from probe import ProbeError
from probe.models import load_model

SCAN = dict(name="smollm2", n_seqs=2, seq_len=32)


@pytest.fixture(scope="module")
def plain(smol):
    rows = eval_windows(smol.tokenizer, seq_len=32, n_seqs=2)
    return rows, scan(smol.model, smol.tokenizer, **SCAN).to_dict(), perplexity(smol.model, rows)


def test_device_map_auto_equals_plain_load(plain):
    rows, scanned, ppl = plain
    lm = load_model("smollm2", device_map="auto")
    assert {p.device.type for p in lm.model.parameters()} == {"cpu"}  # no GPU here: all on the CPU
    assert any(n.startswith("device_map=auto") for n in lm.notes)
    assert scan(lm.model, lm.tokenizer, **SCAN).to_dict() == scanned
    assert perplexity(lm.model, rows) == ppl


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    """Layers 10-29 (the origin layer 11 among them) offloaded to disk."""
    device_map = {name: "cpu" for name in ("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head")}
    device_map |= {f"model.layers.{i}": "cpu" if i < 10 else "disk" for i in range(30)}
    lm = load_model("smollm2", device_map=device_map, offload_folder=str(tmp_path_factory.mktemp("offload")))
    assert {p.device.type for p in lm.model.model.layers[20].parameters()} == {"meta"}
    return lm


def test_offloaded_blocks_give_the_same_results(plain, offloaded):
    """Accelerate's hooks load each block for its forward pass, the capture hooks still see every
    block, and the scan's weight reads load the blocks they read."""
    rows, scanned, ppl = plain
    assert scan(offloaded.model, offloaded.tokenizer, **SCAN).to_dict() == scanned
    assert perplexity(offloaded.model, rows) == ppl


PLANS = [Plan("zero", 11, 5, (1229, 1487, 1010, 926, 1401)), Plan("retain", 11, 2, (1229, 1487)),
         Plan("super", 11, 1, (1229,), dims=(507,)), Plan("residual-zero", 11, 1, dims=(507,), positions=(0,))]


def test_ablations_reach_offloaded_weights(smol, plain, offloaded):
    """Weight edits of an offloaded layer (meta between forward passes) hold the layer loaded while
    they last (probe.offload.held), so they take effect (before, they silently did nothing);
    the nnsight interventions read its weights inside the trace. Both equal the plain model's."""
    rows, _, ppl = plain
    expected = run_plans(smol.model, rows, PLANS)
    assert all(r["ratio"] > 1.5 for r in expected["results"][:1] + expected["results"][2:])
    assert run_plans(offloaded.model, rows, PLANS) == expected
    traced = run_plans(offloaded.model, rows, PLANS, backend="nnsight")
    assert traced["baseline"] == expected["baseline"]
    for a, b in zip(expected["results"], traced["results"], strict=True):
        assert b["ppl"] == a["ppl"]
    assert {p.device.type for p in offloaded.model.model.layers[11].parameters()} == {"meta"}  # offloaded again
    assert perplexity(offloaded.model, rows) == ppl  # and restored


def test_bfloat16_device_map_finds_the_same_massive_weights(plain):
    scanned = plain[1]
    lm = load_model("smollm2", dtype="bfloat16", device_map="auto")
    half = scan(lm.model, lm.tokenizer, **SCAN).to_dict()
    for key in ("origin_layer", "massive_dims", "massive_neurons"):
        assert half[key] == scanned[key], key
    assert (half["super_weight"]["row"], half["super_weight"]["col"]) == (507, 1229)
    assert half["super_weight"]["value"] == pytest.approx(scanned["super_weight"]["value"], rel=1e-2)


def test_device_and_device_map_are_exclusive():
    with pytest.raises(ProbeError, match="not both"):
        load_model("smollm2", device="cuda", device_map="auto")
