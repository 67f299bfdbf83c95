"""``probe census``: the causal super-weight census with matched controls (issue 19).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from analyses.cli.app import out
from analyses.cli.options import CorpusOpt, JsonOpt, ModelArgs, SeqLenOpt, model_command, parse_layers, progress_bar


@model_command("census", scaling=True)
def census_cmd(
    model: ModelArgs,
    layers: Optional[str] = typer.Option(None, "--layers", help="Layers to census, e.g. 0,1,10-12 (default: all)."),
    candidates: int = typer.Option(2, "--candidates", help="Spike candidates per layer (the scan's own are added)."),
    controls: int = typer.Option(8, "--controls", help="Matched controls per candidate (same |w| quantile band; "
                                 "with few, their p99 is nearly their max: raise it where compute allows)."),
    corpus: str = CorpusOpt,
    n_seqs: int = typer.Option(16, "--n-seqs", help="Scan windows (spike ranking)."),
    seq_len: int = SeqLenOpt,
    eval_seqs: int = typer.Option(8, "--eval-seqs", help="Evaluation windows (delta loss, bootstrap over them)."),
    eval_len: int = typer.Option(64, "--eval-len", help="Tokens per evaluation window."),
    seed: int = typer.Option(0, "--seed", help="Seed of the controls and of the bootstrap."),
    rows: int = typer.Option(32, "--rows", help="Rows (windows x edits) per edited forward pass."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Spread the layers over Ray workers: 'local' (a private Ray on "
                                                           "this machine), 'auto' or HOST:PORT / ray://HOST:PORT (a cluster)."),
    workers: int = typer.Option(2, "--workers", help="Ray workers (each loads the model once)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write census.json, census.csv and census.html here."),
    as_json: bool = JsonOpt,
) -> None:
    """Zero each super-weight candidate alone and compare its loss change with matched random weights."""
    from analyses.census import census
    from probe.arch import n_layers
    from probe.backends import hf_module
    from probe.errors import ProbeError

    if candidates < 1 or controls < 1:
        raise ProbeError(f"--candidates ({candidates}) and --controls ({controls}) must be at least 1")
    if ray and (model.remote or model.backend != "torch"):
        raise ProbeError("--ray runs the edits on workers that load the weights: use it with --backend torch, "
                         "without --remote")
    chosen = parse_layers(layers)
    loaded, backend, where = model.load_for()
    total = len(chosen or range(n_layers(hf_module(loaded.model)))) * (candidates + 2) * (controls + 2)
    sizes = dict(name=loaded.name, corpus=corpus, layers=chosen, candidates=candidates, controls=controls, n_seqs=n_seqs,
                 seq_len=seq_len, eval_seqs=eval_seqs, eval_len=eval_len, seed=seed, rows_per_forward=rows)
    with progress_bar(as_json, "census", total) as advance:
        if ray:
            from analyses.census.on_ray import census_ray

            result = census_ray(loaded.model, loaded.tokenizer, model.model, model.load_kwargs(),
                                address=None if ray == "local" else ray, num_workers=workers, progress=advance, **sizes)
        else:
            result = census(loaded.model, loaded.tokenizer, progress=advance, backend=backend, remote=where, **sizes)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        result.write_json(out_dir / "census.json")
        result.write_csv(out_dir / "census.csv")
        from probe.files import atomic_file

        with atomic_file(out_dir / "census.html") as tmp:
            result.figure().write_html(tmp, include_plotlyjs=True)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    render_census(result)


def render_census(result: Any) -> None:
    """One row per candidate; the published comparison when the model is in the table."""
    ev = result.evaluation
    table = Table("layer", "W_down[row, col]", "value", "spike", "rank", "delta loss [CI]", "controls p99", "causal",
                  "restored delta",
                  title=f"Super-weight census of {result.model}: baseline NLL {ev['baseline_nll']:.4f} on "
                        f"{ev['n_windows']} x {ev['seq_len']} tokens of {result.corpus}",
                  caption=f"{result.settings['controls']} controls per candidate from its |w| quantile band "
                          f"(+-{result.settings['band']:.0%}); causal = delta > controls p99 and CI excludes 0; "
                          f"restored: massive activation held at positions {ev['held_positions']}")
    for r in result.rows:
        tags = [t for t, on in (("super weight", r["super_weight"]), ("scan", r["scan_candidate"])) if on]
        restored = "-" if r["restored_delta"] is None else f"{r['restored_delta']:.3g}"
        spike = "-" if r["spike"] is None else f"{r['spike']:.3g}"
        table.add_row(str(r["layer"]), f"[{r['row']}, {r['col']}]" + (f" ({', '.join(tags)})" if tags else ""),
                      f"{r['value']:.4f}", spike, "-" if r["rank"] is None else str(r["rank"]),
                      f"{r['delta_loss']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]", f"{r['controls_p99']:.3g}",
                      "[red]yes[/red]" if r["causal"] else "no", restored)
    out.print(table)
    sw = result.scan["super_weight"]
    out.print(f"scan: origin layer {result.scan['origin_layer']}, super weight "
              + ("none" if sw is None else f"W_down[{sw['row']}, {sw['col']}] of layer {sw['layer']}"))
    if result.published:
        pub = result.published
        out.print(f"published ({pub['source']}) for {pub['model']}: " + "; ".join(
            f"({w['layer']}, {w['row']}, {w['col']}) " + ("found" if w["found"] else "not among the candidates")
            + ("" if w["layer_censused"] else " (layer not censused)") for w in pub["weights"]))
