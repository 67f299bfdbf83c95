"""``probe scan``: massive activations, origin layer, massive weights, super weight.
"""

from __future__ import annotations
import json
import typer
from analyses.cli.app import out
from analyses.cli.options import ModelArgs, model_command, JsonOpt, CorpusOpt, SeqLenOpt, PrependOpt, progress_bar
from analyses.cli.render import render_comparison, render_scan


@model_command("scan", scaling=True)
def scan_cmd(
    model: ModelArgs,
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
    as_json: bool = JsonOpt,
) -> None:
    """Find massive activations, their origin layer, the massive weights and the super weight."""
    from analyses.massive.locate import scan

    loaded, backend, where = model.load_for()  # scan checks k against the FFN width
    opts = dict(name=loaded.name, corpus=corpus, n_seqs=n_seqs, seq_len=seq_len, k=k, ratio=ratio,
                abs_threshold=abs_threshold, backend=backend, remote=where)
    if compare:
        from analyses.massive.prepend import compare_prepend, others

        chosen = [prepend, *others(loaded.tokenizer, prepend)]
        with progress_bar(as_json, "scanning", n_seqs * len(chosen)) as advance:
            comparison = compare_prepend(loaded.model, loaded.tokenizer, chosen, progress=advance, **opts)
        if as_json:
            print(json.dumps(comparison.to_dict()))
            return
        render_comparison(comparison)
        return
    with progress_bar(as_json, "scanning", n_seqs) as advance:
        result = scan(loaded.model, loaded.tokenizer, prepend=prepend, progress=advance, **opts)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    render_scan(result, out)
