"""The window-protocol comparison: one scan per prefix, and what moved between them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analyses.massive import scan
from analyses.massive.prepend import _moved
from analyses.massive import alternatives, compare_prepend, label, others

PROBE = str(Path(sys.executable).parent / "probe")
OPTS = dict(name="smollm2", n_seqs=4, seq_len=48, k=3)


def test_alternatives_are_the_distinct_prefixes(smol):
    tok = smol.tokenizer
    # SmolLM2's tokenizer adds nothing, so "none" is "auto"; BOS and EOS are <|im_start|> and <|im_end|>
    assert alternatives(tok) == ["auto", "bos", "eos"]
    assert others(tok, "auto") == ["bos", "eos"] and others(tok, "none") == ["bos", "eos"]
    assert others(tok, "<|endoftext|>") == ["auto", "bos", "eos"]


def test_each_row_is_the_scan_under_that_protocol(smol):
    model, tok = smol.model, smol.tokenizer
    comparison = compare_prepend(model, tok, ["auto", "<|endoftext|>"], **OPTS)
    alone = [scan(model, tok, prepend=p, **OPTS) for p in ("auto", "<|endoftext|>")]
    rows = comparison.rows()
    assert [r["label"] for r in rows] == ["auto: nothing", "<|endoftext|>: '<|endoftext|>' (0)"]
    for row, s in zip(rows, alone):
        assert row["protocol"] == s.protocol["text"] and row["origin_layer"] == s.origin_layer == 11
        assert row["massive_dims"] == s.massive_dims and row["top_neuron"] == s.massive_neurons[0]
        assert row["super_weight"] == [s.super_weight["layer"], s.super_weight["row"], s.super_weight["col"]]
        assert row["carrier"]["position"] == s.carrier["position"]
    assert comparison.warnings == _moved(rows)
    json.dumps(comparison.to_dict(), allow_nan=True)
    assert len(comparison.figure().data) == 2


def _row(prepend, origin, dims, position, sw):
    return {"prepend": prepend, "origin_layer": origin, "massive_dims": dims,
            "carrier": None if position is None else {"position": position}, "super_weight": sw}


def test_moved_names_what_changed():
    same = [_row("auto", 11, [507], 0, [11, 507, 1229]), _row("bos", 11, [507, 247], 0, [11, 507, 1229])]
    assert _moved(same) == []  # a second dim joining is not a move
    moved = [_row("auto", 5, [3], 0, [5, 3, 9]), _row("eos", 6, [3], 1, [6, 3, 2])]
    warnings = _moved(moved)
    assert [w.split(" moves")[0] for w in warnings] == ["the origin layer", "the carrier position", "the super weight"]
    assert "auto -> 5; eos -> 6" in warnings[0]
    assert _moved([_row("auto", None, [], None, None), _row("bos", 11, [507], 0, [11, 507, 1229])])[0].startswith(
        "the origin layer moves")


def test_label():
    assert label({"prepend": "bos", "tokens": ["<s>"], "ids": [1]}) == "bos: '<s>' (1)"
    assert label({"prepend": "none", "tokens": [], "ids": []}) == "none: nothing"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.slow  # 12 s; test_each_row_is_the_scan_under_that_protocol checks the comparison through the API
def test_cli_compare_prepend_json():
    r = subprocess.run([PROBE, "scan", "--model", "smollm2", "--n-seqs", "2", "--seq-len", "32", "--compare-prepend",
                        "--prepend", "<|endoftext|>", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [row["prepend"] for row in out["rows"]] == ["<|endoftext|>", "auto", "bos", "eos"]
    assert [s["protocol"]["ids"] for s in out["scans"]] == [[0], [], [1], [2]]
