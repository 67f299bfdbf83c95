"""A causal super-weight census with matched controls (issue 19; Yu et al. 2024, arXiv 2411.07191).

For every layer ``L`` asked for:

1. **Candidates**: the ``candidates`` pairs ``(d, n)`` of ``W_down`` with the largest spike
   ``max_t |h_n(t)| |y_d(t)|`` over the scan windows (:mod:`analyses.census.spikes`), found in the
   scan's own forward pass; plus the scan's spike candidate of the layer (largest input and output
   spike, possibly on different tokens) and, at the origin layer, the scan's super weight, when the
   ranking did not already hold them (``rank`` is then ``None``).
2. **Effect**: each candidate zeroed alone, ``delta = mean NLL(edited) - mean NLL(original)`` over
   the evaluation windows (nats per scored token), with a paired percentile bootstrap interval
   over windows: ``B`` resamples of the windows (seeded by ``[seed, layer, d, n]``), each giving
   ``sum_w (S_w(edited) - S_w(original)) / (E * (T - 1))`` from the per-window NLL sums ``S_w``.
   The evaluation windows (``eval_seqs`` x ``eval_len``) are cut from the start of the same corpus
   as the scan's, so their text overlaps the text the candidates were ranked on.
3. **Controls**: ``controls`` weights of the same ``W_down`` from the candidate's ``|w|`` quantile
   band (``+-1%``, :func:`analyses.census.spikes.matched_controls`), each zeroed alone the same way.
   **Causal** = ``delta > p99(control deltas)`` and the interval excludes zero.
4. **Restored** (Yu et al. §3): the weight zeroed but output ``d`` of the down projection held at
   its original value at the carrier position (the scan's carrier, usually the first token):
   ``restored_delta`` is the part of the effect that does not go through the massive activation.

Edits are activation edits, batched and on a shared prefix (:mod:`analyses.census.edits`).
**Published coordinates** (:data:`PUBLISHED`, layer, row = residual dim ``d``, col = neuron ``n``;
Yu et al. 2024 for Llama-7B, Mistral-7B, Llama-3-8B and OLMo-1B, as quoted in issue 19): a model
matches when its name matches the entry's regular expression and its config has the entry's shape
(``model_type``, layers, ``d_model``, ``d_ff``; Llama-7B and Llama-2-7B share a shape, so the shape
alone does not decide); ``Census.published`` then says which were found and whether causal.
Backends: torch (models in this process: weight-free activation edits, shared prefixes) and nnsight,
locally or on NDIF (``remote=True``; ``"local"`` simulates the request): the same edits as
interventions in the traces (:mod:`analyses.census.traced`), the weights read on the server; and
Ray workers for the edits (:mod:`analyses.census.on_ray`). Every path gives the same table.
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from analyses.census.edits import WindowLosses, Zeroed, layer_groups
from analyses.census.spikes import BAND, Band, SpikeCapture, matched_controls
from analyses.evaluate.likelihood import eval_windows
from analyses.massive.locate import MassiveScan, scan as run_scan, scan_windows
from probe.arch import n_layers, weight_view
from probe.backends import as_nnsight, call_on_model, check_backend, hf_module
from probe.capture import capture, run_all
from probe.display import Figured
from probe.errors import LayerError, ProbeError
from probe.files import atomic_file

BOOTSTRAP = 2000
COLUMNS = ("layer", "row", "col", "value", "spike", "delta_loss", "ci_low", "ci_high", "controls_p99", "causal",
           "restored_delta", "rank", "scan_candidate", "super_weight", "quantile")


@dataclass
class Census(Figured):
    """Result of :func:`census`: ``rows`` (one per candidate, :data:`COLUMNS` and more), ``controls``
    (one per control: the candidate it matches, its cell and delta), the scan and evaluation
    settings, ``published`` (comparison with published coordinates, or ``None``), ``timing``."""

    model: str
    corpus: str
    layers: list[int]
    rows: list[dict[str, Any]]
    controls: list[dict[str, Any]]
    scan: dict[str, Any]
    evaluation: dict[str, Any]
    settings: dict[str, Any]
    published: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @property
    def causal(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["causal"]]

    def write_json(self, path: str | Path) -> Path:
        """The census as JSON at ``path``, written to a temporary file and renamed into place."""
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        return Path(path)

    def write_csv(self, path: str | Path) -> Path:
        """The candidate table (:data:`COLUMNS`) as CSV at ``path``, written atomically."""
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        return Path(path)


def census(model: nn.Module, tokenizer: Any, name: str = "model", corpus: str = "stdlib",
           layers: Sequence[int] | None = None, candidates: int = 2, controls: int = 8, n_seqs: int = 16,
           seq_len: int = 128, eval_seqs: int = 8, eval_len: int = 64, seed: int = 0, level: float = 0.95,
           scan: MassiveScan | None = None, progress: Callable[[int], None] | None = None, rows_per_forward: int = 32,
           layers_per_pass: int = 8, exact: bool = True, backend: str = "torch", remote: bool | str = False) -> Census:
    """The causal super-weight census of ``model`` (module docstring). ``n_seqs`` x ``seq_len``: the
    scan windows (ignored when ``scan`` is given: its windows are used); ``eval_seqs`` x ``eval_len``:
    the evaluation windows (:func:`analyses.evaluate.likelihood.eval_windows`). The defaults (2
    candidates, 8 controls, 8 x 64 evaluation tokens) keep the embedded model's census of all 30
    layers to minutes on 2 CPU cores; with 8 controls the "p99" is nearly their maximum, so raise
    ``controls`` (e.g. 32) and the windows where compute allows. ``level``: of the
    bootstrap interval; ``rows_per_forward``: rows (windows x edits) per edited forward;
    ``layers_per_pass``: prefixes recorded per baseline pass; ``exact``: recompute each edited copy's
    down projection with the weight zeroed (bit-identical to a weight edit) instead of subtracting
    ``W[d, n] h_n`` (:mod:`analyses.census.edits`). ``progress(n)``: ``n`` more edits done.

    ``backend="nnsight"`` (``remote``: ``True`` for NDIF with ``model`` from
    :func:`probe.models.load_remote`, ``"local"`` simulated): the scan and spikes in traces, the
    weights read where they are (:func:`probe.backends.call_on_model`), the edits as interventions
    (:mod:`analyses.census.traced`; no shared prefix), the same numbers."""
    backend, remote = check_backend(backend, remote, allowed=("torch", "nnsight"))
    runner = as_nnsight(model, remote, tokenizer) if backend == "nnsight" else model
    work = prepare(runner, tokenizer, name, corpus, layers, candidates, controls, n_seqs, seq_len, eval_seqs, eval_len,
                   seed, level, scan, backend, remote)
    if backend == "nnsight":
        from analyses.census.traced import TracedWindowLosses

        losses: WindowLosses = TracedWindowLosses(runner, work.windows, rows=rows_per_forward, exact=exact, remote=remote)
    else:
        losses = WindowLosses(model, work.windows, rows=rows_per_forward, exact=exact)
    rows, control_rows, base = evaluate(losses, work, work.layers, layers_per_pass, progress)
    settings = {"rows_per_forward": rows_per_forward, "share_prefix": losses.share,
                "edit": "recomputed (exact)" if exact else "subtracted", "backend": backend, "remote": remote}
    return work.census(rows, control_rows, base, settings, losses.forwards)


@dataclass
class Prepared:
    """What a census knows before its edits run: the scan, each layer's candidates (with their
    values) and matched controls, the evaluation windows; :meth:`census` assembles the result."""

    name: str
    corpus: str
    layers: list[int]
    found: MassiveScan
    picked: dict[int, list[dict[str, Any]]]
    bands: dict[int, dict[tuple[int, int], Band]]
    windows: torch.Tensor
    held: tuple[int, ...]
    seed: int
    level: float
    controls: int
    candidates: int
    config: Any
    started: float
    scanned: float

    def census(self, rows: list[dict[str, Any]], control_rows: list[dict[str, Any]], base: torch.Tensor,
               settings: dict[str, Any], forwards: int) -> Census:
        """The :class:`Census` of the evaluated ``rows`` and ``control_rows`` (``base``: the unedited
        per-window sums; ``settings``: how the edits ran)."""
        tokens = self.windows.shape[0] * (self.windows.shape[1] - 1)
        evaluation = {"corpus": self.corpus, "n_windows": self.windows.shape[0], "seq_len": self.windows.shape[1],
                      "n_tokens": tokens, "baseline_nll": float(base.sum()) / tokens,
                      "baseline_ppl": float(np.exp(float(base.sum()) / tokens)), "held_positions": list(self.held)}
        settings = {"candidates": self.candidates, "controls": self.controls, "band": BAND, "level": self.level,
                    "seed": self.seed, "bootstrap": BOOTSTRAP, **settings}
        timing = {"scan_s": self.scanned - self.started, "evaluate_s": time.perf_counter() - self.scanned,
                  "forwards": forwards, "edits": len(rows) * (self.controls + 2)}
        return Census(self.name, self.corpus, self.layers, rows, control_rows, _scan_summary(self.found), evaluation,
                      settings, compare(self.name, self.config, rows, self.layers), timing)


def prepare(runner: Any, tokenizer: Any, name: str, corpus: str, layers: Sequence[int] | None, candidates: int,
            controls: int, n_seqs: int, seq_len: int, eval_seqs: int, eval_len: int, seed: int, level: float,
            scan: MassiveScan | None, backend: str = "torch", remote: bool | str = False) -> Prepared:
    """Steps 1 and 3 of the module docstring on ``runner`` (an HF model, or an nnsight one for
    ``backend="nnsight"``): the scan with the spikes, the candidates, their values and controls
    (read where the weights are), and the evaluation windows."""
    hf = hf_module(runner)
    chosen = _check(hf, layers, candidates, controls, level)
    started = time.perf_counter()
    found, pairs = _scan_with_spikes(runner, tokenizer, name, corpus, n_seqs, seq_len, candidates, scan, backend, remote)
    picked = {L: _candidates(L, pairs[L], found, candidates) for L in chosen}
    cells = {L: [(c["row"], c["col"]) for c in picked[L]] for L in chosen}
    bands, values = call_on_model(runner, read_bands, cells, controls, seed, input_ids=found.windows, remote=remote)
    for L in chosen:
        for c, value in zip(picked[L], values[L]):
            c["value"] = value
    windows = eval_windows(tokenizer, corpus, seq_len=eval_len, n_seqs=eval_seqs)
    held = () if found.carrier is None else (int(found.carrier["position"]),)
    return Prepared(name, corpus, chosen, found, picked, bands, windows, held, seed, level, controls, candidates,
                    getattr(hf, "config", None), started, time.perf_counter())


def evaluate(losses: WindowLosses, work: Prepared, layers: Sequence[int], layers_per_pass: int,
             progress: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], torch.Tensor]:
    """Steps 2-4 of the module docstring for ``layers`` of ``work`` with ``losses`` (a
    :class:`~analyses.census.edits.WindowLosses`, or its subclass for nnsight traces,
    :class:`~analyses.census.traced.TracedWindowLosses`): the candidate rows, the control rows and
    the unedited per-window sums."""
    rows, control_rows, base = [], [], None
    for group in layer_groups(list(layers), layers_per_pass):
        base = losses.baseline(group)
        for L in group:
            r, c = _layer(losses, base, L, work.picked[L], work.bands[L], work.held, work.seed, work.level, progress)
            rows += r
            control_rows += c
    assert base is not None
    return rows, control_rows, base


def read_bands(model: nn.Module, cells: dict[int, list[tuple[int, int]]], controls: int,
               seed: int) -> tuple[dict[int, dict[tuple[int, int], Band]], dict[int, list[float]]]:
    """Per layer, the matched controls of its candidate ``cells`` and the candidates' values in
    ``W_down``: run where the weights are (:func:`probe.backends.call_on_model`; on NDIF, the server)."""
    bands, values = {}, {}
    for L, at in cells.items():
        matrix = weight_view(model, L, "W_down").matrix
        bands[L] = matched_controls(matrix, at, controls, seed, L)
        values[L] = [float(matrix[d, n]) for d, n in at]
    return bands, values


def _check(model: nn.Module, layers: Sequence[int] | None, candidates: int, controls: int, level: float) -> list[int]:
    total = n_layers(model)
    if candidates < 1 or controls < 1:
        raise ProbeError(f"candidates ({candidates}) and controls ({controls}) must be at least 1")
    if not 0 < level < 1:
        raise ProbeError(f"level must be between 0 and 1, not {level}")
    chosen = list(range(total)) if layers is None else sorted(set(int(L) for L in layers))
    bad = [L for L in chosen if not 0 <= L < total]
    if bad or not chosen:
        raise LayerError(f"layers {bad or '[]'} out of range: the model has {total} layers (0..{total - 1})")
    return chosen


def _scan_with_spikes(model: Any, tokenizer: Any, name: str, corpus: str, n_seqs: int, seq_len: int, k: int,
                      found: MassiveScan | None, backend: str = "torch",
                      remote: bool | str = False) -> tuple[MassiveScan, list[list[dict[str, Any]]]]:
    """The scan and, from the same forward passes, every layer's spike pairs; with a given scan,
    one pass over its windows for the pairs."""
    inputs, pairs = SpikeCapture(k).reducers()
    opts = {"backend": backend, "remote": remote}
    riders = [capture(model, "blocks.*.mlp.hook_post", reduce=inputs, **opts),
              capture(model, "blocks.*.mlp.hook_out", reduce=pairs, **opts)]
    if found is None:
        found = run_scan(model, tokenizer, name=name, corpus=corpus, n_seqs=n_seqs, seq_len=seq_len, riders=riders,
                         **opts)
    else:
        windows = scan_windows(tokenizer, found)
        with riders[0] as a, riders[1] as b:
            for start in range(0, windows.shape[0], 8):
                run_all([a, b], windows[start : start + 8])
    pairs = [riders[1][f"blocks.{L}.mlp.hook_out"] for L in range(n_layers(hf_module(model)))]
    for p in (p for layer in pairs for p in layer):
        p["token"] = str(p["token"]) if tokenizer is None else tokenizer.convert_ids_to_tokens(int(p["token"]))
    return found, pairs


def _candidates(layer: int, pairs: list[dict[str, Any]], found: MassiveScan, k: int) -> list[dict[str, Any]]:
    """The top-``k`` spike pairs of ``layer`` (``rank`` 1..k), then the scan's spike candidate and
    super weight when missing; ``value`` is read later."""
    out = [{"layer": layer, **p, "rank": i + 1, "scan_candidate": False, "super_weight": False}
           for i, p in enumerate(pairs[:k])]
    cell = {(c["row"], c["col"]): c for c in out}
    scan_c = next((c for c in found.super_weight_candidates if c["layer"] == layer), None)
    extra = [(scan_c, "scan_candidate")] if scan_c else []
    sw = found.super_weight
    if sw is not None and sw["layer"] == layer:
        extra.append((sw, "super_weight"))
    for c, flag in extra:
        key = (c["row"], c["col"])
        if key not in cell:
            spike = abs(c["input_spike"]) * abs(c["output_spike"]) if "input_spike" in c else None
            cell[key] = {"layer": layer, "row": key[0], "col": key[1], "spike": spike, "input": c.get("input_spike"),
                         "output": c.get("output_spike"), "batch": None, "position": c.get("position"),
                         "token": c.get("token"), "rank": None, "scan_candidate": False, "super_weight": False}
            out.append(cell[key])
        cell[key][flag] = True
    return out


def _layer(losses: WindowLosses, base: torch.Tensor, layer: int, picked: list[dict[str, Any]],
           bands: dict[tuple[int, int], Band], held: tuple[int, ...], seed: int, level: float,
           progress: Callable[[int], None] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate the candidates of one layer, their restored versions and their controls."""
    edits: list[Zeroed] = []
    for c in picked:
        band = bands[(c["row"], c["col"])]
        edits.append(Zeroed(layer, c["row"], c["col"], c["value"]))
        edits.append(Zeroed(layer, c["row"], c["col"], c["value"], held))
        edits += [Zeroed(layer, r, n, v) for r, n, v in band.controls]
    sums = losses.edited(edits, progress)
    deltas = (sums - base[None]) / (losses.windows.shape[1] - 1)  # per window: its mean over windows is delta
    rows, controls, i = [], [], 0
    for c in picked:
        band = bands[(c["row"], c["col"])]
        zero, restored, ctrl = deltas[i], deltas[i + 1], deltas[i + 2 : i + 2 + len(band.controls)]
        i += 2 + len(band.controls)
        control_delta = ctrl.mean(-1).numpy()
        rows.append(_row(c, band, zero, restored, control_delta, seed, level, bool(held)))
        controls += [{"layer": layer, "of_row": c["row"], "of_col": c["col"], "row": r, "col": n, "value": v,
                      "delta_loss": float(d)} for (r, n, v), d in zip(band.controls, control_delta)]
    return rows, controls


