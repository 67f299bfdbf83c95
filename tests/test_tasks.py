"""Offline zero-shot tasks: lm-eval's accuracy against a direct log-likelihood computation."""

from __future__ import annotations

import pytest
import torch

from analyses.evaluate import builtins_docs, pydoc_topics_docs, zero_shot
from probe.errors import ProbeError


def _direct_acc(model, tok, docs) -> float:
    right = 0
    for doc in docs:
        scores = []
        for choice in doc["choices"]:
            ctx = tok(doc["text"], add_special_tokens=False).input_ids
            full = tok(doc["text"] + choice, add_special_tokens=False).input_ids
            ids = torch.tensor([full])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            cont = range(len(ctx), len(full))
            scores.append(sum(float(logp[t - 1, full[t]]) for t in cont))
        right += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    return right / len(docs)


def test_tasks_are_real_text_with_four_choices():
    for docs in (pydoc_topics_docs(), builtins_docs()):
        assert len(docs) > 50
        assert all(len(d["choices"]) == 4 and 0 <= d["label"] < 4 for d in docs)
    labels = [d["label"] for d in pydoc_topics_docs()]
    assert len(set(labels)) == 4  # the answer position varies


def test_lm_eval_accuracy_equals_direct_loglikelihood(smol):
    res = zero_shot(smol.model, smol.tokenizer, ["probe_builtins"], limit=12)
    assert res["probe_builtins"]["n"] == 12 and res["probe_builtins"]["chance"] == 0.25
    direct = _direct_acc(smol.model, smol.tokenizer, builtins_docs()[:12])
    assert res["probe_builtins"]["acc"] == pytest.approx(direct)


def test_unknown_task_is_a_clear_error(smol):
    with pytest.raises(ProbeError, match="unknown lm-eval task"):
        zero_shot(smol.model, smol.tokenizer, ["no_such_task"], limit=2)
