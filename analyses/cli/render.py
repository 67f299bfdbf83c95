"""The rich tables the commands print (``--json`` prints the results' ``to_dict()`` instead).
"""

from __future__ import annotations
from typing import TYPE_CHECKING, Any
from rich.table import Table
from analyses.cli.app import out

if TYPE_CHECKING:  # annotations only: the CLI imports the analyses when a command runs
    from analyses.geometry.layers import Geometry
    from analyses.massive.locate import MassiveScan


def render_comparison(comparison: Any) -> None:
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


def render_scan(result: MassiveScan, console: Any = out) -> None:
    """Print a scan as rich tables."""
    table = Table("layer", "max |h|", "median |h|", "max/median", "massive", "top (value @ pos, dim, token)",
                  title=f"Residual stream of {result.model} on {result.n_tokens} tokens of {result.corpus}",
                  caption=f"window protocol: {result.protocol.get('text', '?')}")
    for layer in result.layers:
        t = layer.top[0]
        mark = " <- origin" if layer.layer == result.origin_layer else ""
        table.add_row(str(layer.layer), f"{layer.max:.1f}", f"{layer.median:.4f}", f"{layer.ratio:.0f}x",
                      f"{len(layer.massive)}{mark}", f"{t['value']:.1f} @ {t['position']}, {t['dim']}, {t['token']!r}")
    console.print(table)
    console.print(f"origin layer (|v| > {result.abs_threshold:g} and > {result.ratio:g}x median, persisting): "
                  f"{result.origin_layer}; by ratio: {result.origin_by_ratio}")
    if result.origin_layer is None:
        console.print("no massive activations at these thresholds")
        return
    console.print(f"massive dims: {result.massive_dims}; carried by {result.carried_by()}")
    console.print("first token carries: " + ", ".join(
        f"dim {c['dim']} in {c['first_token']} of {c['n_windows']} windows" for c in result.carriers))
    console.print(f"top-{len(result.massive_neurons)} massive neurons at layer {result.origin_layer}: {result.massive_neurons} "
                  f"(values {[round(v, 1) for v in result.neuron_values]})")
    sw = result.super_weight
    console.print(f"super weight: W_down[{sw['row']}, {sw['col']}] of layer {sw['layer']} = {sw['value']:.4f}")
    a = result.attribution
    console.print(f"attribution of {a['value']:.1f} (layer {a['layer']}, pos {a['position']}, dim {a['dim']}): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in a["parts"].items()) + f" -> from {a['source']}")
    for p in result.precursors:
        console.print(f"precursor of dim {p['dim']}: layer {p['layer']} ({p['ratio_at_precursor']:.0f}x median)")
    cands = [c for c in result.super_weight_candidates if c["same_token"] and c["output_ratio"] > 100]
    console.print("super-weight candidates (input and output spike on one token, output > 100x median): "
                  + "; ".join(f"layer {c['layer']} W_down[{c['row']}, {c['col']}] = {c['value']:.3f}" for c in cands))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def render_ablation(table: dict[str, Any], model: str, corpus: str, result: MassiveScan) -> None:
    """The ablation table of ``probe ablate``: one row per plan, accuracies when tasks ran."""
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


def render_geometry(result: Geometry, model: str, corpus: str, k: int) -> None:
    """The per-layer geometry table of ``probe geometry``: LID with its interval, the same without
    the carrier tokens, the collapse metrics, and one row per layer and ablation plan."""
    keys = {"nc1": "NC1", "nc2_equiangular": "NC2 angle", "gnc2": "GNC2", "cdnv": "CDNV", "nc3": "NC3",
            "unc3": "UNC3", "nc4": "NC4"}
    level = int(round(100 * result.bootstrap.get("level", 0.95)))
    table = Table("layer", "LID", f"{level}% interval", "LID w/o carriers", "NC1 w/o", "Gride n2=2..max", *keys.values(),
                  title=f"Geometry of {model}: {result.n_tokens} tokens of {corpus}, k={k}, "
                        f"{result.n_classes} next-token classes",
                  caption=f"window protocol: {result.protocol['text']}; carriers left out: "
                          f"{result.carriers.get('n_tokens', 0)} tokens (positions {result.carriers.get('positions', {})})")
    for g in result.layers:
        ci = f"{g.lid_ci[0]:.2f}-{g.lid_ci[1]:.2f}" if g.lid_ci else "-"
        w = g.without_carriers
        gride = " ".join(f"{s['id']:.1f}" for s in g.gride)
        table.add_row(str(g.layer), f"{g.lid_mean:.2f}", ci, f"{w.get('lid_mean', float('nan')):.2f}",
                      f"{w.get('collapse', {}).get('nc1', float('nan')):.3g}", gride,
                      *[f"{g.collapse[key]:.3g}" if key in g.collapse else "-" for key in keys])
    out.print(table)
    for ablation in result.ablations:
        plan = ablation["plan"]
        rows = Table("layer", "LID", "NC1", "max |resid|", title=f"with {plan['mode']} k={plan['k']} at layer {plan['layer']}")
        for g, peak in zip(ablation["layers"], ablation["massive_max"]):
            rows.add_row(str(g["layer"]), f"{g['lid_mean']:.2f}", f"{g.get('nc1', float('nan')):.3g}", f"{peak:.1f}")
        out.print(rows)


def render_info(summary: dict[str, Any], model: str) -> None:
    """The architecture summary and hook-point names of ``probe info``."""
    table = Table("property", "value", title=f"probe info: {model}", show_header=False)
    for key, value in summary.items():
        if key != "hook_points":
            table.add_row(key, str(value))
    out.print(table)
    out.print("[bold]Hook points[/bold] (l = 0.." + str(summary["n_layers"] - 1) + "):")
    for name in summary["hook_points"]:
        out.print("  " + name)
