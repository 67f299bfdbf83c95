"""Re-evaluate a (possibly edited) model: perplexity on a corpus.

Perplexity protocol (:func:`perplexity`): windows come from :func:`probe.data.token_windows`
(default: the stdlib corpus, ``seq_len=256``, the model's own prefix (``prepend="auto"``: what
``tokenizer(text)`` puts in front, e.g. BOS, or nothing), no overlap, the first ``n_seqs``
windows). Within a row every position ``t >= 1`` is scored: the model predicts token ``t`` from
tokens ``< t``, so a prepended token is context only (without one, the first text token is). With ``N``
scored tokens in all,

    ppl = exp( -(1/N) * sum_rows sum_{t>=1} log softmax(logits[t-1])[token_t] ).

Memory (:func:`token_nll`): the logits are never materialised for a whole batch. The model runs
once to its final hidden states (:func:`probe.arch.final_hidden`), then the LM head
(:func:`probe.arch.logits_from_hidden`) and the cross-entropy run on ``chunk`` scored tokens at a
time, so the peak is the model plus ``O(chunk x vocab)`` instead of ``~10 bytes x tokens x vocab``.

Exactness against the materialised path (``sum_nll(model(batch).logits, batch)``, kept as
``perplexity(..., chunk=None)``): each token's logits row and negative log-likelihood are the
same float32 numbers bit for bit (checked on every family in ``tests/families.py`` and on SmolLM2;
a matrix product of a very small chunk, a few rows, may take another kernel and differ in the last
bit, so chunks are balanced, ``ceil(n / chunk)`` near-equal parts). A batch's total is then summed
the way ``F.cross_entropy(reduction="sum")`` sums it (the cascade sum of ``F.nll_loss`` over the
batch's tokens, which does not depend on the vocabulary: :func:`sum_token_nll`), so per-batch
totals and the perplexity are bit-identical too; across batches, totals add in Python floats
(float64) as before.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from probe.arch import final_hidden, input_device, logits_from_hidden
from probe.data import load_corpus, token_windows


@dataclass
class Perplexity:
    """Perplexity ``ppl`` with its mean negative log-likelihood ``nll`` over ``n_tokens`` scored tokens."""

    ppl: float
    nll: float
    n_tokens: int
    corpus: str
    seq_len: int
    n_seqs: int

    @classmethod
    def of(cls, total: float, count: int, corpus: str, windows: torch.Tensor) -> "Perplexity":
        """From the summed negative log-likelihood ``total`` of ``count`` scored tokens of ``windows``."""
        mean = total / count
        return cls(math.exp(mean), mean, count, corpus, windows.shape[1], windows.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_windows(tokenizer: Any, corpus: str = "stdlib", seq_len: int = 256, n_seqs: int = 16,
                 prepend: str | int | None = "auto") -> torch.Tensor:
    """The evaluation windows of the protocol in the module docstring (``prepend``: :func:`probe.data.window_protocol`)."""
    return token_windows(tokenizer, load_corpus(corpus), seq_len=seq_len, n_seqs=n_seqs, prepend=prepend)


eval_rows = eval_windows  # its name until the redesign, kept importable


def sum_nll(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``-sum_rows sum_{t>=1} log softmax(logits[t-1])[token_t]`` for one batch (a 0-d tensor;
    computed in float32). Also runs inside nnsight traces (:mod:`analyses.ablate.traced`)."""
    logits = logits[:, :-1].float()
    targets = batch[:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")


CHUNK = 1024  # scored tokens per LM-head chunk: 1024 x 262144 float32 logits are 1 GiB


def token_nll(model: nn.Module, batch: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """``-log softmax(logits[t-1])[token_t]`` for every row and ``t >= 1`` of ``batch``, float32
    ``(rows, seq_len - 1)``: the final hidden states once, then the LM head and the cross-entropy on
    balanced chunks of at most ``chunk`` tokens (module docstring: memory and exactness)."""
    hidden = final_hidden(model, batch)
    scored = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = batch[:, 1:].reshape(-1)
    parts = max(1, math.ceil(scored.shape[0] / chunk))
    nll = []
    for h, t in zip(torch.tensor_split(scored, parts), torch.tensor_split(targets, parts)):
        logits = logits_from_hidden(model, h).float()
        nll.append(F.cross_entropy(logits, t.to(logits.device), reduction="none"))
    return torch.cat(nll).view(batch.shape[0], batch.shape[1] - 1)


def sum_token_nll(nll: torch.Tensor) -> torch.Tensor:
    """The sum of per-token values ``nll`` (a 0-d tensor) in the order ``F.cross_entropy(...,
    reduction="sum")`` adds them over a flattened batch: ``F.nll_loss`` on a one-class input
    (its cascade sum depends on the number of tokens only), so it equals :func:`sum_nll` on the
    same tokens bit for bit."""
    flat = nll.reshape(-1, 1)
    return F.nll_loss(-flat, torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device), reduction="sum")


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = 8,
    corpus: str = "stdlib",
    progress: Callable[[int], None] | None = None,
    chunk: int | None = CHUNK,
) -> Perplexity:
    """Perplexity of ``model`` on ``windows`` ``(n, seq_len)`` by the protocol in the module docstring;
    the LM head runs on ``chunk`` tokens at a time (:func:`token_nll`), ``None``: on whole batches
    of materialised logits (``model(batch).logits``, the old path; same result, ~10 bytes x tokens x
    vocab more memory)."""
    device = input_device(model)
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        if chunk is None:
            total += float(sum_nll(model(batch).logits, batch))
        else:
            total += float(sum_token_nll(token_nll(model, batch, chunk)))
        count += batch[:, 1:].numel()
        if progress:
            progress(batch.shape[0])
    return Perplexity.of(total, count, corpus, windows)
