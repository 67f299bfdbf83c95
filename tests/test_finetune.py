"""Fine-tuning with MacDrop: the saved adapter reloads and reproduces the logged held-out loss;
zero-shot "before" is the base model's accuracy and "after" the reloaded adapter's; tracked
collapse equals a direct computation; DoRA trains its magnitude; the run's report and the
comparison report are written."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analyses.geometry import CollapseStats
from analyses.evaluate import eval_windows, perplexity
from analyses.training.finetuning import FinetuneConfig, finetune, save
from analyses.evaluate import zero_shot

ROWS = [1229, 1487, 1010, 926, 1401]
CFG = FinetuneConfig(steps=3, eval_every=2, batch_size=2, seq_len=64, eval_seqs=2, lid_points=150, lid_k=12,
                     track=("massive", "lid", "collapse"), tasks=("probe_builtins",), task_limit=8)


@pytest.fixture(scope="module")
def run(smol, tmp_path_factory):
    before = [p.detach().clone() for p in smol.model.parameters()]
    peft_model, log = finetune(smol.model, smol.tokenizer, 11, ROWS, CFG)
    assert all(torch.equal(a, b) for a, b in zip(before, smol.model.parameters()))  # the caller's model untouched
    out = save(peft_model, log, tmp_path_factory.mktemp("ft") / "run")
    return out, log


def test_log_follows_the_schedule_and_evaluates(run):
    _, log = run
    assert [r["step"] for r in log.train] == [1, 2, 3]
    assert [r["p"] for r in log.train] == pytest.approx([0.8 * (1 - t / 3) for t in range(3)])
    assert [e["step"] for e in log.evals] == [0, 2, 3]
    assert all({"loss", "ppl", "massive", "lid_origin", "lid_last", "nc1_origin", "nc1_last", "cdnv_origin"} <= set(e)
               for e in log.evals)
    assert all(set(r["dropped"]) <= set(ROWS) for r in log.train)


def test_adapter_reloads_and_reproduces_the_logged_loss(run, smol):
    from peft import PeftModel

    out, log = run
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["evals"][-1]["loss"] == log.evals[-1]["loss"]
    model = PeftModel.from_pretrained(copy.deepcopy(smol.model), out / "adapter").eval()
    rows = eval_windows(smol.tokenizer, CFG.corpus, seq_len=CFG.eval_len, n_seqs=CFG.eval_seqs)
    assert perplexity(model, rows).nll == pytest.approx(log.evals[-1]["loss"], rel=1e-6)
    assert (out / "train.csv").read_text().startswith("step,loss,p,dropped")
    after = zero_shot(model.get_base_model(), smol.tokenizer, list(CFG.tasks), limit=CFG.task_limit)
    assert after == log.zero_shot["after"]


def test_zero_shot_before_is_the_base_model(run, smol):
    _, log = run
    assert log.zero_shot["before"] == zero_shot(smol.model, smol.tokenizer, list(CFG.tasks), limit=CFG.task_limit)
    assert log.zero_shot["before"]["probe_builtins"]["n"] == CFG.task_limit


def test_tracked_collapse_equals_a_direct_computation(run, smol):
    _, log = run
    rows = eval_windows(smol.tokenizer, CFG.corpus, seq_len=CFG.eval_len, n_seqs=CFG.eval_seqs)
    with torch.no_grad():
        hidden = smol.model(rows, output_hidden_states=True).hidden_states[12]  # after block 11
    X = hidden[:, :-1].reshape(-1, hidden.shape[-1]).double()
    metrics = CollapseStats(min_count=2).fit(X, rows[:, 1:].reshape(-1)).metrics()
    assert log.evals[0]["nc1_origin"] == pytest.approx(metrics["nc1"], rel=1e-6)
    assert log.evals[0]["cdnv_origin"] == pytest.approx(metrics["cdnv"], rel=1e-6)


def test_report_has_the_curves_and_compare_overlays_runs(run, tmp_path):
    out, log = run
    page = (out / "report.html").read_text()
    assert "Fine-tuning with MacDrop" in page and "held-out loss" in page and "mean LID, origin layer" in page
    probe = str(Path(sys.executable).parent / "probe")
    r = subprocess.run([probe, "compare", str(out), str(out), "--out", str(tmp_path / "cmp")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]
    assert len(summary) == 2 and summary[0]["loss after"] == pytest.approx(log.evals[-1]["loss"])
    assert summary[0]["probe_builtins acc after"] == log.zero_shot["after"]["probe_builtins"]["acc"]
    bad = subprocess.run([probe, "compare", str(tmp_path), "--out", str(tmp_path / "cmp2")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a finished fine-tuning run" in bad.stderr


def test_dora_trains_magnitudes_and_leaves_the_base_weights(smol):
    cfg = FinetuneConfig(method="dora", p0=1.0, macdrop="constant", steps=2, eval_every=2, batch_size=1, seq_len=16,
                         eval_seqs=1, eval_len=32, track=(), tasks=())
    before = {n: p.detach().clone() for n, p in smol.model.named_parameters()}
    peft_model, log = finetune(smol.model, smol.tokenizer, 11, ROWS, cfg)
    assert all(r["dropped"] == ROWS for r in log.train)  # p = 1: every massive row dropped at every step
    up = peft_model.get_base_model().model.layers[11].mlp.up_proj
    magnitude = up.lora_magnitude_vector["default"].weight
    assert magnitude.requires_grad and not torch.equal(magnitude, before["model.layers.11.mlp.up_proj.weight"].norm(dim=1))
    for name, p in peft_model.get_base_model().named_parameters():
        plain = name.replace(".base_layer", "")
        if plain in before:  # frozen pre-trained weights, restored after every MacDrop step
            assert torch.equal(p, before[plain]), name
    assert all(math.isfinite(e["loss"]) for e in log.evals) and all(math.isfinite(r["loss"]) for r in log.train)


def test_cli_rejects_bad_input(tmp_path):
    probe = str(Path(sys.executable).parent / "probe")
    r = subprocess.run([probe, "finetune", "--macdrop", "cosine", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "schedule" in r.stderr and not (tmp_path / "x").exists()
    r = subprocess.run([probe, "finetune", "--track", "lid,entropy", "--out", str(tmp_path / "y")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--track" in r.stderr and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_cli_quiet_prints_only_the_summary(tmp_path):
    """``-q``: no progress bars, lm-eval's tqdm bars included; stderr is the one summary line."""
    probe = str(Path(sys.executable).parent / "probe")
    r = subprocess.run([probe, "finetune", "--steps", "2", "--eval-every", "2", "--tasks", "probe_builtins",
                        "--limit", "4", "--track", "massive", "-q", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("held-out loss"), r.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["zero_shot"]["after"]["probe_builtins"]["n"] == 4
