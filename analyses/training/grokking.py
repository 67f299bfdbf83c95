"""Grokking on modular addition, with the local intrinsic dimension of the hidden states.

A demo where the answer is known. Setup of Power et al. 2022 ("Grokking: Generalization beyond
overfitting on small algorithmic datasets", arXiv 2201.02177) as used by Nanda et al. 2023
("Progress measures for grokking via mechanistic interpretability", arXiv 2301.05217):

* data: every pair (a, b) with 0 <= a, b < p is the token sequence [a, b, "="] (vocabulary of
  p + 1 tokens, "=" is token p) labelled c = (a + b) mod p. A seeded random fraction
  ``train_frac`` of the p^2 pairs is the training set, the rest is the test set.
* model: token plus learned position embeddings, ``n_layers`` blocks of causal multi-head
  attention and a ReLU MLP, no layer norm, x <- x + Attn(x); x <- x + W_out relu(W_in x + b_in) + b_out;
  logits = W_U h with h the residual stream at the last position ("=") after the final block.
* training: full-batch cross-entropy, AdamW (lr 1e-3, weight decay 1.0, betas (0.9, 0.98)).
  The training set is memorised early; the test accuracy jumps much later, once weight decay has
  turned the memorising solution into the general (Fourier) circuit. With the defaults (p = 59,
  half of the pairs) train accuracy passes 0.99 at step 100 and test accuracy passes 0.9 at step
  1200 (700 to 1200 for seeds 0 to 2); 2500 steps take about 3.5 min on one CPU thread.

At step 0, at steps 1, 2, 5, 10, 20, 50, ... below ``eval_every`` (so that a log-step axis shows
the memorisation phase), every ``eval_every`` steps and at ``steps`` the log records train/test loss and
accuracy, the parameter norm ||theta||_2, and the mean local TwoNN dimension
LID = mean_x LID(x) (:class:`analyses.geometry.lid.LocalTwoNN`, k = ``lid_k``) of h over a fixed sample of
``lid_points`` test pairs (``lid_test``) and of training pairs (``lid_train``). "Less is More:
Local Intrinsic Dimensions of Contextual Language Models" (arXiv 2506.01034) reports that mean
LID falls as a model generalises and that it signals grokking. Here mean LID starts near 2-3 (a
random map of a 2-parameter input set), peaks near 6-7 when the training set is memorised, and
falls to about 1 (points on the circles of the Fourier circuit, grouped by a + b) as the test
accuracy rises; the fall begins several hundred steps before test accuracy reaches 0.9.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from einops import rearrange
from plotly.subplots import make_subplots
from torch import nn

from analyses.geometry.lid import LocalTwoNN
from analyses.report.html import Section, new_folder, write_csv, write_report
from analyses.report.style import TEMPLATE
from probe.errors import ProbeError

__all__ = ["GrokConfig", "GrokLog", "Transformer", "split", "eval_steps", "grok", "save"]


@dataclass
class GrokConfig:
    p: int = 59
    train_frac: float = 0.5
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_layers: int = 1
    lr: float = 1e-3
    weight_decay: float = 1.0
    steps: int = 2500
    eval_every: int = 100
    lid_points: int = 1000
    lid_k: int = 32
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.p > 2, f"p must be > 2, got {self.p}"),
            (0 < self.train_frac < 1, f"train_frac must be in (0, 1), got {self.train_frac}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}"),
            (self.n_heads >= 1 and self.d_model % self.n_heads == 0,
             f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"),
            (self.d_mlp >= 1, f"d_mlp must be >= 1, got {self.d_mlp}"),
            (self.lid_k >= 3, f"lid_k must be >= 3, got {self.lid_k}"),
            (self.lid_points > self.lid_k, f"lid_points ({self.lid_points}) must exceed lid_k ({self.lid_k})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ProbeError(message)
        n_train = round(self.train_frac * self.p**2)
        if min(n_train, self.p**2 - n_train) <= self.lid_k:
            raise ProbeError(f"train ({n_train}) and test ({self.p ** 2 - n_train}) pairs must both exceed "
                             f"lid_k ({self.lid_k}); raise p or move train_frac away from 0 and 1")


@dataclass
class GrokLog:
    """Per-eval step, losses, accuracies, parameter norm and mean LID (train and test pairs)."""

    config: dict[str, Any]
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _first(self, key: str, level: float) -> int | None:
        return next((e["step"] for e in self.evals if e[key] >= level), None)

    @property
    def step_train_fit(self) -> int | None:
        """First evaluated step with train accuracy >= 0.99 (None if never)."""
        return self._first("train_acc", 0.99)

    @property
    def step_test_fit(self) -> int | None:
        """First evaluated step with test accuracy >= 0.9 (None if never)."""
        return self._first("test_acc", 0.9)

    def figure(self) -> go.Figure:
        """Accuracy (top) and mean LID (bottom) against step on a shared log-x axis."""
        rows = [e for e in self.evals if e["step"] > 0]  # a log axis has no step 0
        x = [e["step"] for e in rows]
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                            subplot_titles=("accuracy", "mean local intrinsic dimension of h"))
        for row, metric in ((1, "{}_acc"), (2, "lid_{}")):
            for name, color, dash in (("train", "#1f77b4", "dash"), ("test", "#d62728", "solid")):
                fig.add_trace(go.Scatter(x=x, y=[e[metric.format(name)] for e in rows], name=f"{name} pairs",
                                         mode="lines", legendgroup=name, showlegend=row == 1,
                                         line={"color": color, "dash": dash}), row=row, col=1)
        for step, label in ((self.step_train_fit, "train acc ≥ 0.99"), (self.step_test_fit, "test acc ≥ 0.9")):
            if step:
                fig.add_vline(x=step, line={"color": "#888888", "dash": "dot", "width": 1}, row="all", col=1)
                fig.add_annotation(x=math.log10(step), y=0.5, text=label, showarrow=False, xanchor="left",
                                   xshift=4, font={"size": 11, "color": "#555555"}, row=1, col=1)  # log10 units
        c = self.config
        fig.update_xaxes(type="log", title_text="step", row=2, col=1)
        fig.update_xaxes(type="log", row=1, col=1)
        fig.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=1)
        fig.update_yaxes(title_text=f"mean LID (k={c['lid_k']})", row=2, col=1)
        fig.update_layout(title=f"Grokking (a + b) mod {c['p']}, train fraction {c['train_frac']}",
                          height=650, width=900, template=TEMPLATE)
        return fig


class Block(nn.Module):
    """Causal multi-head attention and a ReLU MLP, both residual, no layer norm."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``last_only``: queries and MLP at the last position only (all the final block needs)."""
        q, k, v = rearrange(self.qkv(x), "b s (three h d) -> three b h s d", three=3, h=self.n_heads)
        if last_only:
            x, q = x[:, -1:], q[:, :, -1:]  # the last position attends to every position
        z = F.scaled_dot_product_attention(q, k, v, is_causal=not last_only)
        x = x + self.out(rearrange(z, "b h s d -> b s (h d)"))
        return x + self.mlp_out(F.relu(self.mlp_in(x)))


