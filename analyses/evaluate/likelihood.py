"""Re-evaluate a (possibly edited) model: perplexity on a corpus.

Perplexity protocol (:func:`perplexity`): windows come from :func:`probe.data.token_windows`
(default: the stdlib corpus, ``seq_len=256``, the model's own prefix (``prepend="auto"``: what
``tokenizer(text)`` puts in front, e.g. BOS, or nothing), no overlap, the first ``n_seqs``
windows). Within a row every position ``t >= 1`` is scored: the model predicts token ``t`` from
tokens ``< t``, so a prepended token is context only (without one, the first text token is). With ``N``
scored tokens in all,

    ppl = exp( -(1/N) * sum_rows sum_{t>=1} log softmax(logits[t-1])[token_t] ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from probe.arch import input_device
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


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = 8,
    corpus: str = "stdlib",
    progress: Callable[[int], None] | None = None,
) -> Perplexity:
    """Perplexity of ``model`` on ``windows`` ``(n, seq_len)`` by the protocol in the module docstring."""
    device = input_device(model)
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        total += float(sum_nll(model(batch).logits, batch))
        count += batch[:, 1:].numel()
        if progress:
            progress(batch.shape[0])
    return Perplexity.of(total, count, corpus, windows)
