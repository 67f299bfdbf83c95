#!/usr/bin/env python
"""Capture overhead and memory: ``probe.capture`` (three backends) vs TransformerLens and nnsight.

Run from the repository root::

    .venv/bin/python benchmarks/capture.py                 # 5 interleaved rounds, 8 x 128 tokens
    .venv/bin/python benchmarks/capture.py --rounds 7 --json bench.json
    .venv/bin/python benchmarks/capture.py --first-load    # also time a GGUF parse in a temp cache

What it measures, on the embedded SmolLM2-135M (float32, CPU, ``torch.no_grad``):

- load time of ``load_model("smollm2")`` in this process, and a cold-process load from the
  safetensors cache in a fresh ``python -c`` subprocess;
- the wall time of one forward pass over a real ``batch x seq`` batch of token ids (from the
  stdlib text ``pydoc_data.topics``) for each variant, in interleaved rounds after one warm-up
  each; the median per variant and its ratio to the median of the plain HF forward;
- bytes held by each variant's results after the pass (unique tensor storages);
- the peak RSS increase of each variant, each in its own subprocess (see ``--help`` epilog);
- an extrapolation of the memory column to Llama-3-8B at 8 x 2048 tokens in bf16;
- per-call timings of the reducers' ``update`` on real activations, with cheaper alternatives.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import loadavg, log  # noqa: E402

import torch  # noqa: E402

POINTS = ["blocks.*.mlp.hook_post", "blocks.*.hook_resid_post"]
MEM_MARK = "@@MEM@@"
LOAD_MARK = "@@LOAD@@"

# Llama-3-8B shapes for the extrapolation.
L3_LAYERS, L3_D_MODEL, L3_D_FF, L3_BATCH, L3_SEQ, L3_BYTES = 32, 4096, 14336, 8, 2048, 2  # bf16

MEMORY_METHOD = (
    "Peak RSS delta: each variant runs alone in a fresh subprocess (same model load and set-up as "
    "here) with MALLOC_MMAP_THRESHOLD_=131072, which pins glibc's mmap threshold so that every "
    "tensor above 128 KiB is mmapped and given back to the OS on free (otherwise freed warm-up "
    "memory stays in the heap and hides later allocations). The subprocess does one warm-up pass "
    "of the variant, drops its results, runs gc, reads VmRSS, resets the high-water mark by "
    "writing 5 to /proc/self/clear_refs, runs the measured pass keeping its results (model "
    "outputs such as logits are dropped in every variant), then reads VmHWM. Peak delta = "
    "VmHWM - VmRSS(before); held delta = VmRSS(after) - VmRSS(before). Transient tensors of the "
    "forward itself (activations, the 8x128x49152 float32 logits = 192 MiB) count in every "
    "variant's peak, so compare peaks with the plain row."
)


# ------------------------------------------------------------------------------------------
# set-up
# ------------------------------------------------------------------------------------------
def make_ids(tokenizer: Any, batch: int, seq: int) -> torch.Tensor:
    """``batch x seq`` real token ids from the stdlib text ``pydoc_data.topics.topics``."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics.values())
    ids = tokenizer(text, add_special_tokens=False).input_ids
    need = batch * seq
    if len(ids) < need:
        raise SystemExit(f"pydoc_data.topics gives only {len(ids)} tokens, need {need}")
    return torch.tensor(ids[:need], dtype=torch.long).reshape(batch, seq)


def hook_names(n_layers: int) -> list[str]:
    return [f"blocks.{i}.{s}" for i in range(n_layers) for s in ("mlp.hook_post", "hook_resid_post")]


def make_reduce() -> dict[str, Any]:
    from probe.reducers import MaxMedian, TopK

    return {"topk": TopK(5), "maxmedian": MaxMedian()}


def nnsight_patched_modules(model: torch.nn.Module) -> int:
    """Submodules whose ``forward`` is an instance attribute (NNsight wraps them that way)."""
    return sum("forward" in m.__dict__ for m in model.modules())


