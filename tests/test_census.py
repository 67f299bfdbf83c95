"""The super-weight census (issue 19) against the same edits done by hand, on tiny random models of
every family and on the embedded SmolLM2 through the CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from analyses.census import Census, WindowLosses, Zeroed, bootstrap, census, is_causal, matched_controls, published_for
from analyses.evaluate.likelihood import eval_windows, token_nll
from probe.arch import weight_view
from probe.edit import edit_residual
from probe.errors import ProbeError

from families import FAMILIES, VOCAB, one_thread  # noqa: F401 (autouse fixture)

PROBE = str(Path(sys.executable).parent / "probe")
SIZES = dict(candidates=2, controls=4, n_seqs=4, seq_len=16, eval_seqs=4, eval_len=12, rows_per_forward=8)


class CharTokenizer:
    """Characters to ids ``3..VOCAB-6`` (no special tokens): enough for the corpus protocol."""

    class _Ids:
        def __init__(self, ids: list[int]) -> None:
            self.input_ids = ids

    def __call__(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None) -> "_Ids":
        return self._Ids([3 + ord(ch) % (VOCAB - 8) for ch in text])

    def convert_ids_to_tokens(self, i: int) -> str:
        return str(int(i))


def tiny(family: str = "llama", layers: int = 2) -> torch.nn.Module:
    fam = next(f for f in FAMILIES if f.model_type == family)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(fam.config(layers)).eval()


@pytest.fixture(scope="module")
def llama_census() -> tuple[torch.nn.Module, Census]:
    model = tiny()
    return model, census(model, CharTokenizer(), name="tiny-llama", layers=[1], **SIZES)


def _sums(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return token_nll(model, windows).double().sum(-1)


def test_delta_equals_the_weight_zeroed_by_hand(llama_census):
    model, result = llama_census
    windows = eval_windows(CharTokenizer(), "stdlib", seq_len=SIZES["eval_len"], n_seqs=SIZES["eval_seqs"])
    weight = model.model.layers[1].mlp.down_proj.weight
    before = weight.detach().clone()
    base = _sums(model, windows)
    scored = windows.shape[0] * (windows.shape[1] - 1)
    checks = [(r["row"], r["col"], r["delta_loss"]) for r in result.rows]
    checks += [(c["row"], c["col"], c["delta_loss"]) for c in result.controls[:2]]
    for row, col, delta in checks:
        saved = weight.data[row, col].clone()
        weight.data[row, col] = 0.0
        edited = _sums(model, windows)
        weight.data[row, col] = saved
        assert delta == pytest.approx(float((edited - base).sum()) / scored, abs=1e-12)
    assert torch.equal(weight, before)


def test_restored_edit_holds_the_activation_at_the_carrier(llama_census):
    model, result = llama_census
    windows = eval_windows(CharTokenizer(), "stdlib", seq_len=SIZES["eval_len"], n_seqs=SIZES["eval_seqs"])
    row, held = result.rows[0], 0
    kept: list[torch.Tensor] = []
    hook = model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, out: kept.append(out.detach().clone()))
    base = _sums(model, windows)
    hook.remove()
    original = kept[0][:, [held]][:, :, [row["row"]]]
    weight = model.model.layers[1].mlp.down_proj.weight
    saved = weight.data[row["row"], row["col"]].clone()
    weight.data[row["row"], row["col"]] = 0.0
    with edit_residual(model, "blocks.1.mlp.hook_out", [held], [row["row"]], original):
        by_hand = _sums(model, windows)
    weight.data[row["row"], row["col"]] = saved
    losses = WindowLosses(model, windows, rows=8)
    losses.baseline([1])
    (found,) = losses.edited([Zeroed(1, row["row"], row["col"], row["value"], (held,))])
    assert torch.equal(found, by_hand)


def test_batched_edits_equal_one_at_a_time():
    model = tiny("llama", 3)
    windows = torch.randint(3, VOCAB - 8, (4, 12), generator=torch.Generator().manual_seed(3))
    matrix = weight_view(model, 2, "W_down").matrix
    edits = [Zeroed(2, d, n, float(matrix[d, n]), held) for d, n, held in [(1, 2, ()), (5, 9, (0,)), (7, 40, ())]]
    found = {}
    for rows, share, exact in [(12, True, True), (4, True, True), (4, False, True), (12, True, False)]:
        losses = WindowLosses(model, windows, rows=rows, share_prefix=share, exact=exact)
        base = losses.baseline([2])
        found[(rows, share, exact)] = losses.edited(edits) - base
    assert torch.equal(found[(12, True, True)], found[(4, True, True)])  # three copies per forward vs one
    assert torch.equal(found[(4, True, True)], found[(4, False, True)])  # shared prefix vs full forwards
    torch.testing.assert_close(found[(12, True, False)], found[(12, True, True)], rtol=0, atol=1e-4)  # subtracted


def test_controls_come_from_the_band_and_are_seeded():
    matrix = torch.randn(64, 200, generator=torch.Generator().manual_seed(0))
    flat = matrix.abs().reshape(-1)
    top = int(flat.argmax())
    cells = [(top // 200, top % 200), (3, 4)]
    bands = matched_controls(matrix, cells, count=16, seed=7, layer=2)
    ranks = flat.argsort().argsort()
    for (d, n), band in bands.items():
        assert len(band.controls) == 16 and not {(r, c) for r, c, _ in band.controls} & set(cells)
        for r, c, v in band.controls:
            q = float(ranks[r * 200 + c]) / (flat.numel() - 1)
            assert band.lo - 1e-12 <= q <= band.hi + 1e-12 and v == float(matrix[r, c])
        assert band.hi - band.lo == pytest.approx(2 * 0.01, abs=2 / flat.numel())
    assert bands[cells[0]].hi == 1.0 and bands[cells[0]].q == 1.0  # the largest weight: the top 2%
    again = matched_controls(matrix, cells, count=16, seed=7, layer=2)
    other = matched_controls(matrix, cells, count=16, seed=8, layer=2)
    assert all(again[c].controls == bands[c].controls for c in cells)
    assert any(other[c].controls != bands[c].controls for c in cells)


def test_causal_rule_on_constructed_cases():
    effect = np.array([0.9, 1.1, 1.0, 1.2, 0.8, 1.0])
    lo, hi = bootstrap(effect, seed=0)
    assert 0 < lo < 1.0 < hi and bootstrap(effect, seed=0) == (lo, hi)
    assert is_causal(1.0, lo, hi, controls_p99=0.01)
    assert not is_causal(1.0, lo, hi, controls_p99=1.5)  # no larger than the controls
    noise = np.array([0.5, -0.6, 0.4, -0.5, 0.6, -0.4])
    nlo, nhi = bootstrap(noise, seed=0)
    assert nlo < 0 < nhi and not is_causal(float(noise.mean()), nlo, nhi, controls_p99=-1.0)  # interval holds 0


def test_published_coordinates_need_name_and_shape():
    config = transformers.LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336)
    label, entry = published_for("meta-llama/Meta-Llama-3-8B", config)
    assert label == "Llama-3-8B" and (1, 4062, 2427) in entry["weights"]
    assert published_for("meta-llama/Meta-Llama-3-8B", transformers.LlamaConfig(num_hidden_layers=2)) is None
    assert published_for("HuggingFaceTB/SmolLM2-135M-Instruct", config) is None


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_census_runs_on_every_family(family, tmp_path):
    model = tiny(family.model_type)
    result = census(model, CharTokenizer(), name=str(family), layers=[0, 1], **SIZES)
    assert {r["layer"] for r in result.rows} == {0, 1}
    assert len(result.controls) == 4 * len(result.rows)
    sw = result.scan["super_weight"]
    if sw is not None:
        assert any((r["layer"], r["row"], r["col"], r["super_weight"]) == (sw["layer"], sw["row"], sw["col"], True)
                   for r in result.rows)
    for r in result.rows:
        assert r["ci_low"] <= r["ci_high"] and r["causal"] == is_causal(r["delta_loss"], r["ci_low"], r["ci_high"],
                                                                        r["controls_p99"])
    json.dumps(result.to_dict())
    with open(result.write_csv(tmp_path / "c.csv")) as f:
        assert len(list(csv.DictReader(f))) == len(result.rows)
    assert result.figure().data


def test_bad_arguments_are_probe_errors():
    model = tiny()
    with pytest.raises(ProbeError, match="out of range"):
        census(model, CharTokenizer(), layers=[5], **SIZES)
    with pytest.raises(ProbeError, match="at least 1"):
        census(model, CharTokenizer(), layers=[0], **{**SIZES, "controls": 0})
    with pytest.raises(ProbeError, match="unknown backend 'ray'"):
        census(model, CharTokenizer(), backend="ray", **SIZES)


@pytest.mark.filterwarnings("ignore:Module .* has a submodule named 'output'")  # BERT/RoBERTa under nnsight
@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_nnsight_census_equals_the_torch_census(family):
    """Edits as interventions in nnsight traces (no shared prefix, the exact recompute in the trace)
    give the torch census's table bit for bit; the subtracting edits too."""
    model = tiny(family.model_type)
    for exact in (True, False) if family.model_type == "llama" else (True,):
        torch_run = census(model, CharTokenizer(), name="t", layers=[0, 1], exact=exact, **SIZES)
        traced = census(model, CharTokenizer(), name="t", layers=[0, 1], exact=exact, backend="nnsight", **SIZES)
        assert traced.rows == torch_run.rows and traced.controls == torch_run.controls
        assert any(abs(r["delta_loss"]) > 0 for r in traced.rows)


