"""The ``probe`` command line. Errors on bad input print one red line and exit with code 2."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Look inside causal language models: hook points, massive activations, ablations, geometry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

ModelOpt = typer.Option("smollm2", "--model", "-m", help="'smollm2' (embedded), a local HF folder, a .gguf file or a hub id.")
DtypeOpt = typer.Option(None, "--dtype", help="float32 (default), bfloat16 or float16.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps ...")
DownloadOpt = typer.Option(False, "--download", help="Allow fetching a hub id that is not in the local HF cache.")
RemoteCodeOpt = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the checkpoint (off by default).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")
CorpusOpt = typer.Option("stdlib", "--corpus", help="'stdlib', a .txt/.jsonl file, or hf:NAME[:CONFIG][:SPLIT].")
SeqLenOpt = typer.Option(128, "--seq-len", help="Tokens per window, the prepended token (if any) included.")
PrependOpt = typer.Option("auto", "--prepend", help="Window protocol, the token(s) in front of every window: auto (what "
                                                    "the model's tokenizer puts in front of a plain call: BOS, or nothing), "
                                                    "none, bos, eos, a token id or a token's text. Recorded in every output.")
DeviceMapOpt = typer.Option(None, "--device-map", help="auto, balanced or sequential: accelerate spreads the layers over "
                                                       "the GPUs (then CPU RAM); replaces --device.")
BackendOpt = typer.Option("torch", "--backend", help="torch (hooks, weight edits) or nnsight (reductions and edits inside "
                                                     "the trace).")
RemoteOpt = typer.Option(None, "--remote", help="ndif: run on NDIF (the hub id's weights stay there; NDIF_API_KEY); "
                                                "local: nnsight's offline simulation of it. Implies --backend nnsight.")


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """List the models loadable here without a download."""
    from probe.models import available_models, cache_dir

    names = available_models()
    if as_json:
        out.print_json(json.dumps({"models": names, "cache": str(cache_dir())}))
        return
    table = Table("model", title="Loadable offline")
    for name in names:
        table.add_row(name)
    out.print(table)
    out.print(f"Also accepted: a local HF folder, a .gguf file, or a hub id with --download. Cache: {cache_dir()}")


@app.command()
def info(
    model: str = ModelOpt,
    dtype: Optional[str] = DtypeOpt,
    device: str = DeviceOpt,
    download: bool = DownloadOpt,
    trust_remote_code: bool = RemoteCodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Architecture summary of a model and the names of its hook points."""
    from analyses.summary import summarize

    loaded = _load(model, dtype, device, download, trust_remote_code)
    summary = summarize(loaded)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table("property", "value", title=f"probe info: {model}", show_header=False)
    for key, value in summary.items():
        if key != "hook_points":
            table.add_row(key, str(value))
    out.print(table)
    out.print("[bold]Hook points[/bold] (l = 0.." + str(summary["n_layers"] - 1) + "):")
    for name in summary["hook_points"]:
        out.print("  " + name)


