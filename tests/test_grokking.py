"""Grokking on modular addition: config checks, the data split, the model, the log and its files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from analyses.training.grokking import GrokConfig, GrokLog, Transformer, eval_steps, grok, save, split, tokens
from probe.errors import ProbeError

TINY = GrokConfig(p=23, train_frac=0.4, d_model=32, n_heads=4, d_mlp=64, steps=6, eval_every=3,
                  lid_points=100, lid_k=10)


@pytest.fixture(scope="module")
def tiny_log() -> GrokLog:
    return grok(TINY)


@pytest.mark.parametrize("change, match", [
    ({"p": 2}, "p must be > 2"),
    ({"train_frac": 0.0}, "train_frac"),
    ({"train_frac": 1.0}, "train_frac"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"eval_every": 0}, "eval_every"),
    ({"d_model": 30}, "multiple of n_heads"),
    ({"lid_points": 10}, "must exceed lid_k"),
    ({"p": 5}, "must both exceed lid_k"),
])
def test_config_validation(change, match):
    with pytest.raises(ProbeError, match=match):
        grok(GrokConfig(**{**TINY.__dict__, **change}))


def test_split_is_a_seeded_partition():
    cfg = GrokConfig(p=31, train_frac=0.3)
    train, test = split(cfg)
    assert len(train) == round(0.3 * 31**2) and len(train) + len(test) == 31**2
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(31**2))
    again, _ = split(cfg)
    other, _ = split(GrokConfig(p=31, train_frac=0.3, seed=1))
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_tokens_and_labels():
    x, y = tokens(7, torch.tensor([0, 7 * 3 + 5, 48]))
    assert x.tolist() == [[0, 0, 7], [3, 5, 7], [6, 6, 7]]
    assert y.tolist() == [0, 1, 5]


@pytest.mark.parametrize("n_layers", [1, 2])
def test_forward_shapes_and_seeded_init(n_layers):
    cfg = GrokConfig(p=11, d_model=32, n_heads=4, d_mlp=64, n_layers=n_layers)
    model = Transformer(cfg)
    x, _ = tokens(11, torch.arange(121))
    assert model.hidden(x).shape == (121, 32)
    assert model(x).shape == (121, 11)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), Transformer(cfg).parameters()))


def test_last_only_block_matches_full_block():
    model = Transformer(GrokConfig(p=11, d_model=32, n_heads=4, d_mlp=64))
    x = torch.randn(5, 3, 32)
    full = model.blocks[0](x)[:, -1:]
    torch.testing.assert_close(model.blocks[0](x, last_only=True), full)


def test_eval_schedule():
    assert eval_steps(GrokConfig(steps=450, eval_every=100)) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 450]
    assert eval_steps(GrokConfig(steps=10, eval_every=1000)) == [0, 1, 2, 5, 10]


def test_short_run_log(tiny_log):
    assert [e["step"] for e in tiny_log.evals] == [0, 1, 2, 3, 6]
    keys = {"step", "train_loss", "train_acc", "test_loss", "test_acc", "lid_train", "lid_test", "weight_norm"}
    assert all(set(e) == keys for e in tiny_log.evals)
    for e in tiny_log.evals:
        assert all(math.isfinite(e[k]) for k in keys)
        assert e["lid_train"] > 0 and e["lid_test"] > 0
        assert 0 <= e["train_acc"] <= 1 and 0 <= e["test_acc"] <= 1
    assert tiny_log.evals[-1]["train_loss"] < tiny_log.evals[0]["train_loss"]
    assert tiny_log.config["p"] == 23 and tiny_log.seconds > 0
    json.dumps(tiny_log.to_dict())
    assert grok(TINY).evals == tiny_log.evals  # deterministic


def test_fit_steps_and_figure():
    log = GrokLog(TINY.__dict__, [
        {"step": s, "train_acc": tr, "test_acc": te, "lid_train": 5.0, "lid_test": 6.0}
        for s, tr, te in [(0, 0.0, 0.0), (10, 0.995, 0.1), (20, 1.0, 0.95), (30, 1.0, 0.99)]])
    assert (log.step_train_fit, log.step_test_fit) == (10, 20)
    assert GrokLog({}, log.evals[:2]).step_test_fit is None
    fig = log.figure()
    assert len(fig.data) == 4 and fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert list(fig.data[0].x) == [10, 20, 30]


def test_save_writes_and_refuses_existing(tiny_log, tmp_path):
    out = save(tiny_log, tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == ["evals.csv", "report.html", "results.json"]
    assert json.loads((out / "results.json").read_text())["evals"] == tiny_log.evals
    assert "Grokking and the local intrinsic dimension" in (out / "report.html").read_text()
    rows = list(csv.DictReader(open(out / "evals.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 6]
    with pytest.raises(ProbeError, match="exists"):
        save(tiny_log, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left behind


@pytest.mark.slow
def test_delayed_generalisation_and_lid_drop():
    """Default model, p = 59, half the pairs, 2000 steps (seed 0 memorises by step 100 and generalises
    at step 1200; mean LID peaks at about 6.5 while memorising and ends near 1)."""
    log = grok(GrokConfig(p=59, train_frac=0.5, steps=2000, eval_every=100, seed=0))
    train_fit, test_fit = log.step_train_fit, log.step_test_fit
    assert train_fit is not None and test_fit is not None
    assert test_fit >= 5 * train_fit
    for key in ("lid_train", "lid_test"):
        lid = [e[key] for e in log.evals]
        peak = log.evals[lid.index(max(lid))]["step"]
        assert peak < test_fit  # LID peaks while memorising ...
        assert lid[-1] < 0.5 * max(lid)  # ... and falls as the model generalises


def test_cli_runs_and_refuses_bad_input(tmp_path):
    import subprocess
    import sys

    probe = str(Path(sys.executable).parent / "probe")
    ok = subprocess.run([probe, "grok", "--p", "11", "--steps", "3", "--eval-every", "1", "--out", str(tmp_path / "g"), "-q"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert [e["step"] for e in json.loads((tmp_path / "g" / "results.json").read_text())["evals"]] == [0, 1, 2, 3]
    bad = subprocess.run([probe, "grok", "--train-frac", "1.5", "--out", str(tmp_path / "b")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "train_frac" in bad.stderr and not (tmp_path / "b").exists()
