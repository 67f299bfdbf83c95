"""The massive-activation scan against a brute-force pass with full tensors on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analyses.massive import scan
from probe import Full, capture
from probe.data import load_corpus, token_windows


@pytest.fixture(scope="module")
def result(smol):
    return scan(smol.model, smol.tokenizer, name="smollm2", n_seqs=4, seq_len=64)


@pytest.fixture(scope="module")
def brute(smol):
    rows = token_windows(smol.tokenizer, load_corpus(), seq_len=64, n_seqs=4)
    with capture(smol.model, ["blocks.*.hook_resid_post", "blocks.*.mlp.hook_post"], reduce=Full()) as cap:
        cap.run(rows)
    return rows, cap.results


def test_layer_statistics_equal_brute_force(result, brute, smol):
    rows, full = brute
    smol_tokens = smol.tokenizer.convert_ids_to_tokens(list(range(len(smol.tokenizer))))
    for layer in result.layers:
        h = full[f"blocks.{layer.layer}.hook_resid_post"]
        assert layer.max == pytest.approx(float(h.abs().max()), rel=1e-6)
        assert abs(layer.median / float(h.abs().median()) - 1) < 0.008
        vals = h.abs().flatten().topk(len(layer.top)).values
        assert [abs(e["value"]) for e in layer.top] == pytest.approx(vals.tolist(), rel=1e-6)
        for e in layer.top:  # the first token repeats across rows, so equal values tie: check coordinates by value
            assert h[e["batch"], e["position"], e["dim"]].item() == pytest.approx(e["value"], rel=1e-6)
            assert e["token"] == smol_tokens[int(rows[e["batch"], e["position"]])]


def test_origin_dims_tokens_and_neurons(result, brute, smol):
    rows, full = brute
    L = len(result.layers)

    def massive(l):
        h = full[f"blocks.{l}.hook_resid_post"]
        a = h.abs()
        return {tuple(c) for c in ((a > 100) & (a > 1000 * a.median())).nonzero().tolist()}

    origin = next(l for l in range(L) if massive(l) and (l + 1 == L or massive(l) & massive(l + 1)))
    assert result.origin_layer == origin == 11  # one origin layer on SmolLM2-135M
    assert result.massive_dims[0] == 507
    first = result.massive_tokens[0]
    assert (first["position"], first["windows"]) == (0, 4)  # the first token of every window, whatever it is
    assert sorted(first["tokens"]) == sorted(smol.tokenizer.convert_ids_to_tokens(rows[:, 0].tolist()))
    # the carrier: the strongest massive entry on that position; per dim, windows whose first token carries it
    h = full[f"blocks.{origin}.hook_resid_post"]
    big = (h.abs() > 100) & (h.abs() > 1000 * h.abs().median())
    c = result.carrier
    assert c["position"] == 0 and c["value"] == pytest.approx(float(h[:, 0][big[:, 0]].abs().max()), rel=1e-6)
    assert h[c["batch"], 0, c["dim"]].item() == pytest.approx(c["value"], rel=1e-6)
    for carried in result.carriers:
        d = carried["dim"]
        assert carried["first_token"] == int(big[:, 0, d].sum()) and carried["windows"] == int(big[:, :, d].any(1).sum())
    assert result.warnings == [f"massive dim {x['dim']} is carried by {x['windows']} of 4 windows only (first token: "
                               f"{x['first_token']}): the picture depends on the text, not on a fixed sink, and may "
                               "move with the window protocol (compare with --compare-prepend)"
                               for x in result.carriers if 2 * x["windows"] < 4]
    post = full[f"blocks.{origin}.mlp.hook_post"][c["batch"], 0]
    assert result.massive_neurons == post.abs().topk(5).indices.tolist()
    sw = result.super_weight
    assert sw["value"] == smol.model.model.layers[origin].mlp.down_proj.weight[sw["row"], sw["col"]].item()
    assert (sw["row"], sw["col"]) == (507, result.massive_neurons[0])
    parts = result.attribution["parts"]
    assert result.attribution["from_ffn"] and parts["ffn_out"] > 0.9 * result.attribution["value"]
    assert sum(parts.values()) == pytest.approx(result.attribution["value"])


def test_scan_json_has_the_documented_keys(smol):
    probe = str(Path(sys.executable).parent / "probe")
    r = subprocess.run([probe, "scan", "--model", "smollm2", "--n-seqs", "2", "--seq-len", "32", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("model", "origin_layer", "massive_neurons", "massive_dims", "massive_tokens", "super_weight", "layers"):
        assert key in out
    assert set(out["super_weight"]) >= {"layer", "row", "col", "value"}
    assert out["protocol"]["prepend"] == "auto" and out["protocol"]["ids"] == []  # SmolLM2's tokenizer adds nothing
    assert "tokenizer(text) puts nothing in front" in out["protocol"]["text"]
    assert out["carriers"][0]["dim"] == out["massive_dims"][0] and "warnings" in out
    assert set(out["layers"][0]) >= {"layer", "max", "median", "top"}
    assert set(out["layers"][0]["top"][0]) >= {"value", "position", "dim"}


def test_scan_bad_k_is_exit_2():
    probe = str(Path(sys.executable).parent / "probe")
    r = subprocess.run([probe, "scan", "--k", "0"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.startswith("error:")


@pytest.mark.parametrize("k", [0, 1537])
def test_scan_checks_k_against_the_ffn_width(smol, k):
    """The library refuses k outside 1..d_ff (SmolLM2: 1536) before any forward pass; the CLI relies on it."""
    from probe.errors import ProbeError

    with pytest.raises(ProbeError, match=rf"^k={k}: the number of massive neurons must be between 1 and the FFN width 1536$"):
        scan(smol.model, smol.tokenizer, k=k, n_seqs=1, seq_len=8)
