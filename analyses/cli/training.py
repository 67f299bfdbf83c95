"""``probe finetune`` (MacDrop), ``probe compare`` (fine-tuning runs side by side), ``probe grok``.
"""

from __future__ import annotations
from typing import Optional
import typer
from analyses.cli.app import app, out, err
from analyses.cli.options import ModelArgs, model_command, PrependOpt, progress_bar, hushed, split_list


@model_command("finetune")
def finetune_cmd(
    model: ModelArgs,
    data: str = typer.Option("builtin", "--data", help="builtin (the stdlib corpus), stdlib-instruct (offline instructions), "
                                                        "alpaca (Hugging Face, when reachable), or a .txt/.jsonl file."),
    method: str = typer.Option("lora", "--method", help="lora or dora (peft)."),
    macdrop: str = typer.Option("step", "--macdrop", help="MacDrop schedule: step, exp, constant or none."),
    p0: float = typer.Option(0.8, "--p0", help="Initial drop probability of each massive row."),
    k: int = typer.Option(5, "--k", help="Number of massive weights (rows of W_up and W_gate at the origin layer)."),
    steps: int = typer.Option(200, "--steps", help="Optimiser steps."),
    eval_every: int = typer.Option(50, "--eval-every", help="Held-out evaluation (and tracking) every N steps."),
    track: str = typer.Option("massive,lid", "--track", help="Tracked at each evaluation: massive, lid, collapse (or empty)."),
    tasks: str = typer.Option("probe_pydoc_topics,probe_builtins", "--tasks",
                              help="lm-eval tasks scored before and after (empty: none)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples per task (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order, the adapter init and the masks."),
    prepend: str = PrependOpt,
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output folder (default: figures/finetune-<macdrop>-<date>)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (lm-eval's included)."),
) -> None:
    """Fine-tune a LoRA/DoRA adapter with MacDrop on the massive weights; save the adapter, the log and a report."""
    from datetime import date

    from analyses.training.finetuning import TRACKS, FinetuneConfig, finetune, save
    from analyses.massive.locate import scan
    from analyses.training.macdrop import schedule
    from analyses.report.html import new_folder
    from analyses.report.sections import header

    from probe.errors import ProbeError

    schedule(macdrop, p0, max(steps, 1))  # validate before loading anything
    tracked = tuple(split_list(track, "--track", TRACKS))
    out = new_folder(out_dir or f"figures/finetune-{macdrop}-{date.today()}")  # checked before the long run
    corpus = "stdlib" if data == "builtin" else data
    cfg = FinetuneConfig(method=method, macdrop=macdrop, p0=p0, k=k, steps=steps, eval_every=eval_every,
                         corpus=corpus, track=tracked, tasks=tuple(split_list(tasks, "--tasks")), task_limit=limit,
                         seed=seed, prepend=prepend)
    loaded = model.load()
    result = scan(loaded.model, loaded.tokenizer, name=loaded.name, corpus=corpus, k=k, prepend=prepend)
    if result.origin_layer is None:
        raise ProbeError("no massive activation found, so there are no massive weights to drop")
    with progress_bar(quiet, "fine-tuning", steps) as advance, hushed(quiet):
        peft_model, log = finetune(loaded.model, loaded.tokenizer, result.origin_layer, result.massive_neurons, cfg,
                                   progress=advance)
    tokens = f"{steps} steps x {cfg.batch_size} x {cfg.seq_len} training tokens; held-out {cfg.eval_seqs} x {cfg.eval_len}"
    save(peft_model, log, out, header(loaded, corpus, tokens, prepend=prepend))
    first, last = log.evals[0], log.evals[-1]
    err.print(f"held-out loss {first['loss']:.4f} -> {last['loss']:.4f} (ppl {first['ppl']:.2f} -> {last['ppl']:.2f})"
              + "".join(f"; {t} acc {log.zero_shot['before'][t]['acc']:.3f} -> {log.zero_shot['after'][t]['acc']:.3f}"
                        for t in cfg.tasks)
              + f"; adapter, log and report in {out}", soft_wrap=True)


@app.command("compare")
def compare_cmd(
    runs: list[str] = typer.Argument(..., help="Folders written by probe finetune."),
    out_dir: str = typer.Option(..., "--out", help="Output folder of the comparison report."),
) -> None:
    """One report comparing fine-tuning runs: curves overlaid, and a table of loss, perplexity,
    LID and zero-shot accuracy before and after."""
    from pathlib import Path

    from analyses.training.figures import finetune_section, load_run
    from analyses.report.html import write_report

    logs = {}
    for n, folder in enumerate(runs, 1):
        log = load_run(folder)
        name = f"{Path(folder).name} ({log['config']['method']}, MacDrop {log['config']['macdrop']})"
        logs[name if name not in logs else f"{name} #{n}"] = log
    section = finetune_section(logs)
    path = write_report(out_dir, {"runs": ", ".join(runs)}, [section], {"runs": logs, "summary": section.table})
    for row in section.table or []:
        out.print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), soft_wrap=True)
    err.print(f"wrote {path}")


@app.command("grok")
def grok_cmd(
    p: int = typer.Option(59, "--p", help="Modulus: the task is (a + b) mod p."),
    train_frac: float = typer.Option(0.5, "--train-frac", help="Fraction of the p^2 pairs used for training."),
    steps: int = typer.Option(2500, "--steps", help="Full-batch optimiser steps."),
    eval_every: int = typer.Option(100, "--eval-every", help="Evaluate accuracy and LID every N steps."),
    weight_decay: float = typer.Option(1.0, "--weight-decay", help="AdamW weight decay (grokking needs it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the initialisation."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output folder (default: figures/grokking-<date>)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Grokking demo: a small transformer learns (a + b) mod p from scratch; train/test accuracy
    and the mean LID of its hidden states, written as a report."""
    from datetime import date

    from analyses.training.grokking import GrokConfig, grok, save
    from analyses.report.html import new_folder

    cfg = GrokConfig(p=p, train_frac=train_frac, steps=steps, eval_every=eval_every, weight_decay=weight_decay, seed=seed)
    cfg.validate()
    out = new_folder(out_dir or f"figures/grokking-{date.today()}")  # checked before the long run
    with progress_bar(quiet, "training", steps) as advance:
        log = grok(cfg, progress=advance)
    save(log, out)
    first, last = log.evals[0], log.evals[-1]
    err.print(f"train acc 0.99 at step {log.step_train_fit}, test acc 0.9 at step {log.step_test_fit}; mean LID (test) "
              f"{first['lid_test']:.2f} -> max {max(e['lid_test'] for e in log.evals):.2f} -> {last['lid_test']:.2f}; "
              f"report in {out}", soft_wrap=True)
