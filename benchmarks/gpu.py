#!/usr/bin/env python
"""Capture and perplexity throughput on a GPU: tokens/s and the ratio to a plain forward pass.

Run from the repository root on a machine with CUDA::

    .venv/bin/python benchmarks/gpu.py                                   # smollm2, bf16, 8 x 512 tokens
    .venv/bin/python benchmarks/gpu.py --model meta-llama/Meta-Llama-3-8B --batch 8 --seq 2048 --nnsight
    .venv/bin/python benchmarks/gpu.py --model org/big --device-map auto  # spread over every GPU

Without CUDA it prints why and exits 0 (``--device cpu`` runs the same code on the CPU, to check
the script). Rows, timed in interleaved rounds after one warm-up each (``torch.cuda.synchronize``
around every call; median per row; ratio = median / median of the plain forward on the same ids):

- the capture benchmark's variants (:func:`benchmarks.capture.build_variants`): plain forward,
  ``probe.capture`` with TopK(5) + MaxMedian on ``mlp.hook_post`` and ``hook_resid_post`` of every
  layer, the same with MaxMedian(stride=7), and with ``--nnsight`` ours-nnsight and a plain
  nnsight trace saving both points (on a second model instance);
- the perplexity benchmark: :func:`analyses.evaluate.likelihood.perplexity` on the same ids (one batch),
  whose extra cost over the plain forward is the float32 log-softmax over the vocabulary;
- with ``--lid N`` (default 20,000): exact kNN and local TwoNN of N points on the device (the
  torch path of :func:`analyses.geometry.lid.knn`) against faiss' ``IndexFlatL2`` on the CPU (and
  ``GpuIndexFlatL2`` where faiss-gpu is installed), with a check that the indices equal the CPU path's.

Peak GPU memory per row is ``torch.cuda.max_memory_allocated`` during the row's last call,
minus the memory held before it (weights).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.capture import build_variants, hook_names, machine, make_ids, mib  # noqa: E402
from benchmarks.common import loadavg, log  # noqa: E402

import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def time_rows(rows: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Median wall time and peak extra memory of each row, in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    peaks: dict[str, int] = {}
    with torch.no_grad():
        for name, fn in rows.items():
            log(f"warm-up: {name}")
            fn()
        _sync(device)
        for r in range(rounds):
            for name, fn in rows.items():
                _sync(device)
                held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
                _reset_peak(device)
                start = time.perf_counter()
                result = fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
                peaks[name] = _peak(device) - held
                del result
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n}={times[n][-1] * 1e3:.1f}ms" for n in rows))
    return {name: {"median_s": statistics.median(t), "times_s": t, "peak_extra_bytes": peaks[name]}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="load_model spec (default: the embedded smollm2)")
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 (default), float16 or float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512, help="tokens per row; n tokens = batch x seq")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    parser.add_argument("--device-map", help="e.g. auto: load with accelerate's placement instead of --device")
    parser.add_argument("--nnsight", action="store_true", help="add the nnsight rows (loads a second model instance)")
    parser.add_argument("--download", action="store_true", help="allow fetching --model from the HF hub")
    parser.add_argument("--lid", type=int, default=20000, metavar="N",
                        help="also time exact kNN and local TwoNN of N points on the device (0: skip)")
    args = parser.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: skipped, CUDA is not available (torch {torch.__version__}); "
              "run it on a GPU machine, or pass --device cpu for a dry run")
        return

    from analyses.evaluate import perplexity
    from probe.backends import as_nnsight
    from probe.models import load_model

    load = {"dtype": args.dtype, "allow_download": args.download}
    load |= {"device_map": args.device_map} if args.device_map else {"device": args.device}
    started = datetime.datetime.now().astimezone()
    log(f"loading {args.model} ...")
    lm = load_model(args.model, **load)
    model = lm.model
    device = next(model.parameters()).device
    n_layers = model.config.num_hidden_layers
    ids = make_ids(lm.tokenizer, args.batch, args.seq).to(device)
    ctx: dict[str, Any] = {"model": model, "ids": ids, "names": hook_names(n_layers), "n_layers": n_layers}
    if args.nnsight:
        log("second instance for nnsight ...")
        ctx["nn_model"] = as_nnsight(load_model(args.model, **load).model)
    rows = build_variants(ctx, extras=False)
    rows["perplexity (analyses.evaluate)"] = lambda: perplexity(model, ids, batch_size=args.batch)
    results = time_rows(rows, args.rounds, device)

    n_tokens = ids.numel()
    plain = results["plain"]["median_s"]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()["cpu"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    lines = [
        "# GPU benchmark: capture and perplexity",
        "",
        f"- date: {started.isoformat(timespec='seconds')}; device: {gpu}; torch {torch.__version__}; load average {loadavg()}",
        f"- model: {args.model} ({lm.source}), {n_layers} layers, {args.dtype}, weights {mib(weights)}"
        + (f", device_map={args.device_map}" if args.device_map else f", on {device}"),
        f"- input: {args.batch} x {args.seq} = {n_tokens} tokens of pydoc_data.topics; {args.rounds} interleaved rounds "
        "after one warm-up, median per row",
        "",
        "| row | median ms | tokens/s | ratio to plain | peak extra memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        med = row["median_s"]
        peak = mib(row["peak_extra_bytes"]) if device.type == "cuda" else "-"
        lines.append(f"| {name} | {med * 1e3:.1f} | {n_tokens / med:,.0f} | {med / plain:.3f}x | {peak} |")
    print("\n".join(lines))
    if args.lid:
        print("\n".join(lid_rows(args.lid, args.rounds, device)))


def lid_rows(n: int, rounds: int, device: torch.device) -> list[str]:
    """Exact kNN (k = 100) and local TwoNN of ``n`` points in D = 576 on ``device`` (the torch
    path of :func:`analyses.geometry.lid.knn`), against the same kNN by faiss' ``IndexFlatL2`` on
    the CPU (or faiss-gpu when installed); interleaved rounds, medians."""
    import faiss
    import numpy as np

    from analyses.geometry import lid
    from benchmarks.lid import K, faiss_knn, make_data

    X = make_data(n)
    rows: dict[str, Callable[[], Any]] = {"faiss IndexFlatL2 (CPU floor)": lambda: faiss_knn(X, K)}
    if hasattr(faiss, "StandardGpuResources") and device.type == "cuda":
        res = faiss.StandardGpuResources()

        def gpu_flat() -> Any:
            index = faiss.GpuIndexFlatL2(res, X.shape[1])
            index.add(X)
            return index.search(X, K + 1)

        rows["faiss GpuIndexFlatL2"] = gpu_flat
    rows[f"lid.knn on {device.type}"] = lambda: lid.knn(X, K, device=str(device))
    rows[f"LocalTwoNN.fit on {device.type}"] = lambda: lid.LocalTwoNN(n_neighbors=K, max_points=None,
                                                                     device=str(device)).fit(X)
    found = time_rows(rows, rounds, device)
    ours = lid.knn(X, K, device=str(device))[1]
    exact = np.array_equal(ours, lid.knn(X, K, device="cpu")[1])
    out = ["", f"# Exact kNN and local TwoNN, N = {n}, D = {X.shape[1]}, k = {K}", "",
           f"indices equal to the CPU path: {exact}", "", "| row | median s |", "|---|---:|"]
    return out + [f"| {name} | {row['median_s']:.3f} |" for name, row in found.items()]


if __name__ == "__main__":
    main()
