"""``probe geometry`` (per layer of a model), ``probe lid`` and ``probe collapse`` (your own points).
"""

from __future__ import annotations
import json
from typing import Optional
import typer
from analyses.cli.app import app, out
from analyses.cli.render import render_geometry
from analyses.cli.options import ModelArgs, model_command, JsonOpt, CorpusOpt, SeqLenOpt, PrependOpt, parse_layers, load_array, progress_bar


@model_command("geometry")
def geometry_cmd(
    model: ModelArgs,
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers or ranges, e.g. 0,5,10-12 (default: all)."),
    corpus: str = CorpusOpt,
    n_seqs: int = typer.Option(32, "--n-seqs", help="Number of windows run through the model."),
    seq_len: int = SeqLenOpt,
    n_tokens: int = typer.Option(4000, "--n-tokens", help="Token vectors sampled per layer for the LID (before deduplication)."),
    k: int = typer.Option(128, "--k", help="Neighbours per token for the local TwoNN (paper: 128)."),
    top_classes: int = typer.Option(512, "--top-classes", help="Collapse classes: the most frequent next tokens (0: all)."),
    min_count: int = typer.Option(2, "--min-count", help="Collapse classes need at least this many samples."),
    groups: int = typer.Option(5, "--groups", help="Groups of windows for the jackknife intervals of the collapse metrics "
                                                  "(1: none; memory grows with it)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of the per-token LID values (0: no interval)."),
    ablate: Optional[list[str]] = typer.Option(None, "--ablate", help="Also the geometry of the model edited by a plan: "
                                               "MODE[:K], e.g. zero:5, retain:5, random:5, super (repeatable)."),
    prepend: str = PrependOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Local intrinsic dimension and neural-collapse metrics of the residual stream, per layer, with
    bootstrap intervals, LID across scales (Gride), and without the massive-activation tokens."""
    from analyses.ablate.plans import make_plans
    from analyses.geometry.layers import GeometryPass, under_ablation
    from probe.data import load_corpus, token_windows

    from probe.errors import ProbeError

    if k < 2 or n_tokens <= k:
        raise ProbeError(f"need 2 <= --k < --n-tokens, got k={k}, n-tokens={n_tokens}")
    specs = [parse_plan_spec(s) for s in ablate or []]
    chosen = parse_layers(layers)
    loaded = model.load()
    windows = token_windows(loaded.tokenizer, load_corpus(corpus), seq_len=seq_len, n_seqs=n_seqs, prepend=prepend)
    options = dict(layers=chosen, lid_points=n_tokens, k=k, top_classes=top_classes or None, min_count=min_count,
                   seed=0, groups=groups)
    gp = GeometryPass(loaded.model, windows, **options)
    with progress_bar(as_json, "capturing", n_seqs * (1 + len(specs))) as advance:
        found, result = gp.run(loaded.tokenizer, loaded.name, corpus, prepend, progress=advance, n_boot=n_boot)
        if specs and found.origin_layer is None:
            raise ProbeError("--ablate needs massive weights, and the scan found no massive activation")
        plans = [make_plans(loaded.model, None, found, mode, [n], seeds=1)[0] for mode, n in specs]
        under_ablation(loaded.model, loaded.tokenizer, result, plans, progress=advance, corpus=corpus, n_seqs=n_seqs,
                       seq_len=seq_len, prepend=prepend, n_boot=n_boot, **options)
    if as_json:
        print(json.dumps(result.to_dict(), allow_nan=True))
        return
    render_geometry(result, model.model, corpus, k)


def parse_plan_spec(spec: str) -> tuple[str, int]:
    """``'zero:5'`` -> ``('zero', 5)``; ``'super'`` -> ``('super', 1)``; a mode of :mod:`analyses.ablate.modes`."""
    from analyses.ablate.modes import mode_names
    from probe.errors import ProbeError

    mode, _, k = spec.partition(":")
    if mode not in mode_names():
        raise ProbeError(f"--ablate {spec!r}: unknown mode {mode!r}; choose from {', '.join(mode_names())}")
    try:
        n = int(k) if k else 1
    except ValueError:
        raise ProbeError(f"--ablate {spec!r}: K must be an integer, e.g. zero:5") from None
    if n < 1:
        raise ProbeError(f"--ablate {spec!r}: K must be at least 1")
    return mode, n


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

    from analyses.geometry.lid import MLE, LocalTwoNN
    from probe.errors import ProbeError

    X = load_array(points)
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

    from analyses.geometry.collapse import CollapseStats
    from probe.errors import ProbeError

    X, y = load_array(features), load_array(labels).reshape(-1)
    if X.ndim != 2 or len(X) != len(y):
        raise ProbeError(f"features {X.shape} and labels {y.shape} do not match: need (n, D) and (n,)")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise ProbeError("labels must be integers")
    stats = CollapseStats(min_count=min_count).fit(X, y.astype(np.int64))
    kwargs = {}
    if classifier:
        W = load_array(classifier)
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
