"""The census spread over Ray workers: :func:`analyses.census.census`'s table, in parallel.

:func:`census_ray` runs the scan, the spike ranking, the candidates' values and their matched
controls here (:func:`analyses.census.census.prepare`, one pass), then hands groups of layers
(``layers_per_pass`` each) to ``num_workers`` Ray actors. Each actor loads the model once
(``probe.models.load_model(model_spec, **load_kwargs)``) and evaluates a group as the serial census
does (:func:`analyses.census.census.evaluate`: the baseline recording the group's prefixes, then every
single-weight edit of each layer on copies of the windows); the rows come back in layer order and
are assembled as in the serial run. Every actor loads the same weights and runs the same
arithmetic on one thread, so the table equals the serial one bit for bit on the CPU (tested).
Where Ray runs (``address``), CPUs and GPUs per worker, and what every node needs: as
:mod:`analyses.ablate.on_ray`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from analyses.ablate.on_ray import _connect, _ray, _worker_errors
from analyses.census.census import Census, Prepared, evaluate, prepare
from analyses.census.edits import WindowLosses, layer_groups
from probe.errors import ProbeError


class CensusWorker:
    """A Ray actor's body: the model loaded once, then :func:`~analyses.census.census.evaluate` per group of layers."""

    def __init__(self, model_spec: str, load_kwargs: dict[str, Any], threads: int) -> None:
        self.model_spec, self.load_kwargs, self.threads = model_spec, load_kwargs, threads
        self.loaded: Any = None

    def load(self) -> None:
        from probe.models import load_model

        torch.set_num_threads(self.threads)
        self.loaded = load_model(self.model_spec, **self.load_kwargs)

    def evaluate(self, index: int, work: Prepared, layers: list[int], rows_per_forward: int, exact: bool,
                 layers_per_pass: int) -> tuple[int, Any, int, bool]:
        """``(index, (rows, control rows, base), forwards, shared prefixes)`` for ``layers`` of ``work``."""
        losses = WindowLosses(self.loaded.model, work.windows, rows=rows_per_forward, exact=exact)
        return index, evaluate(losses, work, layers, layers_per_pass), losses.forwards, losses.share


def census_ray(model: torch.nn.Module, tokenizer: Any, model_spec: str, load_kwargs: dict[str, Any] | None = None,
               address: str | None = None, num_workers: int = 2, cpus_per_worker: int = 1, gpus_per_worker: float = 0.0,
               name: str = "model", corpus: str = "stdlib", layers: Sequence[int] | None = None, candidates: int = 2,
               controls: int = 8, n_seqs: int = 16, seq_len: int = 128, eval_seqs: int = 8, eval_len: int = 64,
               seed: int = 0, level: float = 0.95, scan: Any = None, progress: Callable[[int], None] | None = None,
               rows_per_forward: int = 32, layers_per_pass: int = 8, exact: bool = True) -> Census:
    """:func:`analyses.census.census` with the edits on Ray actors (module docstring): ``model`` (loaded
    here from ``model_spec``) for the scan and the candidates, ``model_spec`` and ``load_kwargs`` for
    the workers. ``progress(n)``: ``n`` more edits done, as each group of layers comes back."""
    if num_workers < 1 or cpus_per_worker < 1:
        raise ProbeError(f"need at least one worker with one CPU, got num_workers={num_workers}, "
                         f"cpus_per_worker={cpus_per_worker}")
    work = prepare(model, tokenizer, name, corpus, layers, candidates, controls, n_seqs, seq_len, eval_seqs, eval_len,
                   seed, level, scan)
    groups = layer_groups(work.layers, layers_per_pass)
    ray = _ray()
    from ray.util import ActorPool

    connected = _connect(ray, address, num_workers * cpus_per_worker)
    actors: list[Any] = []
    try:
        shared = ray.put(work)
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(CensusWorker)
        actors = [actor.remote(model_spec, dict(load_kwargs or {}), cpus_per_worker)
                  for _ in range(min(num_workers, len(groups)))]
        done: dict[int, Any] = {}
        with _worker_errors(ray):
            ray.get([a.load.remote() for a in actors])
            calls = ActorPool(actors).map_unordered(
                lambda a, job: a.evaluate.remote(job[0], shared, job[1], rows_per_forward, exact, layers_per_pass),
                list(enumerate(groups)))
            for index, result, forwards, share in calls:
                done[index] = (result, forwards, share)
                if progress:
                    progress(sum(len(work.picked[L]) * (work.controls + 2) for L in groups[index]))
    finally:
        for a in actors:
            ray.kill(a)
        if connected:
            ray.shutdown()
    rows, control_rows = [], []
    for index in range(len(groups)):
        (r, c, base), _, _ = done[index]
        rows += r
        control_rows += c
    settings = {"rows_per_forward": rows_per_forward, "share_prefix": all(d[2] for d in done.values()),
                "edit": "recomputed (exact)" if exact else "subtracted", "backend": "torch", "remote": False,
                "ray": {"address": address or "local", "workers": len(actors)}}
    return work.census(rows, control_rows, done[0][0][2], settings, sum(d[1] for d in done.values()))