def _row(c: dict[str, Any], band: Band, zero: torch.Tensor, restored: torch.Tensor, control_delta: np.ndarray, seed: int,
         level: float, has_carrier: bool) -> dict[str, Any]:
    delta = float(zero.mean())
    lo, hi = bootstrap(zero.numpy(), seed=[seed, c["layer"], c["row"], c["col"]], level=level)
    p99 = float(np.percentile(control_delta, 99))
    return {**c, "delta_loss": delta, "ci_low": lo, "ci_high": hi, "controls_p99": p99,
            "controls_median": float(np.median(control_delta)), "n_controls": len(control_delta),
            "causal": is_causal(delta, lo, hi, p99), "restored_delta": float(restored.mean()) if has_carrier else None,
            "quantile": band.q, "band": [band.lo, band.hi], "band_abs_w": [band.w_lo, band.w_hi]}


def bootstrap(per_window: np.ndarray, seed: Any = 0, level: float = 0.95, n: int = BOOTSTRAP) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(per_window)`` (windows resampled with replacement,
    ``numpy.random.default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    means = per_window[rng.integers(0, len(per_window), (n, len(per_window)))].mean(1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def is_causal(delta: float, ci_low: float, ci_high: float, controls_p99: float) -> bool:
    """The census rule: the effect exceeds the controls' 99th percentile and its interval excludes zero."""
    return delta > controls_p99 and (ci_low > 0 or ci_high < 0)


def _scan_summary(found: MassiveScan) -> dict[str, Any]:
    return {"n_seqs": found.n_seqs, "seq_len": found.seq_len, "origin_layer": found.origin_layer,
            "super_weight": found.super_weight, "carrier": found.carrier, "protocol": found.protocol,
            "massive_neurons": found.massive_neurons}


SOURCE = "Yu et al. 2024, arXiv 2411.07191"

PUBLISHED: dict[str, dict[str, Any]] = {
    "Llama-7B": {"name": r"(^|[/_-])llama-7b", "model_type": ("llama",), "shape": (32, 4096, 11008),
                 "weights": [(2, 3968, 7003)], "source": SOURCE},
    "Mistral-7B": {"name": r"mistral-7b", "model_type": ("mistral",), "shape": (32, 4096, 14336),
                   "weights": [(1, 2070, 7310)], "source": SOURCE},
    "Llama-3-8B": {"name": r"llama-3-8b", "model_type": ("llama",), "shape": (32, 4096, 14336),
                   "weights": [(1, 788, 2427), (1, 1384, 2427), (1, 4062, 2427)], "source": SOURCE},
    "OLMo-1B": {"name": r"olmo-1b", "model_type": ("olmo", "olmo2"), "shape": (16, 2048, 8192),
                "weights": [(1, 1764, 1710)], "source": SOURCE},
}


def _shape(config: Any) -> tuple[Any, Any, Any]:
    return (getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None),
            getattr(config, "intermediate_size", None))


def published_for(name: str, config: Any) -> tuple[str, dict[str, Any]] | None:
    """``(label, entry)`` of :data:`PUBLISHED` that ``name`` and ``config`` match, else ``None``."""
    for label, entry in PUBLISHED.items():
        if re.search(entry["name"], name, re.IGNORECASE) and getattr(config, "model_type", None) in entry["model_type"] \
                and _shape(config) == entry["shape"]:
            return label, entry
    return None


def compare(name: str, config: Any, rows: list[dict[str, Any]], layers: list[int]) -> dict[str, Any] | None:
    """For a matching model, each published weight: whether the census covered its layer, found it
    among the candidates, and its row's delta loss and causal verdict there."""
    match = published_for(name, config)
    if match is None:
        return None
    label, entry = match
    by_cell = {(r["layer"], r["row"], r["col"]): r for r in rows}
    found = []
    for layer, row, col in entry["weights"]:
        hit = by_cell.get((layer, row, col))
        found.append({"layer": layer, "row": row, "col": col, "layer_censused": layer in layers,
                      "found": hit is not None, "spike_rank": hit and hit["rank"],
                      "delta_loss": hit and hit["delta_loss"], "causal": hit and hit["causal"]})
    return {"model": label, "source": entry["source"], "weights": found}