class Transformer(nn.Module):
    """Tokens (batch, 3) -> logits (batch, p) at the last position."""

    def __init__(self, cfg: GrokConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.p + 1, cfg.d_model)
        self.pos = nn.Parameter(torch.empty(3, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, cfg.d_mlp) for _ in range(cfg.n_layers))
        self.unembed = nn.Linear(cfg.d_model, cfg.p, bias=False)
        g = torch.Generator().manual_seed(cfg.seed)
        for name, w in self.named_parameters():  # N(0, 1/fan_in) weights, zero biases (Nanda et al.)
            if name.endswith("bias"):
                nn.init.zeros_(w)
            else:
                nn.init.normal_(w, std=w.shape[-1] ** -0.5, generator=g)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """h: the residual stream at the last position after the final block, (batch, d_model)."""
        x = self.embed(tokens) + self.pos
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=i == len(self.blocks) - 1)
        return x[:, -1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.hidden(tokens))


def split(cfg: GrokConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices i = a * p + b of the training and test pairs (sorted), a seeded partition of the p^2 pairs."""
    order = torch.randperm(cfg.p**2, generator=torch.Generator().manual_seed(cfg.seed))
    n_train = round(cfg.train_frac * cfg.p**2)
    return order[:n_train].sort().values, order[n_train:].sort().values


def tokens(p: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows [a, b, p] and labels (a + b) mod p of the pairs ``idx`` = a * p + b."""
    a, b = idx // p, idx % p
    return torch.stack([a, b, torch.full_like(a, p)], dim=1), (a + b) % p


def _sample(idx: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n]]


