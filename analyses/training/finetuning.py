"""Parameter-efficient fine-tuning (peft LoRA or DoRA) with optional MacDrop, tracked as it trains.

Data protocol: the corpus is cut into windows (:func:`probe.data.token_windows`); the held-out
set is the first ``eval_seqs`` windows of ``eval_len`` tokens (the perplexity protocol of
:mod:`analyses.evaluate`), and training windows of ``seq_len`` tokens start after the tokens
they cover, so the two never overlap. Training is next-token cross-entropy, AdamW, a fixed
seed. At step 0, every ``eval_every`` steps and at the end the log records the held-out loss and
perplexity and, with ``track``: ``massive`` = the largest ``|h|`` of ``hook_resid_post`` at the
origin layer on the held-out windows; ``lid`` = the mean local TwoNN dimension (k = ``lid_k``)
of a fixed sample of held-out token vectors at the origin and the last layer (Less is More,
arXiv 2506.01034: mean LID falls as training helps); ``collapse`` = NC1 ``Tr(S_W S_B^+)/C`` and
the CDNV of the same two layers with next tokens as classes (Wu & Papyan 2024; classes seen at
least twice in the held-out windows, :class:`analyses.geometry.collapse.CollapseStats`).

Zero-shot accuracy on ``tasks`` (lm-eval, :func:`analyses.evaluate.tasks.zero_shot`) is measured before
the first step and after the last. LoRA's ``B`` and DoRA's magnitude start so that the adapted
model equals the base model, so "before" is the pre-trained model's accuracy.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from analyses.geometry.collapse import CollapseStats
from analyses.evaluate.likelihood import eval_windows, perplexity
from analyses.training.figures import finetune_section
from analyses.geometry.lid import LocalTwoNN
from analyses.training.macdrop import MacDrop, base_model, schedule
from analyses.report.html import new_folder, write_csv, write_report
from analyses.evaluate.tasks import OFFLINE_TASKS, zero_shot
from probe.arch import n_layers
from probe.capture import capture
from probe.data import load_corpus, token_windows, window_protocol
from probe.errors import ProbeError
from probe.reducers import Full

TRACKS = ("massive", "lid", "collapse")


@dataclass
class FinetuneConfig:
    method: str = "lora"  # lora | dora
    macdrop: str = "step"  # step | exp | constant | none
    p0: float = 0.8
    alpha: float = 0.01
    k: int = 5
    steps: int = 200
    lr: float = 2e-4
    rank: int = 8
    batch_size: int = 4
    seq_len: int = 128
    eval_every: int = 50
    eval_seqs: int = 8
    eval_len: int = 256
    corpus: str = "stdlib"
    prepend: str = "auto"  # window protocol (probe.data.window_protocol)
    track: tuple[str, ...] = ("massive", "lid")
    lid_points: int = 600
    lid_k: int = 32
    tasks: tuple[str, ...] = OFFLINE_TASKS
    task_limit: int | None = None
    seed: int = 0


@dataclass
class FinetuneLog:
    """Per-step training loss and p(t); per-eval held-out loss, perplexity and tracked metrics;
    zero-shot accuracy ``{"before": {task: {...}}, "after": {...}}``."""

    config: dict[str, Any]
    layer: int
    rows: list[int]
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    zero_shot: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _peft(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if cfg.method not in ("lora", "dora"):
        raise ProbeError(f"unknown method {cfg.method!r}; choose lora or dora")
    return get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=2 * cfg.rank, lora_dropout=0.0,
                                            target_modules="all-linear", use_dora=cfg.method == "dora"))


def train_windows(tokenizer: Any, cfg: FinetuneConfig) -> torch.Tensor:
    """Training windows, after the tokens of the held-out windows."""
    skip = math.ceil(cfg.eval_seqs * cfg.eval_len / cfg.seq_len)
    windows = token_windows(tokenizer, load_corpus(cfg.corpus), seq_len=cfg.seq_len, prepend=cfg.prepend)[skip:]
    if len(windows) < cfg.batch_size:
        raise ProbeError(f"the corpus has only {len(windows)} training windows after the held-out ones")
    return windows


train_rows = train_windows  # its name until the redesign, kept importable


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, layer: int, cfg: FinetuneConfig) -> dict[str, Any]:
    """Held-out loss and perplexity, and the tracked metrics of the module docstring."""
    model.eval()
    base = base_model(model)  # the adapters are injected in it: its forward is the adapted model's
    if not set(TRACKS) & set(cfg.track):
        ppl = perplexity(base, windows)
        return {"loss": ppl.nll, "ppl": ppl.ppl}
    last = n_layers(base) - 1
    points = [f"blocks.{layer}.hook_resid_post", f"blocks.{last}.hook_resid_post"]
    with capture(base, points, reduce=Full()) as cap:
        ppl = perplexity(base, windows)  # one forward pass gives the loss and feeds the captures
        full = cap.results
    out: dict[str, Any] = {"loss": ppl.nll, "ppl": ppl.ppl}
    if "massive" in cfg.track:
        out["massive"] = float(full[points[0]].abs().max())
    if "lid" in cfg.track:
        for name, point in (("lid_origin", points[0]), ("lid_last", points[1])):
            X = full[point][:, 1:].reshape(-1, full[point].shape[-1]).numpy()  # position 0, the sink, left out
            X = X[np.random.default_rng(cfg.seed).permutation(len(X))[: cfg.lid_points]]
            out[name] = LocalTwoNN(n_neighbors=cfg.lid_k, max_points=None).fit(X).dimension_
    if "collapse" in cfg.track:
        labels = windows[:, 1:].reshape(-1)
        for name, point in (("origin", points[0]), ("last", points[1])):
            X = full[point][:, :-1].reshape(-1, full[point].shape[-1]).double()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # S_W is singular when D > samples; pinv is documented
                metrics = CollapseStats(min_count=2).fit(X, labels).metrics()
            out[f"nc1_{name}"], out[f"cdnv_{name}"] = metrics["nc1"], metrics["cdnv"]
    return out


def finetune(model: nn.Module, tokenizer: Any, layer: int, neurons: list[int], cfg: FinetuneConfig,
             progress: Callable[[int], None] | None = None) -> tuple[nn.Module, FinetuneLog]:
    """Fine-tune an adapter on a copy of ``model`` (the caller's model is left untouched) with
    MacDrop on ``neurons`` of ``layer``; returns the peft model and the log."""
    torch.manual_seed(cfg.seed)
    peft_model = _peft(copy.deepcopy(model), cfg)
    drop = MacDrop(peft_model, layer, neurons[: cfg.k],
                   schedule(cfg.macdrop, cfg.p0 if cfg.macdrop != "none" else 0.0, cfg.steps, cfg.alpha), cfg.seed)
    data = train_windows(tokenizer, cfg)
    held_out = eval_windows(tokenizer, cfg.corpus, seq_len=cfg.eval_len, n_seqs=cfg.eval_seqs, prepend=cfg.prepend)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr)
    log = FinetuneLog({**asdict(cfg), "protocol": window_protocol(tokenizer, cfg.prepend).to_dict()}, layer, neurons[: cfg.k])
    if cfg.tasks:
        log.zero_shot["before"] = zero_shot(base_model(peft_model).eval(), tokenizer, list(cfg.tasks), limit=cfg.task_limit)
    log.evals.append({"step": 0, **evaluate(peft_model, held_out, layer, cfg)})
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))
    for t in range(cfg.steps):
        peft_model.train()
        idx = order[(torch.arange(cfg.batch_size) + t * cfg.batch_size) % len(data)]
        batch = data[idx]
        opt.zero_grad()
        with drop.step(t) as dropped:
            loss = peft_model(batch, labels=batch).loss
            loss.backward()
        opt.step()
        log.train.append({"step": t + 1, "loss": loss.item(), "p": drop.history[-1][1], "dropped": dropped})
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.steps:
            log.evals.append({"step": t + 1, **evaluate(peft_model, held_out, layer, cfg)})
        if progress:
            progress(1)
    peft_model.eval()
    if cfg.tasks:
        log.zero_shot["after"] = zero_shot(base_model(peft_model), tokenizer, list(cfg.tasks), limit=cfg.task_limit)
    return peft_model, log


def save(peft_model: nn.Module, log: FinetuneLog, out_dir: str | os.PathLike[str],
         header: Mapping[str, str] | None = None) -> Path:
    """Write the run into the new folder ``out_dir``: ``adapter/`` (peft, safetensors),
    ``results.json`` (the log), ``train.csv`` and ``eval.csv``, and ``report.html`` with the
    curves; all built in a temporary sibling folder and renamed into place
    (:func:`analyses.report.write_report`), so an interrupted run leaves nothing."""
    out = new_folder(out_dir)

    def files(folder: Path) -> None:
        peft_model.save_pretrained(folder / "adapter", safe_serialization=True)
        write_csv(folder / "train.csv", log.train)
        write_csv(folder / "eval.csv", log.evals)

    name = f"{log.config['method']}, MacDrop {log.config['macdrop']}"
    write_report(out, dict(header or {}), [finetune_section({name: log.to_dict()})], log.to_dict(), extra=files)
    return out
