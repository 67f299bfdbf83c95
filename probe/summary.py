"""What ``probe info`` shows: the architecture summary and hook-point names of a loaded model."""

from __future__ import annotations

import re
from typing import Any

from probe.arch import d_ff, decoder_layers
from probe.hookpoints import hook_points
from probe.models import LoadedModel


def summarize(loaded: LoadedModel) -> dict[str, Any]:
    """JSON-safe facts about the model: family, sizes, MLP kind, load time, hook-point names
    (block points written once as ``blocks.{l}.…``)."""
    model, arch = loaded.model, loaded.arch
    config = model.config
    names: list[str] = []
    for name in hook_points(model):
        generic = re.sub(r"^blocks\.\d+\.", "blocks.{l}.", name)
        if generic not in names:
            names.append(generic)
    return {
        "model": loaded.spec,
        "source": loaded.source,
        "family": arch.name,
        "model_type": config.model_type,
        "n_layers": len(decoder_layers(model, arch)),
        "d_model": int(model.get_input_embeddings().weight.shape[1]),
        "d_ff": d_ff(model, arch),
        "n_heads": getattr(config, "num_attention_heads", getattr(config, "n_head", None)),
        "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(model.parameters()).device),
        "mlp": "gated (act(W_gate x) * W_up x)" if arch.gated else "act(W_in x)",
        "activation": type(_act(model, arch)).__name__,
        "load_seconds": round(loaded.load_seconds, 3),
        "notes": loaded.notes,
        "hook_points": names,
    }


def _act(model: Any, arch: Any) -> Any:
    from probe.arch import submodule

    try:
        return submodule(model, 0, "act", arch)
    except Exception:
        return None