@torch.no_grad()
def evaluate(model: Transformer, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
             lid_idx: dict[str, torch.Tensor], cfg: GrokConfig) -> dict[str, float]:
    """Loss and accuracy on ``data`` splits; mean local TwoNN of h on the ``lid_idx`` rows of each."""
    model.eval()
    out: dict[str, float] = {}
    for name, (x, y) in data.items():
        h = model.hidden(x)
        logits = model.unembed(h)
        out[f"{name}_loss"] = F.cross_entropy(logits, y).item()
        out[f"{name}_acc"] = (logits.argmax(-1) == y).float().mean().item()
        out[f"lid_{name}"] = LocalTwoNN(n_neighbors=cfg.lid_k, max_points=None).fit(
            h[lid_idx[name]].double().numpy()).dimension_
    out["weight_norm"] = torch.sqrt(sum(w.pow(2).sum() for w in model.parameters())).item()
    return out


def eval_steps(cfg: GrokConfig) -> list[int]:
    """0, the 1-2-5 steps below ``eval_every``, the multiples of ``eval_every`` and ``steps``."""
    early = [m * 10**e for e in range(len(str(cfg.eval_every))) for m in (1, 2, 5)]
    regular = range(cfg.eval_every, cfg.steps + 1, cfg.eval_every)
    return sorted({0, cfg.steps, *regular, *(s for s in early if s < min(cfg.eval_every, cfg.steps))})


def grok(cfg: GrokConfig, progress: Callable[[int], None] | None = None) -> GrokLog:
    """Train the :class:`Transformer` of ``cfg`` from scratch; ``progress(1)`` after every step."""
    cfg.validate()
    train_idx, test_idx = split(cfg)
    data = {"train": tokens(cfg.p, train_idx), "test": tokens(cfg.p, test_idx)}
    lid_idx = {name: _sample(torch.arange(len(x)), cfg.lid_points, cfg.seed) for name, (x, _) in data.items()}
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    log = GrokLog(asdict(cfg))
    start = time.perf_counter()
    log.evals.append({"step": 0, **evaluate(model, data, lid_idx, cfg)})
    x, y = data["train"]
    due = set(eval_steps(cfg))
    for t in range(1, cfg.steps + 1):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if t in due:
            log.evals.append({"step": t, **evaluate(model, data, lid_idx, cfg)})
        if progress:
            progress(1)
    log.seconds = time.perf_counter() - start
    return log


def save(log: GrokLog, out_dir: str | os.PathLike[str]) -> Path:
    """Write the new folder ``out_dir``: ``results.json`` (the log), ``evals.csv`` and
    ``report.html`` with the figure, atomically (:func:`analyses.report.write_report`)."""
    out = new_folder(out_dir)
    c, first, last = log.config, log.evals[0], log.evals[-1]
    text = (f"(a + b) mod {c['p']}, {c['train_frac']:.0%} of the pairs for training, {c['steps']} full-batch steps "
            f"in {log.seconds:.0f} s. Train accuracy reached 0.99 at step {log.step_train_fit or '(not reached)'}, "
            f"test accuracy 0.9 at step {log.step_test_fit or '(not reached)'}. Mean LID of the test pairs: {first['lid_test']:.2f} at step 0, "
            f"{max(e['lid_test'] for e in log.evals):.2f} at its maximum, {last['lid_test']:.2f} at the end.")
    section = Section("Grokking and the local intrinsic dimension", text, [log.figure()], None)
    write_report(out, {"run": f"probe grok, seed {c['seed']}"}, [section], log.to_dict(),
                 extra=lambda folder: write_csv(folder / "evals.csv", log.evals))
    return out