def test_cli_json_on_smollm2(tmp_path):
    r = subprocess.run([PROBE, "census", "--model", "smollm2", "--layers", "11", "--candidates", "1", "--controls", "2",
                        "--n-seqs", "2", "--seq-len", "32", "--eval-seqs", "2", "--eval-len", "16", "--json",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    sw = found["scan"]["super_weight"]
    row = next(x for x in found["rows"] if x["super_weight"])
    assert (row["layer"], row["row"], row["col"]) == (sw["layer"], sw["row"], sw["col"])
    assert row["delta_loss"] > 0.5 and row["causal"]  # SmolLM2's super weight: W_down[507, 1229] of layer 11
    assert {p.name for p in tmp_path.iterdir()} == {"census.json", "census.csv", "census.html"}


@pytest.mark.parametrize("args", [["--layers", "99"], ["--controls", "0"], ["--candidates", "0"],
                                  ["--ray", "local", "--remote", "local"]])
def test_cli_errors_exit_2(args):
    r = subprocess.run([PROBE, "census", "--model", "smollm2", "--n-seqs", "1", "--seq-len", "8", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr


def test_a_given_scan_gives_the_same_census(llama_census):
    from analyses.massive import scan

    model, result = llama_census
    found = scan(model, CharTokenizer(), name="tiny-llama", n_seqs=SIZES["n_seqs"], seq_len=SIZES["seq_len"])
    again = census(model, CharTokenizer(), name="tiny-llama", layers=[1], scan=found, **SIZES)
    assert again.rows == result.rows and again.controls == result.controls
