"""``probe models`` and ``probe info``: what can be loaded, and what a model looks like inside.
"""

from __future__ import annotations
import json
from rich.table import Table
from analyses.cli.app import app, out
from analyses.cli.render import render_info
from analyses.cli.options import ModelArgs, model_command, JsonOpt


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


@model_command()
def info(
    model: ModelArgs,
    as_json: bool = JsonOpt,
) -> None:
    """Architecture summary of a model and the names of its hook points."""
    from probe.summary import summarize

    loaded = model.load()
    summary = summarize(loaded)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    render_info(summary, model.model)
