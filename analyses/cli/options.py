"""What the commands share: their common options (the model-loading ones declared once, by
:func:`model_command`), the parsers of option values, model loading for ``--backend``/``--remote``,
progress bars.
"""

from __future__ import annotations
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator, Optional, Sequence
import typer
from analyses.cli.app import err


ModelOpt = typer.Option("smollm2", "--model", "-m", help="'smollm2' (embedded), a local HF folder, a .gguf file or a hub id.")


DtypeOpt = typer.Option(None, "--dtype", help="float32 (default), bfloat16 or float16.")


DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, mps ...")


DownloadOpt = typer.Option(False, "--download", help="Allow fetching a hub id that is not in the local HF cache.")


RemoteCodeOpt = typer.Option(False, "--trust-remote-code", help="Run model code shipped with the checkpoint (off by default).")


JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


CorpusOpt = typer.Option("stdlib", "--corpus", help="'stdlib', a .txt/.jsonl file, or hf:NAME[:CONFIG][:SPLIT].")


SeqLenOpt = typer.Option(128, "--seq-len", help="Tokens per window, the prepended token (if any) included.")


PrependOpt = typer.Option("auto", "--prepend", help="Window protocol, the token(s) in front of every window: auto (what "
                                                    "the model's tokenizer puts in front of a plain call: BOS, or nothing), "
                                                    "none, bos, eos, a token id or a token's text. Recorded in every output.")


DeviceMapOpt = typer.Option(None, "--device-map", help="auto, balanced or sequential: accelerate spreads the layers over "
                                                       "the GPUs (then CPU RAM); replaces --device.")


class Backend(str, Enum):
    torch = "torch"
    nnsight = "nnsight"


class Remote(str, Enum):
    ndif = "ndif"
    local = "local"


BackendOpt = typer.Option(Backend.torch, "--backend", help="torch (hooks, weight edits) or nnsight (reductions and edits inside "
                                                     "the trace).")


RemoteOpt = typer.Option(None, "--remote", help="ndif: run on NDIF (the hub id's weights stay there; NDIF_API_KEY); "
                                                "local: nnsight's offline simulation of it. Implies --backend nnsight.")


def split_list(spec: str, option: str, choices: Optional[Sequence[str]] = None) -> list[str]:
    """The one comma-list parser of the CLI: ``'ppl, tasks'`` -> ``['ppl', 'tasks']`` (blanks
    dropped); with ``choices``, anything else is one clear error naming ``option``."""
    from probe.errors import ProbeError

    items = [s for s in (p.strip() for p in spec.split(",")) if s]
    if choices is not None and (bad := [s for s in items if s not in choices]):
        raise ProbeError(f"{option} {spec!r}: {', '.join(map(repr, bad))} unknown; choose from {', '.join(choices)}")
    return items


def parse_layers(spec: Optional[str]) -> Optional[list[int]]:
    """'0,5,10-12' -> [0, 5, 10, 11, 12]; None -> None (all layers)."""
    from probe.errors import LayerError

    if spec is None:
        return None
    chosen: list[int] = []
    try:
        for part in split_list(spec, "--layers"):
            lo, _, hi = part.partition("-")
            chosen.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise LayerError(f"--layers {spec!r}: use comma-separated layers or ranges like 0,5,10-12") from None
    if not chosen:
        raise LayerError(f"--layers {spec!r} names no layer")
    return chosen


