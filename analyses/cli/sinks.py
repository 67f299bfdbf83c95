"""``probe sinks``: attention on the first token per layer and head, Sink_eps, onset layer, key bias.
"""

from __future__ import annotations
import json
from typing import Any
import typer
from rich.table import Table
from analyses.cli.app import out
from analyses.cli.options import ModelArgs, model_command, JsonOpt, CorpusOpt, SeqLenOpt, PrependOpt, progress_bar


@model_command("sinks", scaling=True)
def sinks_cmd(
    model: ModelArgs,
    corpus: str = CorpusOpt,
    n_seqs: int = typer.Option(16, "--n-seqs", help="Number of windows run through the model."),
    seq_len: int = SeqLenOpt,
    eps: float = typer.Option(0.3, "--eps", help="A head is a sink in a window when its queries' mean attention on the "
                                                 "first token exceeds this (Gu et al. 2024: 0.3)."),
    with_scan: bool = typer.Option(True, "--scan/--no-scan", help="First scan the windows for massive activations: "
                                                                 "their carriers and origin layer are reported too."),
    prepend: str = PrependOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Attention sinks: per layer and head the attention that later tokens give to the first one,
    the fraction of sink heads (Sink_eps), the onset layer and the first token's key bias."""
    from analyses.attention.sinks import check_options, sinks

    check_options(eps, n_seqs, seq_len, 8)  # before the model loads
    loaded, backend, where = model.load_for()
    opts = dict(backend=backend, remote=where)
    found = None
    if with_scan:
        from analyses.massive.locate import scan

        with progress_bar(as_json, "scanning", n_seqs) as advance:
            found = scan(loaded.model, loaded.tokenizer, name=loaded.name, corpus=corpus, n_seqs=n_seqs, seq_len=seq_len,
                         prepend=prepend, progress=advance, **opts)
    with progress_bar(as_json, "attention", n_seqs) as advance:
        result = sinks(loaded.model, loaded.tokenizer, name=loaded.name, corpus=corpus, n_seqs=n_seqs, seq_len=seq_len,
                       eps=eps, prepend=prepend, scan=found, progress=advance, **opts)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    render_sinks(result)


def render_sinks(result: Any) -> None:
    """One row per layer: attention on the first token, Sink_eps, the key-bias numbers."""
    table = Table("layer", "attn first", "Sink", "carriers", "k0/med", "q0/med", "v0/med", "cos q,k0", "",
                  title=f"Attention sinks of {result.model}: {result.n_seqs} windows x {result.seq_len} "
                                     f"tokens of {result.corpus}, eps {result.eps:g}",
                  caption=f"attn first: mean attention of queries t >= 1 on position 0; Sink: sink_frac (alpha > eps); "
                          f"carriers: attention on the other massive-activation positions; x0/med: |x_0| / median "
                          f"|x_t|; window protocol: {result.protocol.get('text', '?')}")
    for l in result.layers:
        marks = [m for m, at in (("onset", result.onset_layer), ("sustained onset", result.sustained_onset_layer),
                                 ("massive origin", result.origin_layer)) if at == l.layer]
        carriers = "-" if l.mean_attn_carriers is None else f"{l.mean_attn_carriers:.3f}"
        table.add_row(str(l.layer), f"{l.mean_attn_first:.3f}", f"{l.sink_frac:.2f}", carriers,
                      f"{l.key_norm_ratio:.2f}", f"{l.query_norm_ratio:.2f}", f"{l.value_norm_ratio:.2f}",
                      f"{l.qk_cos:.2f}", ", ".join(marks))
    out.print(table)
    out.print(f"onset layer (first with sink_frac >= 0.5): {result.onset_layer}; sustained from layer "
              f"{result.sustained_onset_layer} on; Sink_{result.eps:g} over all layers "
              f"and heads: {result.sink_rate:.3f}; massive-activation origin layer: {result.origin_layer}")
