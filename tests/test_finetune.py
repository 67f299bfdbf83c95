"""Fine-tuning with MacDrop: the saved adapter reloads and reproduces the logged held-out loss."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analyses.evaluate import eval_rows, perplexity
from analyses.finetune import FinetuneConfig, finetune, save

ROWS = [1229, 1487, 1010, 926, 1401]
CFG = FinetuneConfig(steps=3, eval_every=2, batch_size=2, seq_len=64, eval_seqs=2, lid_points=150, lid_k=12)


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
    assert all({"loss", "ppl", "massive", "lid_origin", "lid_last"} <= set(e) for e in log.evals)
    assert all(set(r["dropped"]) <= set(ROWS) for r in log.train)


def test_adapter_reloads_and_reproduces_the_logged_loss(run, smol):
    from peft import PeftModel

    out, log = run
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    saved = json.loads((out / "log.json").read_text())
    assert saved["evals"][-1]["loss"] == log.evals[-1]["loss"]
    model = PeftModel.from_pretrained(copy.deepcopy(smol.model), out / "adapter").eval()
    rows = eval_rows(smol.tokenizer, CFG.corpus, seq_len=CFG.eval_len, n_seqs=CFG.eval_seqs)
    assert perplexity(model, rows).nll == pytest.approx(log.evals[-1]["loss"], rel=1e-6)
    assert (out / "train.csv").read_text().startswith("step,loss,p,dropped")


def test_cli_rejects_bad_input(tmp_path):
    probe = str(Path(sys.executable).parent / "probe")
    r = subprocess.run([probe, "finetune", "--macdrop", "cosine", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "schedule" in r.stderr and not (tmp_path / "x").exists()