# ------------------------------------------------------------------------------------------
# variants: each returns what it holds after the pass (None: nothing)
# ------------------------------------------------------------------------------------------
def nnsight_save(nn_model: Any, ids: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """nnsight 0.8: save the down-projection input and the block output of every layer."""
    saved = []
    with nn_model.trace(ids):
        for i in range(n_layers):
            layer = nn_model.model.layers[i]
            saved.append(layer.mlp.down_proj.input.save())
            saved.append(layer.output.save())
    return [s[0] if isinstance(s, tuple) else s for s in saved]


def build_variants(ctx: dict[str, Any], extras: bool, ablation: bool = False) -> dict[str, Callable[[], Any]]:
    from probe.capture import capture
    from probe.reducers import MaxMedian, Reducer, TopK

    class NoOp(Reducer):
        name = "noop"

        def update(self, x: torch.Tensor, batch: Any) -> None:
            pass

        def result(self) -> None:
            return None

    ids, names = ctx["ids"], set(ctx["names"])
    variants: dict[str, Callable[[], Any]] = {}

    if "model" in ctx:
        model = ctx["model"]

        def plain() -> None:
            model(ids)

        def ours_torch() -> Any:
            with capture(model, POINTS, reduce=make_reduce(), backend="torch") as cap:
                cap.run(ids)
            return cap

        def ours_torch_stride() -> Any:
            with capture(model, POINTS, reduce={"topk": TopK(5), "maxmedian": MaxMedian(stride=7)}, backend="torch") as cap:
                cap.run(ids)
            return cap

        variants["plain"] = plain
        variants["ours-torch"] = ours_torch
        variants["ours-torch, MaxMedian(stride=7)"] = ours_torch_stride
        if ablation:
            for label, make in (("no-op reducer", NoOp), ("TopK(5) only", lambda: TopK(5)),
                                ("MaxMedian only", MaxMedian)):
                def ablated(make: Callable[[], Any] = make) -> Any:
                    with capture(model, POINTS, reduce=make(), backend="torch") as cap:
                        cap.run(ids)
                    return cap

                variants[f"ours-torch: {label} (ablation)"] = ablated

    if "nn_model" in ctx:
        nn_model = ctx["nn_model"]

        def ours_nnsight() -> Any:
            with capture(nn_model, POINTS, reduce=make_reduce(), backend="nnsight") as cap:
                cap.run(ids)
            return cap

        variants["ours-nnsight"] = ours_nnsight

    if "bridge" in ctx:
        bridge = ctx["bridge"]

        def ours_tl() -> Any:
            with capture(bridge, POINTS, reduce=make_reduce(), backend="transformer_lens") as cap:
                cap.run(ids)
            return cap

        def tl_run_with_cache() -> Any:
            _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
            return cache

        variants["ours-TL"] = ours_tl
        variants["TL run_with_cache"] = tl_run_with_cache

    if "nn_model" in ctx:
        n_layers = ctx["n_layers"]

        def nn_save() -> Any:
            return nnsight_save(nn_model, ids, n_layers)

        variants["nnsight save"] = nn_save

    if extras and "bridge" in ctx:
        def bridge_forward() -> None:
            bridge(ids)

        variants["TL bridge forward without hooks (extra)"] = bridge_forward
    if extras and "nn_model" in ctx:
        wrapped_hf = ctx["nn_model"]._module

        def wrapped_plain() -> None:
            wrapped_hf(ids)

        variants["plain on nnsight-wrapped instance (extra)"] = wrapped_plain
    return variants


# ------------------------------------------------------------------------------------------
# bytes held
# ------------------------------------------------------------------------------------------
def held_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor reachable from a variant's result (Capture, ActivationCache, list, ...)."""
    from probe.capture import Capture

    out: list[torch.Tensor] = []
    stack = [obj.results if isinstance(obj, Capture) else obj]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif hasattr(item, "cache_dict"):  # transformer_lens.ActivationCache
            stack.extend(item.cache_dict.values())
    return out


def bytes_held(obj: Any) -> int:
    """Bytes of the unique storages behind the tensors of ``obj`` (views counted once)."""
    storages: dict[int, int] = {}
    for t in held_tensors(obj):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def per_point_bytes(cap: Any) -> dict[str, int]:
    return {name: bytes_held(res) for name, res in cap.results.items()}


# ------------------------------------------------------------------------------------------
# subprocess measurements
# ------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def mem_worker(variant: str, batch: int, seq: int) -> None:
    """Child process: set up only what ``variant`` needs, warm up, measure one pass."""
    from probe.models import load_model

    lm = load_model("smollm2")
    model = lm.model
    ctx: dict[str, Any] = {"ids": make_ids(lm.tokenizer, batch, seq), "n_layers": model.config.num_hidden_layers}
    ctx["names"] = hook_names(ctx["n_layers"])
    if "TL" in variant:
        from probe.backends import as_bridge

        ctx["bridge"] = as_bridge(model)
        del model, lm
    elif "nnsight" in variant:
        from probe.backends import as_nnsight

        ctx["nn_model"] = as_nnsight(model)
        del model, lm
    else:
        ctx["model"] = model
    fn = build_variants(ctx, extras=True, ablation=True)[variant]
    with torch.no_grad():
        fn()  # warm-up; result dropped
        gc.collect()
        before = _status_kib("VmRSS")
        method = "clear_refs"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            method = "ru_maxrss (no reset possible: peak may be the set-up peak)"
        kept = fn()
        gc.collect()
        peak = _status_kib("VmHWM")
        after = _status_kib("VmRSS")
    del kept
    print(MEM_MARK + json.dumps({
        "rss_before": before * 1024, "peak": peak * 1024, "rss_after": after * 1024,
        "peak_delta": (peak - before) * 1024, "held_delta": (after - before) * 1024, "method": method,
    }))


def run_mem_worker(variant: str, batch: int, seq: int) -> dict[str, Any]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--mem-worker", variant, "--batch", str(batch), "--seq", str(seq),
           "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith(MEM_MARK):
            return json.loads(line[len(MEM_MARK):])
    return {"error": (proc.stderr or proc.stdout)[-2000:]}


LOAD_SNIPPET = """
import json, time
t0 = time.perf_counter()
from probe.models import load_model
t1 = time.perf_counter()
lm = load_model("smollm2")
t2 = time.perf_counter()
print({mark!r} + json.dumps({{"import_s": t1 - t0, "load_model_s": lm.load_seconds, "in_process_s": t2 - t0, "notes": lm.notes}}))
"""


def cold_load(cache: str | None = None) -> dict[str, Any]:
    """``load_model("smollm2")`` in a fresh interpreter; ``cache`` overrides ``$PROBE_CACHE``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if cache is not None:
        env["PROBE_CACHE"] = cache
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LOAD_SNIPPET.format(mark=LOAD_MARK)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith(LOAD_MARK):
            return {**json.loads(line[len(LOAD_MARK):]), "process_wall_s": wall}
    return {"error": (proc.stderr or proc.stdout)[-2000:], "process_wall_s": wall}


# ------------------------------------------------------------------------------------------
# reducer micro-benchmarks
# ------------------------------------------------------------------------------------------
def _median_time(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def profile_reducers(model: torch.nn.Module, ids: torch.Tensor, reps: int) -> dict[str, Any]:
    """Per-call cost of each reducer's ``update`` on real activations of a middle layer, its
    steps, and cheaper alternatives that give the same results."""
    from probe.hookpoints import resolve
    from probe.reducers import _BINS, Batch, MaxMedian, TopK

    mid = model.config.num_hidden_layers // 2
    grabbed: dict[str, torch.Tensor] = {}
    handles = []
    for point in resolve(model, [f"blocks.{mid}.mlp.hook_post", f"blocks.{mid}.hook_resid_post"]):
        key = point.name.split(".", 2)[-1]
        if point.side == "input":
            handles.append(point.module.register_forward_pre_hook(
                lambda m, a, kw, p=point, k=key: grabbed.__setitem__(k, p.get((a, kw)).clone()), with_kwargs=True))
        else:
            handles.append(point.module.register_forward_hook(
                lambda m, a, o, p=point, k=key: grabbed.__setitem__(k, p.get(o).clone())))
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()

    out: dict[str, Any] = {"layer": mid, "reps": reps, "shapes": {}}
    batch = Batch(ids, 0, None)
    k = 5
    with torch.no_grad():
        for key, x in grabbed.items():
            topk, mm = TopK(k), MaxMedian()
            a = x.abs()
            rows = a.reshape(-1, a.shape[-1])
            rowmax = rows.amax(-1)
            best = rowmax.topk(k).indices
            top, flat = rows[best].reshape(-1).topk(k)
            row, col = best[flat // rows.shape[-1]], flat % rows.shape[-1]

            def topk_indices() -> Any:  # TopK.update after the search: indices, values, tokens
                idx = torch.stack(torch.unravel_index(row, a.shape[:-1]) + (col,), dim=1).cpu()
                vals = x.reshape(-1, x.shape[-1])[row, col].float().cpu()
                keep = top.cpu() >= 0
                idx, vals = idx[keep], vals[keep]
                idx[:, 0] += 0
                return vals, idx, ids.cpu()[idx[:, 0], idx[:, 1]]

            vals, idx, toks = topk_indices()
            bits = a.reshape(-1).view(torch.int32) >> 16
            r: dict[str, float] = {
                "TopK.update": _median_time(lambda: topk.update(x, batch), reps),
                "  topk: x.abs()": _median_time(lambda: x.abs(), reps),
                "  topk: rows.amax(-1)": _median_time(lambda: rows.amax(-1), reps),
                "  topk: topk of row maxima + search of k rows": _median_time(
                    lambda: rows[rowmax.topk(k).indices].reshape(-1).topk(k), reps),
                "  topk: unravel/stack/gather/.cpu()/tokens": _median_time(topk_indices, reps),
                "  topk: _merge (cat + topk + gathers)": _median_time(lambda: topk._merge(vals, idx, toks), reps),
                "MaxMedian.update": _median_time(lambda: mm.update(x, batch), reps),
                "  maxmedian: x.abs().float()": _median_time(lambda: x.abs().float(), reps),
                "  maxmedian: view(int32) >> 16": _median_time(lambda: a.reshape(-1).view(torch.int32) >> 16, reps),
                "  maxmedian: bincount(minlength=32768)": _median_time(
                    lambda: torch.bincount(bits, minlength=_BINS), reps),
                "  maxmedian: float(a.max())": _median_time(lambda: float(a.max()), reps),
                "  maxmedian: hist += (int64, 4097)": _median_time(lambda: mm._hist.add_(0), reps),
            }

            # alternatives with identical results
            def maxmedian_bits() -> tuple[torch.Tensor, int]:
                b = x.reshape(-1).view(torch.int32) & 0x7FFFFFFF  # |x| as int32, ordered like |x|
                return torch.bincount(b >> 16, minlength=_BINS), int(b.max())

            xb = x.to(torch.bfloat16)

            def bf16_current() -> torch.Tensor:
                return torch.bincount(xb.abs().float().reshape(-1).view(torch.int32) >> 16, minlength=_BINS)

            def bf16_bits() -> torch.Tensor:  # a bf16 value is the top 16 bits of its float32
                return torch.bincount((xb.reshape(-1).view(torch.int16) & 0x7FFF).to(torch.int32), minlength=_BINS)

            r["alt: MaxMedian from sign-cleared int32 bits (no abs/float/max passes)"] = _median_time(maxmedian_bits, reps)
            r["bf16 input: current histogram path"] = _median_time(bf16_current, reps)
            r["alt: bf16 input, bin = bf16 bits & 0x7FFF"] = _median_time(bf16_bits, reps)
            alt_hist, alt_top = maxmedian_bits()
            alt_max = torch.tensor([alt_top], dtype=torch.int32).view(torch.float32).item()
            out["shapes"][key] = {
                "shape": list(x.shape),
                "seconds": r,
                "alt_checks": {
                    "bits histogram equal": bool(torch.equal(torch.bincount(bits, minlength=_BINS), alt_hist)),
                    "bits max equal": alt_max == float(a.max()),
                    "bf16 bits histogram equal": bool(torch.equal(bf16_current(), bf16_bits())),
                },
            }
    return out


# ------------------------------------------------------------------------------------------
# report helpers
# ------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "transformer_lens": version("transformer-lens"),
        "nnsight": version("nnsight"),
        "platform": platform.platform(),
    }


def mib(n: float | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB" if abs(n) >= 1 << 20 else f"{n / 1024:.1f} KiB"


def cpu_jiffies() -> tuple[int, int, int]:
    """(busy, idle, steal) jiffies of the whole machine from /proc/stat (zeros where unreadable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]) - idle - steal, idle, steal