@dataclass
class ModelArgs:
    """The options of every command that loads a model, as one value (see :func:`model_command`)."""

    model: str
    dtype: Optional[str] = None
    device: str = "cpu"
    download: bool = False
    trust_remote_code: bool = False
    device_map: Optional[str] = None
    backend: Backend = Backend.torch
    remote: Optional[Remote] = None

    def load_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`probe.models.load_model` besides the spec (also what Ray workers load with)."""
        return dict(dtype=self.dtype, device=self.device, allow_download=self.download,
                    trust_remote_code=self.trust_remote_code, device_map=self.device_map)

    def load(self) -> Any:
        """The model loaded here (:func:`probe.models.load_model`)."""
        from probe.models import load_model

        return load_model(self.model, **self.load_kwargs())

    def load_for(self) -> tuple[Any, str, bool | str]:
        """The model for ``--backend``/``--remote``, the backend and the ``remote`` argument of the
        API: NDIF's copy (``ndif``: nothing downloaded), or the model loaded here, wrapped once for nnsight."""
        import dataclasses

        from probe.backends import check_backend

        remote = self.remote and Remote(self.remote).value
        backend, where = check_backend("nnsight" if remote else Backend(self.backend).value, remote)
        if remote == "ndif":
            from probe.models import load_remote

            return load_remote(self.model), backend, where
        loaded = self.load()
        if backend == "nnsight":
            from probe.backends import as_nnsight

            loaded = dataclasses.replace(loaded, model=as_nnsight(loaded.model, where, loaded.tokenizer))
        return loaded, backend, where


_LOADING = [("dtype", Optional[str], DtypeOpt), ("device", str, DeviceOpt), ("download", bool, DownloadOpt),
            ("trust_remote_code", bool, RemoteCodeOpt)]
_SCALING = [("device_map", Optional[str], DeviceMapOpt), ("backend", Backend, BackendOpt),
            ("remote", Optional[Remote], RemoteOpt)]


def model_command(name: Optional[str] = None, *, scaling: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """``app.command(name)`` for a command whose parameter ``model`` is a :class:`ModelArgs`: the
    command line gets ``--model`` in its place and the loading options (with ``scaling``:
    ``--device-map``, ``--backend``, ``--remote`` too) before ``--json``, declared here once."""
    import functools
    import inspect

    from analyses.cli.app import app

    extra = _LOADING + (_SCALING if scaling else [])

    def register(fn: Callable[..., Any]) -> Any:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        kw = inspect.Parameter.KEYWORD_ONLY
        added = [inspect.Parameter(n, kw, default=opt, annotation=t) for n, t, opt in extra]
        at = next((i for i, p in enumerate(params) if p.name == "as_json"), len(params))
        params = [inspect.Parameter("model", kw, default=ModelOpt, annotation=str) if p.name == "model" else
                  p.replace(kind=kw) for p in params]
        params[at:at] = added

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            loading = {n: kwargs.pop(n) for n, _, _ in extra}
            return fn(model=ModelArgs(kwargs.pop("model"), **loading), **kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {**fn.__annotations__, "model": str, **{n: t for n, t, _ in extra}}
        return app.command(name)(command)

    return register


def load_array(path: str) -> "Any":
    """A numpy array from .npy, .npz (exactly one array) or .csv; a clear error otherwise."""
    import numpy as np

    from probe.errors import ProbeError

    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise ProbeError(f"{path} holds {len(z.files)} arrays ({', '.join(z.files)}); save exactly one")
                return z[z.files[0]]
        if path.endswith(".csv"):
            return np.loadtxt(path, delimiter=",", ndmin=2)
    except ProbeError:
        raise
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read {path}: {exc}") from None
    raise ProbeError(f"{path}: use a .npy, .npz or .csv file")


@contextmanager
def progress_bar(quiet: bool, what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (nothing when ``quiet``, or when stderr is not a terminal:
    there rich's transient bar would leave a blank line before any error); yields ``advance(n)``."""
    if quiet or not err.is_terminal:
        yield lambda n: None
        return
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def hushed(quiet: bool) -> Iterator[None]:
    """When ``quiet``: what libraries write to ``sys.stderr`` meanwhile (lm-eval's tqdm bars) is dropped."""
    import io
    from contextlib import redirect_stderr

    if not quiet:
        yield
        return
    with redirect_stderr(io.StringIO()):
        yield
