"""``probe ablate``: ablation plans from a scan, re-evaluated (perplexity, zero-shot), restored.
"""

from __future__ import annotations
import json
from typing import Optional
import typer
from analyses.cli.render import render_ablation
from analyses.cli.options import ModelArgs, model_command, JsonOpt, PrependOpt, progress_bar, split_list


@model_command("ablate", scaling=True)
def ablate_cmd(
    model: ModelArgs,
    mode: str = typer.Option("zero", "--mode", help="zero | retain | random | super | residual-zero | residual-mean."),
    k: int = typer.Option(5, "--k", help="Number of massive weights (rows) to edit."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Comma-separated k values, e.g. 1,2,3,5 (overrides --k)."),
    layer: str = typer.Option("auto", "--layer", help="auto (origin layer), precursor, or a layer index."),
    seeds: int = typer.Option(3, "--seeds", help="Random controls: number of seeds per k."),
    corpus: str = typer.Option("stdlib", "--corpus", help="Corpus for the scan and the perplexity."),
    eval_seqs: int = typer.Option(16, "--eval-seqs", help="Perplexity windows (of --eval-len tokens)."),
    eval_len: int = typer.Option(256, "--eval-len", help="Tokens per perplexity window."),
    evals: str = typer.Option("ppl", "--eval", help="ppl, tasks, or ppl,tasks."),
    tasks: str = typer.Option("probe_pydoc_topics,probe_builtins", "--tasks",
                              help="lm-eval tasks for --eval tasks (offline: probe_pydoc_topics, probe_builtins; "
                                   "arc_easy, arc_challenge, boolq, piqa, winogrande when their data is reachable)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Examples per task (default: all)."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Fan the plans out as Ray tasks: 'local' (a private Ray on this "
                                                           "machine), 'auto' or HOST:PORT / ray://HOST:PORT (a running cluster)."),
    workers: int = typer.Option(2, "--workers", help="Ray workers (each loads the model once)."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs Ray reserves per worker (give 1, or the node's "
                                                                          "GPU count with --device-map auto, on GPU nodes)."),
    per_request: int = typer.Option(1, "--per-request", help="With --remote: (plan, batch of 8 windows) jobs sent in "
                                                             "one request, as one forward pass (fewer, larger requests)."),
    prepend: str = PrependOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Ablate massive weights (or controls), re-evaluate, restore: one table row per plan."""
    from analyses.ablate.plans import make_plans
    from analyses.ablate.run import run_plans
    from analyses.evaluate.likelihood import eval_windows
    from analyses.massive.locate import scan

    from probe.errors import ProbeError

    task_list = split_list(tasks, "--tasks") if "tasks" in split_list(evals, "--eval", ("ppl", "tasks")) else None
    try:
        ks = [int(v) for v in split_list(sweep, "--sweep")] if sweep else [k]
    except ValueError:
        raise ProbeError(f"--sweep must be comma-separated integers, not {sweep!r}") from None
    if per_request < 1 or (per_request > 1 and not model.remote):
        raise ProbeError(f"--per-request {per_request}: give 1, or more with --remote (jobs batched into one request)")
    if (model.backend == "nnsight" or model.remote) and (ray or task_list):
        raise ProbeError(f"--{'ray' if ray else 'eval tasks'} needs the weights in this process (or on Ray workers); "
                         "with --backend nnsight or --remote the ablations run as interventions and evaluate --eval ppl only")
    loaded, backend, where = model.load_for()
    opts = dict(backend=backend, remote=where)
    with progress_bar(as_json, "scanning", 16) as advance:
        result = scan(loaded.model, loaded.tokenizer, name=loaded.name, corpus=corpus, progress=advance, prepend=prepend, **opts)
    plans = make_plans(loaded.model, None, result, mode, ks, layer=layer, seeds=seeds, **opts)
    ev = eval_windows(loaded.tokenizer, corpus, seq_len=eval_len, n_seqs=eval_seqs, prepend=prepend)
    with progress_bar(as_json, "evaluating", len(plans) + 1) as advance:
        if ray:
            from analyses.ablate.on_ray import run_plans_ray

            table = run_plans_ray(model.model, model.load_kwargs(), ev, plans, address=None if ray == "local" else ray, num_workers=workers,
                                  tasks=task_list, limit=limit, progress=advance, gpus_per_worker=gpus_per_worker)
        else:
            table = run_plans(loaded.model, ev, plans, progress=advance, tokenizer=loaded.tokenizer, tasks=task_list,
                              limit=limit, per_request=per_request, **opts)
    table = {"model": model.model, "mode": mode, "origin_layer": result.origin_layer, "protocol": result.protocol,
             "warnings": result.warnings, **table}
    if as_json:
        print(json.dumps(table))
        return
    render_ablation(table, model.model, corpus, result)