@app.command("scan")
def scan_cmd(
    model: str = ModelOpt,
    corpus: str = CorpusOpt,
    n_seqs: int = typer.Option(16, "--n-seqs", help="Number of windows scanned."),
    seq_len: int = SeqLenOpt,
    k: int = typer.Option(5, "--k", help="Number of massive neurons / weights."),
    ratio: float = typer.Option(1000.0, "--ratio", help="Massive if |v| > ratio x the layer median ..."),
    abs_threshold: float = typer.Option(100.0, "--abs", help="... and |v| > this."),
    prepend: str = PrependOpt,
    compare: bool = typer.Option(False, "--compare-prepend", help="Scan once per window protocol (--prepend, then the "
                                                                   "other distinct ones of none, bos, eos) and show origin "
                                                                   "layers and carriers side by side."),
    backend: str = BackendOpt,
    remote: Optional[str] = RemoteOpt,
    dtype: Optional[str] = DtypeOpt,
    device: str = DeviceOpt,
    device_map: Optional[str] = DeviceMapOpt,
    download: bool = DownloadOpt,
    trust_remote_code: bool = RemoteCodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Find massive activations, their origin layer, the massive weights and the super weight."""
    from analyses.massive import scan

    from probe.arch import d_ff
    from probe.backends import hf_module
    from probe.errors import ProbeError

    if k < 1:
        raise ProbeError(f"--k must be at least 1, got {k}")
    loaded, backend, where = _load_for(model, backend, remote, dtype, device, download, trust_remote_code, device_map)
    if k > d_ff(hf_module(loaded.model)):
        raise ProbeError(f"--k {k} is larger than the FFN width {d_ff(hf_module(loaded.model))}")
    opts = dict(name=model, corpus=corpus, n_seqs=n_seqs, seq_len=seq_len, k=k, ratio=ratio,
                abs_threshold=abs_threshold, backend=backend, remote=where)
    if compare:
        from analyses.prepend import compare_prepend, others

        chosen = [prepend, *others(loaded.tokenizer, prepend)]
        with _progress(as_json, "scanning", n_seqs * len(chosen)) as advance:
            comparison = compare_prepend(loaded.model, loaded.tokenizer, chosen, progress=advance, **opts)
        if as_json:
            print(json.dumps(comparison.to_dict()))
            return
        _render_comparison(comparison)
        return
    with _progress(as_json, "scanning", n_seqs) as advance:
        result = scan(loaded.model, loaded.tokenizer, prepend=prepend, progress=advance, **opts)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    from analyses.massive import render_scan

    render_scan(result, out)


def _render_comparison(comparison: Any) -> None:
    table = Table("in front of each window", "origin", "massive dims", "carrier (pos, dim, value, token)",
                  "first token carries top dim", "top neuron", "super weight (layer, row, col)", "max |h|",
                  title=f"Massive activations of {comparison.model} under each window protocol")
    for r in comparison.rows():
        c = r["carrier"]
        table.add_row(r["label"], str(r["origin_layer"]), str(r["massive_dims"][:4]),
                      "-" if c is None else f"{c['position']}, {c['dim']}, {c['value']:.1f}, {c['token']!r}",
                      "-" if r["first_token_windows"] is None else f"{r['first_token_windows']} of {r['n_windows']} windows",
                      str(r["top_neuron"]), str(r["super_weight"]), f"{r['max_abs']:.1f}")
    out.print(table)
    for warning in comparison.warnings:
        out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if not comparison.warnings:
        out.print("origin layer, top massive dim, carrier position and super weight agree under every protocol")


@app.command("ablate")
def ablate_cmd(
    model: str = ModelOpt,
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
    backend: str = BackendOpt,
    remote: Optional[str] = RemoteOpt,
    dtype: Optional[str] = DtypeOpt,
    device: str = DeviceOpt,
    device_map: Optional[str] = DeviceMapOpt,
    download: bool = DownloadOpt,
    trust_remote_code: bool = RemoteCodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Ablate massive weights (or controls), re-evaluate, restore: one table row per plan."""
    from analyses.ablate import make_plans, run_plans
    from analyses.evaluate import eval_rows
    from analyses.massive import scan

    from probe.errors import ProbeError

    if set(evals.split(",")) - {"ppl", "tasks"}:
        raise ProbeError(f"--eval {evals!r}: choose ppl, tasks or ppl,tasks")
    task_list = [t for t in tasks.split(",") if t] if "tasks" in evals.split(",") else None
    try:
        ks = [int(v) for v in sweep.split(",")] if sweep else [k]
    except ValueError:
        raise ProbeError(f"--sweep must be comma-separated integers, not {sweep!r}") from None
    if per_request < 1 or (per_request > 1 and not remote):
        raise ProbeError(f"--per-request {per_request}: give 1, or more with --remote (jobs batched into one request)")
    if (backend == "nnsight" or remote) and (ray or task_list):
        raise ProbeError(f"--{'ray' if ray else 'eval tasks'} needs the weights in this process (or on Ray workers); "
                         "with --backend nnsight or --remote the ablations run as interventions and evaluate --eval ppl only")
    loaded, backend, where = _load_for(model, backend, remote, dtype, device, download, trust_remote_code, device_map)
    opts = dict(backend=backend, remote=where)
    with _progress(as_json, "scanning", 16) as advance:
        result = scan(loaded.model, loaded.tokenizer, name=model, corpus=corpus, progress=advance, prepend=prepend, **opts)
    plans = make_plans(loaded.model, None, result, mode, ks, layer=layer, seeds=seeds, **opts)
    ev = eval_rows(loaded.tokenizer, corpus, seq_len=eval_len, n_seqs=eval_seqs, prepend=prepend)
    with _progress(as_json, "evaluating", len(plans) + 1) as advance:
        if ray:
            from analyses.sweep import run_plans_ray

            load = dict(dtype=dtype, device=device, allow_download=download, trust_remote_code=trust_remote_code,
                        device_map=device_map)
            table = run_plans_ray(model, load, ev, plans, address=None if ray == "local" else ray, num_workers=workers,
                                  tasks=task_list, limit=limit, progress=advance, gpus_per_worker=gpus_per_worker)
        else:
            table = run_plans(loaded.model, ev, plans, progress=advance, tokenizer=loaded.tokenizer, tasks=task_list,
                              limit=limit, per_request=per_request, **opts)
    table = {"model": model, "mode": mode, "origin_layer": result.origin_layer, "protocol": result.protocol,
             "warnings": result.warnings, **table}
    if as_json:
        print(json.dumps(table))
        return
    names = list(table["baseline"].get("tasks", {}))
    rich_table = Table("mode", "layer", "k", "seed", "rows / dims", "ppl", "x baseline", *[f"acc {n}" for n in names],
                       title=f"Ablations of {model}: baseline ppl {table['baseline']['ppl']:.2f} "
                             f"({table['baseline']['n_tokens']} tokens of {corpus})"
                             + "".join(f", {n} acc {v['acc']:.3f} (chance {v['chance']})"
                                       for n, v in table["baseline"].get("tasks", {}).items()),
                       caption=f"window protocol: {result.protocol['text']}")
    for row in table["results"]:
        what = row["neurons"] or row["dims"]
        rich_table.add_row(row["mode"], str(row["layer"]), str(row["k"]), "" if row["seed"] is None else str(row["seed"]),
                           ", ".join(map(str, what)), f"{row['ppl']:.2f}", f"{row['ratio']:.2f}",
                           *[f"{row['tasks'][n]['acc']:.3f}" for n in names])
    out.print(rich_table)
    for warning in result.warnings:
        out.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@app.command("geometry")
def geometry_cmd(
    model: str = ModelOpt,
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers or ranges, e.g. 0,5,10-12 (default: all)."),
    corpus: str = CorpusOpt,
    n_seqs: int = typer.Option(32, "--n-seqs", help="Number of windows run through the model."),
    seq_len: int = SeqLenOpt,
    n_tokens: int = typer.Option(4000, "--n-tokens", help="Token vectors sampled per layer for the LID (before deduplication)."),
    k: int = typer.Option(128, "--k", help="Neighbours per token for the local TwoNN (paper: 128)."),
    top_classes: int = typer.Option(512, "--top-classes", help="Collapse classes: the most frequent next tokens (0: all)."),
    min_count: int = typer.Option(2, "--min-count", help="Collapse classes need at least this many samples."),
    prepend: str = PrependOpt,
    dtype: Optional[str] = DtypeOpt,
    device: str = DeviceOpt,
    download: bool = DownloadOpt,
    trust_remote_code: bool = RemoteCodeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Local intrinsic dimension and neural-collapse metrics of the residual stream, per layer."""
    from analyses.geometry import geometry

    from probe.errors import ProbeError

    if k < 2 or n_tokens <= k:
        raise ProbeError(f"need 2 <= --k < --n-tokens, got k={k}, n-tokens={n_tokens}")
    chosen = _parse_layers(layers)
    loaded = _load(model, dtype, device, download, trust_remote_code)
    with _progress(as_json, "capturing", n_seqs) as advance:
        result = geometry(loaded.model, loaded.tokenizer, name=model, corpus=corpus, layers=chosen, n_seqs=n_seqs,
                          seq_len=seq_len, lid_points=n_tokens, k=k, top_classes=top_classes or None,
                          min_count=min_count, progress=advance, prepend=prepend)
    if as_json:
        print(json.dumps(result.to_dict(), allow_nan=True))
        return
    keys = {"nc1": "NC1", "nc2_equinorm": "NC2 norm", "nc2_equiangular": "NC2 angle", "cdnv": "CDNV",
            "fisher_ratio": "Fisher", "cone": "cone", "nc3": "NC3", "nc4": "NC4"}
    table = Table("layer", "LID", "LID med", "points", *keys.values(),
                  title=f"Geometry of {model}: {result.n_tokens} tokens of {corpus}, k={k}, "
                        f"{result.n_classes} next-token classes", caption=f"window protocol: {result.protocol['text']}")
    for g in result.layers:
        table.add_row(str(g.layer), f"{g.lid_mean:.2f}", f"{g.lid_median:.2f}", str(g.n_points),
                      *[f"{g.collapse[key]:.3g}" if key in g.collapse else "-" for key in keys])
    out.print(table)


def _parse_layers(spec: Optional[str]) -> Optional[list[int]]:
    """'0,5,10-12' -> [0, 5, 10, 11, 12]; None -> None (all layers)."""
    from probe.errors import LayerError

    if spec is None:
        return None
    chosen: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            lo, _, hi = part.partition("-")
            chosen.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise LayerError(f"--layers {spec!r}: use comma-separated layers or ranges like 0,5,10-12") from None
    if not chosen:
        raise LayerError(f"--layers {spec!r} names no layer")
    return chosen


@app.command("report")
def report_cmd(
    model: str = ModelOpt,
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output folder (default: figures/<model>-<date>)."),
    sections: str = typer.Option("massive,ablation,lid,collapse", "--sections", help="Comma-separated: massive, ablation, lid, collapse."),
    corpus: str = CorpusOpt,
    n_seqs: int = typer.Option(16, "--n-seqs", help="Windows scanned for massive activations (and for the geometry)."),
    seq_len: int = SeqLenOpt,
    k: int = typer.Option(5, "--k", help="Number of massive weights."),
    eval_seqs: int = typer.Option(16, "--eval-seqs", help="Perplexity windows (of 256 tokens) per ablation."),
    lid_points: int = typer.Option(2000, "--n-tokens", help="Token vectors sampled per layer for the LID."),
    lid_k: int = typer.Option(64, "--lid-k", help="Neighbours per token for the local TwoNN."),
    static: bool = typer.Option(False, "--static", help="Also write every figure as a PNG (matplotlib) next to the report."),
    prepend: str = PrependOpt,
    compare: bool = typer.Option(True, "--compare-prepend/--no-compare-prepend",
                                 help="Also scan under the other window protocols (a few seconds each) and flag in the "
                                      "report when the origin layer, carrier or super weight moves."),
    dtype: Optional[str] = DtypeOpt,
    device: str = DeviceOpt,
    download: bool = DownloadOpt,
    trust_remote_code: bool = RemoteCodeOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the analyses and write one self-contained HTML report plus results.json (and PNGs with --static)."""
    import re
    import time
    from datetime import date
    from pathlib import Path

    from analyses import sections as S
    from analyses.report import write_report
    from probe.data import window_protocol

    start = time.perf_counter()
    chosen = S.parse_sections(sections)
    cfg = S.ReportConfig(corpus=corpus, prepend=prepend, compare_prepend=compare, n_seqs=n_seqs, seq_len=seq_len, k=k, eval_seqs=eval_seqs,
                         geometry_seqs=n_seqs, lid_points=lid_points, lid_k=lid_k)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name.removesuffix(".gguf")) or "model"
    out = Path(out_dir or f"figures/{name}-{date.today()}")
    loaded = _load(model, dtype, device, download, trust_remote_code)
    window_protocol(loaded.tokenizer, prepend)  # a bad --prepend fails before the long run
    parts, results, scan = [], {}, None
    if "massive" in chosen:
        with _progress(quiet, "scanning", 1):
            found, scan, extra = S.massive_section(loaded, cfg)
        parts += found
        results.update(massive=scan.to_dict(), **extra)
    if "ablation" in chosen:
        n_plans = len(cfg.ablation_ks) + 2 + cfg.seeds
        with _progress(quiet, "ablating", n_plans + 1) as advance:
            found, table = S.ablation_section(loaded, cfg, scan, progress=advance)
        parts += found
        results["ablation"] = table
    if {"lid", "collapse"} & set(chosen):
        with _progress(quiet, "geometry", n_seqs) as advance:
            found, geo = S.geometry_sections(loaded, cfg, chosen, progress=advance)
        parts += found
        results["geometry"] = geo.to_dict()
    head = S.header(loaded, corpus, f"{n_seqs * seq_len} scanned ({n_seqs} x {seq_len})", prepend=prepend)
    results["header"] = head
    results["protocol"] = window_protocol(loaded.tokenizer, prepend).to_dict()
    warnings = [*(scan.warnings if scan else []), *results.get("prepend_comparison", {}).get("warnings", [])]
    results["warnings"] = warnings

    def pngs(folder: Path) -> None:
        from analyses.static import save_png

        figs = [(p.title, i, f) for p in parts for i, f in enumerate(p.figures)]
        for n, (title, i, fig) in enumerate(figs, 1):
            save_png(fig, folder / f"{n:02d}-{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}-{i + 1}.png")

    path = write_report(out, head, parts, results, extra=pngs if static else None, warnings=warnings)
    size = path.stat().st_size / 2**20
    err.print(f"wrote {path} ({size:.1f} MiB) and {path.with_name('results.json').name}"
              + (" and PNGs" if static else "") + f" in {time.perf_counter() - start:.0f} s")


@app.command("finetune")
def finetune_cmd(
    model: str = ModelOpt,
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
    dtype: Optional[str] = DtypeOpt,
    device: str = DeviceOpt,
    download: bool = DownloadOpt,
    trust_remote_code: bool = RemoteCodeOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (lm-eval's included)."),
) -> None:
    """Fine-tune a LoRA/DoRA adapter with MacDrop on the massive weights; save the adapter, the log and a report."""
    from datetime import date

    from analyses.finetune import TRACKS, FinetuneConfig, finetune, save
    from analyses.massive import scan
    from analyses.macdrop import schedule
    from analyses.report import new_folder
    from analyses.sections import header

    from probe.errors import ProbeError

    schedule(macdrop, p0, max(steps, 1))  # validate before loading anything
    tracked = tuple(t for t in track.split(",") if t)
    if set(tracked) - set(TRACKS):
        raise ProbeError(f"--track {track!r}: choose from {', '.join(TRACKS)}")
    out = new_folder(out_dir or f"figures/finetune-{macdrop}-{date.today()}")  # checked before the long run
    corpus = "stdlib" if data == "builtin" else data
    cfg = FinetuneConfig(method=method, macdrop=macdrop, p0=p0, k=k, steps=steps, eval_every=eval_every,
                         corpus=corpus, track=tracked, tasks=tuple(t for t in tasks.split(",") if t), task_limit=limit,
                         seed=seed, prepend=prepend)
    loaded = _load(model, dtype, device, download, trust_remote_code)
    result = scan(loaded.model, loaded.tokenizer, name=model, corpus=corpus, k=k, prepend=prepend)
    if result.origin_layer is None:
        raise ProbeError("no massive activation found, so there are no massive weights to drop")
    with _progress(quiet, "fine-tuning", steps) as advance, _hushed(quiet):
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

    from analyses.finetune_report import finetune_section, load_run
    from analyses.report import write_report

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

    from analyses.grokking import GrokConfig, grok, save
    from analyses.report import new_folder

    cfg = GrokConfig(p=p, train_frac=train_frac, steps=steps, eval_every=eval_every, weight_decay=weight_decay, seed=seed)
    cfg.validate()
    out = new_folder(out_dir or f"figures/grokking-{date.today()}")  # checked before the long run
    with _progress(quiet, "training", steps) as advance:
        log = grok(cfg, progress=advance)
    save(log, out)
    first, last = log.evals[0], log.evals[-1]
    err.print(f"train acc 0.99 at step {log.step_train_fit}, test acc 0.9 at step {log.step_test_fit}; mean LID (test) "
              f"{first['lid_test']:.2f} -> max {max(e['lid_test'] for e in log.evals):.2f} -> {last['lid_test']:.2f}; "
              f"report in {out}", soft_wrap=True)


@app.command("lid")
def lid_cmd(
    points: str = typer.Option(..., "--points", help="Points as .npy, .npz (one array) or .csv (n rows x D)."),
    k: int = typer.Option(128, "--k", help="Neighbours per point (local TwoNN) or for MLE."),
    estimator: str = typer.Option("twonn", "--estimator", help="twonn (local TwoNN, Less is More) or mle (Levina-Bickel)."),
    per_point: bool = typer.Option(False, "--per-point", help="Also print every point's value."),
    as_json: bool = JsonOpt,
) -> None:
    """Local intrinsic dimension of your own points (mean and median of the per-point values)."""
    import numpy as np

    from analyses.lid import MLE, LocalTwoNN
    from probe.errors import ProbeError

    X = _load_array(points)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ProbeError(f"{points}: expected a 2-D array of at least 3 points, got shape {X.shape}")
    if estimator not in ("twonn", "mle"):
        raise ProbeError(f"--estimator must be twonn or mle, not {estimator!r}")
    n_unique = len(np.unique(X, axis=0))
    if not 2 <= k < n_unique:
        raise ProbeError(f"--k {k} must be between 2 and the number of distinct points minus one ({n_unique - 1})")
    fitted = (LocalTwoNN(n_neighbors=k) if estimator == "twonn" else MLE(n_neighbors=k)).fit(X)
    pw = np.asarray(fitted.dimension_pw_)
    result = {"estimator": estimator, "mean_lid": float(pw.mean()), "median_lid": float(np.median(pw)),
              "n_points": int(len(pw)), "n_duplicates": int(fitted.n_duplicates_), "k": k}
    if estimator == "mle":
        result["mle_mackay_ghahramani"] = float(fitted.dimension_)
    if per_point:
        result["per_point"] = pw.tolist()
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if key != "per_point":
            out.print(f"{key}: {value}")
    if per_point:
        out.print(" ".join(f"{v:.3f}" for v in pw))


@app.command("collapse")
def collapse_cmd(
    features: str = typer.Option(..., "--features", help="Features (n x D) as .npy, .npz or .csv."),
    labels: str = typer.Option(..., "--labels", help="Integer labels (n,) as .npy, .npz or .csv."),
    classifier: Optional[str] = typer.Option(None, "--classifier", help="Classifier rows (C x D), for NC3 and NC4."),
    min_count: int = typer.Option(2, "--min-count", help="Classes with fewer samples are left out."),
    as_json: bool = JsonOpt,
) -> None:
    """Neural-collapse metrics (NC1-NC4, CDNV, Fisher ratio, cone effect) of your own features."""
    import numpy as np

    from analyses.collapse import CollapseStats
    from probe.errors import ProbeError

    X, y = _load_array(features), _load_array(labels).reshape(-1)
    if X.ndim != 2 or len(X) != len(y):
        raise ProbeError(f"features {X.shape} and labels {y.shape} do not match: need (n, D) and (n,)")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise ProbeError("labels must be integers")
    stats = CollapseStats(min_count=min_count).fit(X, y.astype(np.int64))
    kwargs = {}
    if classifier:
        W = _load_array(classifier)
        kwargs = {"classifier": W, "features": X, "predictions": (X @ W.T).argmax(1)}
    try:
        result = stats.metrics(**kwargs)
    except ValueError as exc:
        raise ProbeError(str(exc)) from None
    if as_json:
        print(json.dumps({k: float(v) for k, v in result.items()}))
        return
    for key, value in result.items():
        out.print(f"{key}: {value:.6g}")


def _load(model: str, dtype: Optional[str], device: str, download: bool, trust_remote_code: bool,
          device_map: Optional[str] = None) -> Any:
    from probe.models import load_model

    return load_model(model, dtype=dtype, device=device, allow_download=download, trust_remote_code=trust_remote_code,
                      device_map=device_map)


def _load_for(model: str, backend: str, remote: Optional[str], dtype: Optional[str], device: str, download: bool,
              trust_remote_code: bool, device_map: Optional[str]) -> tuple[Any, str, bool | str]:
    """The model for ``--backend``/``--remote``, the backend and the ``remote`` argument of the API:
    NDIF's copy (``ndif``: nothing downloaded), or the model loaded here, wrapped once for nnsight."""
    import dataclasses

    from probe.errors import ProbeError

    if remote not in (None, "ndif", "local"):
        raise ProbeError(f"--remote must be ndif or local, not {remote!r}")
    if backend not in ("torch", "nnsight"):
        raise ProbeError(f"--backend must be torch or nnsight, not {backend!r}")
    where: bool | str = {"ndif": True, "local": "local", None: False}[remote]
    if remote == "ndif":
        from probe.models import load_remote

        return load_remote(model), "nnsight", where
    loaded = _load(model, dtype, device, download, trust_remote_code, device_map)
    if remote or backend == "nnsight":
        from probe.backends import as_nnsight

        loaded = dataclasses.replace(loaded, model=as_nnsight(loaded.model, where, loaded.tokenizer))
    return loaded, "nnsight" if remote else backend, where


def _load_array(path: str) -> "Any":
    """A numpy array from .npy, .npz (exactly one array) or .csv; a clear error otherwise."""
    import numpy as np

    from probe.errors import ProbeError

    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise ProbeError(f"{path} holds {len(z.files)} arrays ({', '.join(z.files)}); save exactly one")
                return z[z.files[0]]
        if path.endswith(".csv"):
            return np.loadtxt(path, delimiter=",", ndmin=2)
    except ProbeError:
        raise
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read {path}: {exc}") from None
    raise ProbeError(f"{path}: use a .npy, .npz or .csv file")


@contextmanager
def _progress(quiet: bool, what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (nothing when ``quiet``); yields ``advance(n)``."""
    if quiet:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def _hushed(quiet: bool) -> Iterator[None]:
    """When ``quiet``: what libraries write to ``sys.stderr`` meanwhile (lm-eval's tqdm bars) is dropped."""
    import io
    from contextlib import redirect_stderr

    if not quiet:
        yield
        return
    with redirect_stderr(io.StringIO()):
        yield


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry: run the app, turning toolkit errors into one red line and exit 2.

    Usage errors (bad options) are click's own: a usage message and exit 2.
    """
    from probe.errors import ProbeError

    try:
        app(args=argv)
    except ProbeError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print(f"[red]{INTERRUPTED}[/red]", soft_wrap=True)
        sys.exit(130)
    except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130
        if exc.code == 130:
            err.print(f"[red]{INTERRUPTED}[/red]", soft_wrap=True)
        raise


INTERRUPTED = "interrupted: nothing was written (a previous report stays as it was); the model was restored"


if __name__ == "__main__":
    main()
