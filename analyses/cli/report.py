"""``probe report``: the analyses as one self-contained HTML report plus results.json.
"""

from __future__ import annotations
from typing import Optional
import typer
from analyses.cli.app import err
from analyses.cli.options import ModelArgs, model_command, CorpusOpt, SeqLenOpt, PrependOpt, progress_bar, split_list


@model_command("report")
def report_cmd(
    model: ModelArgs,
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output folder (default: figures/<model>-<date>)."),
    sections: str = typer.Option("massive,ablation,lifecycle,lid,collapse", "--sections",
                                 help="Comma-separated: massive, ablation, lifecycle, lid, collapse; census (the "
                                      "super-weight census, minutes per model) only when named."),
    corpus: str = CorpusOpt,
    n_seqs: int = typer.Option(16, "--n-seqs", help="Windows scanned for massive activations (and for the geometry)."),
    seq_len: int = SeqLenOpt,
    k: int = typer.Option(5, "--k", help="Number of massive weights."),
    eval_seqs: int = typer.Option(16, "--eval-seqs", help="Perplexity windows (of 256 tokens) per ablation."),
    lid_points: int = typer.Option(2000, "--n-tokens", help="Token vectors sampled per layer for the LID."),
    lid_k: int = typer.Option(64, "--lid-k", help="Neighbours per token for the local TwoNN."),
    static: bool = typer.Option(False, "--static", help="Also write every figure as a static file next to the report, "
                                "through Plotly's own exporter (kaleido; needs Chrome or Chromium)."),
    formats: str = typer.Option("png", "--formats", help="With --static: comma-separated, of png, svg, pdf."),
    prepend: str = PrependOpt,
    compare: bool = typer.Option(True, "--compare-prepend/--no-compare-prepend",
                                 help="Also scan under the other window protocols (a few seconds each) and flag in the "
                                      "report when the origin layer, carrier or super weight moves."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the analyses and write one self-contained HTML report plus results.json (and static figures with --static)."""
    import re
    import time
    from datetime import date
    from pathlib import Path

    from analyses.report import sections as S
    from analyses.report.export import check_ready, figure_names, save_figures
    from analyses.report.html import write_report
    from probe.data import window_protocol

    start = time.perf_counter()
    static_formats = check_ready(split_list(formats, "--formats")) if static else ()
    chosen = S.parse_sections(split_list(sections, "--sections"))
    cfg = S.ReportConfig(corpus=corpus, prepend=prepend, compare_prepend=compare, n_seqs=n_seqs, seq_len=seq_len, k=k, eval_seqs=eval_seqs,
                         geometry_seqs=n_seqs, lid_points=lid_points, lid_k=lid_k)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.model.rstrip("/")).name.removesuffix(".gguf")) or "model"
    out = Path(out_dir or f"figures/{name}-{date.today()}")
    loaded = model.load()
    window_protocol(loaded.tokenizer, prepend)  # a bad --prepend fails before the long run
    run = S.Run(loaded, cfg, chosen)
    parts = S.run_sections(run, lambda label, total: progress_bar(quiet, label, total))
    results, scan = run.results, run.scan
    head = S.header(loaded, corpus, f"{n_seqs * seq_len} scanned ({n_seqs} x {seq_len})", prepend=prepend)
    head["time per step"] = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in results.get("timings", {}).items())
    results["header"] = head
    results["protocol"] = window_protocol(loaded.tokenizer, prepend).to_dict()
    warnings = [*(scan.warnings if scan else []), *results.get("prepend_comparison", {}).get("warnings", [])]
    results["warnings"] = warnings

    def figures(folder: Path) -> None:
        save_figures(figure_names(parts), folder, static_formats)

    path = write_report(out, head, parts, results, extra=figures if static else None, warnings=warnings)
    size = path.stat().st_size / 2**20
    err.print(f"wrote {path} ({size:.1f} MiB) and {path.with_name('results.json').name}"
              + (f" and {len(figure_names(parts))} figures as {'/'.join(static_formats)}" if static else "") + f" in {time.perf_counter() - start:.0f} s")