# ------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=MEMORY_METHOD)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (default 5)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the two reference rows (bridge forward without hooks, plain forward "
                             "of the nnsight-wrapped instance)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--ablation", action="store_true",
                        help="add ours-torch rows with a no-op reducer, TopK only and MaxMedian only")
    parser.add_argument("--variants",
                        help="comma-separated subset of rows to run, e.g. 'plain,ours-torch' (plain is always run)")
    parser.add_argument("--first-load", action="store_true",
                        help="also time a first load (GGUF parse) in a subprocess with a temporary PROBE_CACHE")
    parser.add_argument("--profile-reps", type=int, default=15, help="repetitions per reducer micro-benchmark")
    parser.add_argument("--threads", type=int,
                        help="torch.set_num_threads for this run and its subprocesses (default: torch's default)")
    parser.add_argument("--mem-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.mem_worker:
        mem_worker(args.mem_worker, args.batch, args.seq)
        return

    from probe.backends import as_bridge, as_nnsight
    from probe.models import load_model

    started = datetime.datetime.now().astimezone()
    info: dict[str, Any] = {"date": started.isoformat(timespec="seconds"), "machine": machine(),
                            "loadavg_start": loadavg(), "args": {k: str(v) for k, v in vars(args).items()}}

    # --- loading -------------------------------------------------------------------------
    log("loading smollm2 ...")
    lm = load_model("smollm2")
    load = {"in_process_s": lm.load_seconds, "notes": lm.notes}
    parsed = [n for n in lm.notes if n.startswith("parsed")]
    if parsed:
        load["first_load_s"] = lm.load_seconds
    log("cold-process load from the safetensors cache ...")
    load["cold_cached"] = cold_load()
    if args.first_load:
        log("first load (GGUF parse) into a temporary cache ...")
        with tempfile.TemporaryDirectory(prefix="probe-bench-cache-") as tmp:
            load["first_load_subprocess"] = cold_load(tmp)
    info["load"] = load

    model = lm.model
    n_layers = model.config.num_hidden_layers
    ids = make_ids(lm.tokenizer, args.batch, args.seq)
    names = hook_names(n_layers)
    info["model"] = {"source": lm.source, "n_layers": n_layers, "d_model": model.config.hidden_size,
                     "d_ff": model.config.intermediate_size, "dtype": str(next(model.parameters()).dtype),
                     "n_params": sum(p.numel() for p in model.parameters())}
    info["input"] = {"shape": list(ids.shape), "first_tokens": lm.tokenizer.decode(ids[0, :16])}

    log("building the TransformerLens bridge (deep copy) ...")
    t = time.perf_counter()
    bridge = as_bridge(model)
    info["bridge_build_s"] = time.perf_counter() - t
    # NNsight replaces the forward of every submodule of the model it wraps; keep it off the
    # model that the plain and ours-torch rows use.
    patched_before = nnsight_patched_modules(model)
    log("second load_model for nnsight ...")
    nn_hf = load_model("smollm2").model
    t = time.perf_counter()
    nn_model = as_nnsight(nn_hf)
    info["nnsight"] = {"wrap_s": time.perf_counter() - t, "patched_forwards_on_wrapped": nnsight_patched_modules(nn_hf),
                       "patched_forwards_on_plain_model": patched_before,
                       "note": "NNsight patches forward on every submodule of the model it wraps, so the "
                               "nnsight rows use a second load_model instance; the plain model stays untouched."}

    ctx = {"model": model, "bridge": bridge, "nn_model": nn_model, "ids": ids, "names": names, "n_layers": n_layers}
    variants = build_variants(ctx, extras=not args.no_extras, ablation=args.ablation)
    if args.variants:
        wanted = {"plain", *(v.strip() for v in args.variants.split(","))}
        unknown = wanted - set(variants)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in wanted}

    # --- timing --------------------------------------------------------------------------
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    held: dict[str, int] = {}
    ours_points: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        for name, fn in variants.items():
            log(f"warm-up: {name}")
            result = fn()
            held[name] = bytes_held(result)
            if name.startswith("ours"):
                ours_points[name] = per_point_bytes(result)
            if name == "TL run_with_cache":
                assert len(result.cache_dict) == len(names), sorted(result.cache_dict)[:5]
            if name == "nnsight save":
                assert len(result) == len(names)
            del result
            gc.collect()
        jiffies0, own0, wall0 = cpu_jiffies(), os.times(), time.perf_counter()
        for r in range(args.rounds):
            for name, fn in variants.items():
                c = time.process_time()
                t = time.perf_counter()
                result = fn()
                times[name].append(time.perf_counter() - t)
                cpu_times[name].append(time.process_time() - c)
                del result
            gc.collect()
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n}={times[n][-1]:.2f}s" for n in variants))

    # Noise: CPU time the rest of the machine used while we timed, and time stolen by the host.
    jiffies1, own1, wall1 = cpu_jiffies(), os.times(), time.perf_counter()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy_s = (jiffies1[0] - jiffies0[0]) / hz
    own_s = (own1.user + own1.system) - (own0.user + own0.system)
    info["noise"] = {"timing_wall_s": wall1 - wall0, "machine_busy_cpu_s": busy_s, "own_cpu_s": own_s,
                     "other_processes_cpu_s": max(busy_s - own_s, 0.0),
                     "steal_s": (jiffies1[2] - jiffies0[2]) / hz}

    plain_med = statistics.median(times["plain"])
    plain_cpu = statistics.median(cpu_times["plain"])
    rows: dict[str, dict[str, Any]] = {}
    for name in variants:
        med = statistics.median(times[name])
        paired = [v / p for v, p in zip(times[name], times["plain"])]
        rows[name] = {"median_s": med, "ratio": med / plain_med, "paired_ratio_median": statistics.median(paired),
                      "min_s": min(times[name]), "max_s": max(times[name]), "min_ratio": min(times[name]) / min(times["plain"]),
                      "times_s": times[name], "cpu_median_s": statistics.median(cpu_times[name]),
                      "cpu_ratio": statistics.median(cpu_times[name]) / plain_cpu, "cpu_times_s": cpu_times[name],
                      "bytes_held": held[name]}

    # --- memory --------------------------------------------------------------------------
    if not args.no_memory:
        for name in variants:
            log(f"peak RSS subprocess: {name}")
            rows[name]["memory"] = run_mem_worker(name, args.batch, args.seq)

    # --- reducer profile -----------------------------------------------------------------
    log("reducer micro-benchmarks ...")
    profile = profile_reducers(model, ids, args.profile_reps)
    info["loadavg_end"] = loadavg()

    # --- extrapolation -------------------------------------------------------------------
    tokens_8b = L3_BATCH * L3_SEQ
    full_post = L3_LAYERS * tokens_8b * L3_D_FF * L3_BYTES
    full_resid = L3_LAYERS * tokens_8b * L3_D_MODEL * L3_BYTES
    pts = ours_points.get("ours-torch") or next(iter(ours_points.values()), {})
    post_pt = statistics.mean(v for k, v in pts.items() if k.endswith("mlp.hook_post")) if pts else 0
    resid_pt = statistics.mean(v for k, v in pts.items() if k.endswith("hook_resid_post")) if pts else 0
    ours_8b = L3_LAYERS * (post_pt + resid_pt)
    extrap = {
        "model": "Llama-3-8B", "layers": L3_LAYERS, "d_model": L3_D_MODEL, "d_ff": L3_D_FF,
        "tokens": f"{L3_BATCH} x {L3_SEQ}", "dtype": "bf16",
        "full_cache_bytes": full_post + full_resid, "full_cache_mlp_hook_post_bytes": full_post,
        "full_cache_resid_post_bytes": full_resid, "ours_bytes": ours_8b,
        "ours_bytes_per_point": {"mlp.hook_post": post_pt, "hook_resid_post": resid_pt},
        "ratio": ours_8b / (full_post + full_resid),
        "note": "ours: TopK(5) keeps 5 float32 values, 5x3 int64 indices and 5 int64 tokens; MaxMedian a "
                "4097-bin int64 histogram (32 KiB); neither depends on d_model, d_ff or token count.",
    }

    # --- report --------------------------------------------------------------------------
    m = info["machine"]
    lines = [
        "# probe.capture benchmark",
        "",
        f"- date: {info['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable, torch threads {m['torch_threads']}), "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"transformer-lens {m['transformer_lens']}, nnsight {m['nnsight']}",
        f"- load average: {info['loadavg_start']} at start, {info['loadavg_end']} at end (other processes add noise)",
        f"- model: SmolLM2-135M-Instruct, {n_layers} layers, d_model {info['model']['d_model']}, "
        f"d_ff {info['model']['d_ff']}, {info['model']['dtype']}, CPU; input {args.batch} x {args.seq} tokens "
        "of pydoc_data.topics",
        f"- hook points: {len(names)} ({', '.join(POINTS)}); reducers TopK(5) + MaxMedian() (MaxMedian(stride=7) in its own row)",
    ]
    cold = load["cold_cached"]
    lines.append(f"- load_model('smollm2') in this process: {load['in_process_s']:.2f} s ({'; '.join(lm.notes)})")
    if "error" in cold:
        lines.append(f"- cold-process cached load: failed: {cold['error'][-300:]}")
    else:
        lines.append(f"- cold-process cached load (fresh `python -c`): load_model {cold['load_model_s']:.2f} s, "
                     f"import probe.models {cold['import_s']:.2f} s, whole process {cold['process_wall_s']:.2f} s")
    if "first_load_s" in load:
        lines.append(f"- first load (GGUF parsed in this run): {load['first_load_s']:.1f} s")
    if "first_load_subprocess" in load:
        fl = load["first_load_subprocess"]
        lines.append(f"- first load in a temp cache (GGUF parse + safetensors write): "
                     f"{fl.get('load_model_s', float('nan')):.1f} s, whole process {fl['process_wall_s']:.1f} s")
    lines.append(f"- TL bridge build (deep copy, outside timing): {info['bridge_build_s']:.1f} s; nnsight rows use a "
                 f"second model instance (NNsight patches forward on {info['nnsight']['patched_forwards_on_wrapped']} "
                 f"submodules of the model it wraps)")
    lines += [
        "",
        f"Timings: {args.rounds} interleaved rounds after one warm-up each, torch.no_grad, median per variant; "
        "ratio = median / plain median.",
        "",
        "| variant | median s | ratio to plain | bytes held | peak RSS delta |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        mem = row.get("memory", {})
        peak = mib(mem["peak_delta"]) if "peak_delta" in mem else ("error" if "error" in mem else "-")
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['ratio']:.3f}x | {mib(row['bytes_held'])} | {peak} |")
    ours_b, tl_b = held.get("ours-torch"), held.get("TL run_with_cache")
    if ours_b and tl_b:
        lines.append("")
        lines.append(f"Bytes held, ours / TL run_with_cache: {ours_b} / {tl_b} = {ours_b / tl_b:.4f} "
                     f"(TL holds {tl_b / ours_b:.1f}x as many bytes); the histograms (4097 x int64 per point) are "
                     f"{len(names) * 4097 * 8 / ours_b:.1%} of ours.")
    noise = info["noise"]
    lines += ["", "Per-round wall seconds; other estimators of the ratio to plain: the median of per-round ratios "
              "(paired), min / plain min, and the median process CPU time (both threads; not counting time "
              "the process waited for a CPU):", ""]
    for name, row in rows.items():
        lines.append(f"- {name}: " + ", ".join(f"{t:.2f}" for t in row["times_s"])
                     + f" | paired {row['paired_ratio_median']:.3f}x, min {row['min_s']:.2f} s ({row['min_ratio']:.3f}x),"
                     f" CPU {row['cpu_median_s']:.2f} s ({row['cpu_ratio']:.3f}x)")
    lines += ["", f"Noise during the timed rounds ({noise['timing_wall_s']:.0f} s wall): this process used "
              f"{noise['own_cpu_s']:.0f} CPU s, other processes {noise['other_processes_cpu_s']:.0f} CPU s, "
              f"host steal {noise['steal_s']:.0f} s (of {noise['timing_wall_s'] * (os.cpu_count() or 1):.0f} CPU s available)."]
    if not args.no_memory:
        lines += ["", "Memory details (subprocess per variant):", "",
                  "| variant | RSS before | peak delta | held delta after pass |", "|---|---:|---:|---:|"]
        for name, row in rows.items():
            mem = row.get("memory", {})
            if "error" in mem:
                lines.append(f"| {name} | error | {mem['error'][-120:]!r} | |")
            else:
                lines.append(f"| {name} | {mib(mem['rss_before'])} | {mib(mem['peak_delta'])} | {mib(mem['held_delta'])} |")
        lines += ["", MEMORY_METHOD]
    lines += [
        "",
        f"Extrapolation to Llama-3-8B ({L3_LAYERS} layers, d_model {L3_D_MODEL}, d_ff {L3_D_FF}), "
        f"{L3_BATCH} x {L3_SEQ} tokens, bf16:",
        "",
        f"- full cache of mlp.hook_post + hook_resid_post, all layers: {full_post + full_resid:,} B = "
        f"{(full_post + full_resid) / 1e9:.1f} GB ({mib(full_post + full_resid)}); mlp.hook_post alone "
        f"{full_post / 1e9:.1f} GB, hook_resid_post alone {full_resid / 1e9:.1f} GB",
        f"- ours (TopK(5) + MaxMedian, {2 * L3_LAYERS} points x {post_pt:,.0f} B): {ours_8b:,.0f} B = {mib(ours_8b)} "
        f"({extrap['ratio']:.2e} of the full cache)",
        "",
        f"Reducer micro-benchmarks: one update on real activations of layer {profile['layer']} "
        f"(median of {profile['reps']}), ms per call:",
        "",
    ]
    keys = list(profile["shapes"])
    lines.append("| step | " + " | ".join(f"{k} {tuple(profile['shapes'][k]['shape'])}" for k in keys) + " |")
    lines.append("|---|" + "---:|" * len(keys))
    for step in profile["shapes"][keys[0]]["seconds"]:
        lines.append(f"| {step} | " + " | ".join(f"{profile['shapes'][k]['seconds'][step] * 1e3:.2f}" for k in keys) + " |")
    per_fwd = sum(n_layers * (s["seconds"]["TopK.update"] + s["seconds"]["MaxMedian.update"])
                  for s in profile["shapes"].values())
    per_fwd_topk = sum(n_layers * s["seconds"]["TopK.update"] for s in profile["shapes"].values())
    per_fwd_bincount = sum(n_layers * s["seconds"]["  maxmedian: bincount(minlength=32768)"]
                           for s in profile["shapes"].values())
    per_fwd_alt = sum(n_layers * (s["seconds"]["TopK.update"]
                                  + s["seconds"]["alt: MaxMedian from sign-cleared int32 bits (no abs/float/max passes)"])
                      for s in profile["shapes"].values())
    lines += [
        "",
        f"- reducers' sum per forward ({n_layers} layers x both points): {per_fwd:.3f} s = "
        f"{per_fwd / plain_med:.1%} of the plain median; measured ours-torch - plain: "
        + (f"{rows['ours-torch']['median_s'] - plain_med:+.3f} s" if "ours-torch" in rows else "not run"),
        f"- of which TopK {per_fwd_topk:.3f} s, MaxMedian {per_fwd - per_fwd_topk:.3f} s "
        f"(bincount alone {per_fwd_bincount:.3f} s)",
        f"- with MaxMedian on sign-cleared bits: {per_fwd_alt:.3f} s per forward",
        "- alternative checks: " + "; ".join(f"{k}: {v['alt_checks']}" for k, v in profile["shapes"].items()),
    ]
    report = "\n".join(lines)
    print(report)

    if args.json:
        payload = {**info, "rows": rows, "ours_vs_tl_bytes": (ours_b / tl_b) if ours_b and tl_b else None,
                   "ours_points_bytes": ours_points.get("ours-torch"), "extrapolation": extrap,
                   "reducer_profile": profile, "memory_method": MEMORY_METHOD, "report_markdown": report}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
