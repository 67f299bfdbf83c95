"""``load_model(..., device_map=...)`` through accelerate: same scan and perplexity as a plain load,
also when blocks are offloaded (their weights sit on the meta device between forward passes)."""

from __future__ import annotations

import pytest

from analyses.evaluate import eval_rows, perplexity
from analyses.massive import scan
from probe import ProbeError
from probe.models import load_model

SCAN = dict(name="smollm2", n_seqs=2, seq_len=32)


@pytest.fixture(scope="module")
def plain(smol):
    rows = eval_rows(smol.tokenizer, seq_len=32, n_seqs=2)
    return rows, scan(smol.model, smol.tokenizer, **SCAN).to_dict(), perplexity(smol.model, rows)


def test_device_map_auto_equals_plain_load(plain):
    rows, scanned, ppl = plain
    lm = load_model("smollm2", device_map="auto")
    assert {p.device.type for p in lm.model.parameters()} == {"cpu"}  # no GPU here: all on the CPU
    assert any(n.startswith("device_map=auto") for n in lm.notes)
    assert scan(lm.model, lm.tokenizer, **SCAN).to_dict() == scanned
    assert perplexity(lm.model, rows) == ppl


def test_offloaded_blocks_give_the_same_results(plain, tmp_path):
    """Layers 10-29 offloaded to disk: accelerate's hooks load each block for its forward pass,
    the capture hooks still see every block, and the scan's weight reads load the blocks they read."""
    rows, scanned, ppl = plain
    device_map = {name: "cpu" for name in ("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head")}
    device_map |= {f"model.layers.{i}": "cpu" if i < 10 else "disk" for i in range(30)}
    lm = load_model("smollm2", device_map=device_map, offload_folder=str(tmp_path))
    assert {p.device.type for p in lm.model.model.layers[20].parameters()} == {"meta"}
    assert scan(lm.model, lm.tokenizer, **SCAN).to_dict() == scanned
    assert perplexity(lm.model, rows) == ppl


def test_device_and_device_map_are_exclusive():
    with pytest.raises(ProbeError, match="not both"):
        load_model("smollm2", device="cuda", device_map="auto")
