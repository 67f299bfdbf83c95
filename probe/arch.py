"""Architecture adapters: where each model family keeps its layers, MLP projections and norms.

An adapter maps names, it never wraps the model. Paths are dotted attribute paths; the layer
paths are relative to one decoder layer. Weight names follow the PyTorch ``nn.Linear`` layout
(``out_features x in_features``): row ``n`` of ``W_up``/``W_gate``/``W_in`` is FFN neuron ``n``,
and ``W_down[d, n]`` joins neuron ``n`` to residual dimension ``d``. GPT-2's ``Conv1D`` stores the
transpose and Phi-3 fuses gate and up into one matrix; :class:`WeightView` hides both.

Adding a family is one entry in ``ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from probe.errors import LayerError, UnsupportedArchitectureError


@dataclass(frozen=True)
class Arch:
    """Module paths of one model family.

    ``layers``: candidate paths from the top model to the ``ModuleList`` of blocks (first that
    exists wins, so one adapter covers ``*ForCausalLM`` and bare ``*Model`` classes).
    ``gate``/``up``/``down``: the FFN projections (``gate`` is ``None`` for non-gated MLPs).
    ``fused_gate_up``: ``up`` holds ``[gate; up]`` stacked along the output dim (Phi-3).
    ``conv1d``: weights are stored ``in x out`` (GPT-2 ``Conv1D``).
    ``ln2``: the module whose input is the ``hook_resid_mid`` point when ``sequential``
    (attention then FFN, not GPT-NeoX's parallel residual): the norm in front of the FFN, or the
    MLP itself where there is none (OLMo-2 normalises the sublayer outputs instead).
    ``flat_ffn``: the block flattens ``(batch, position, d)`` to ``(batch * position, d)`` before
    ``ln2`` and the FFN (OPT); hook points there are reshaped back to three axes.
    ``lm_head``: candidate paths from the top model to the module that turns the final hidden
    states into logits (:func:`logits_from_hidden`): the output embeddings of the decoders, BERT's
    ``cls`` and RoBERTa's ``lm_head`` (a dense/act/LayerNorm transform, then the decoder).
    """

    name: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]
    attn: str
    up: str
    down: str
    act: str | None
    ln1: str
    ln2: str
    final_norm: tuple[str, ...]
    gate: str | None = None
    fused_gate_up: bool = False
    conv1d: bool = False
    sequential: bool = True
    causal: bool = True
    flat_ffn: bool = False
    lm_head: tuple[str, ...] = ("lm_head",)

    @property
    def gated(self) -> bool:
        """The FFN is ``act(W_gate x) * (W_up x)`` (separate or fused matrices), not ``act(W_in x)``."""
        return self.gate is not None or self.fused_gate_up

    @property
    def ffn_in_names(self) -> tuple[str, ...]:
        """The matrices whose row ``n`` feeds FFN neuron ``n``, in forward order: ``("W_gate",
        "W_up")`` when gated (both halves of a fused gate/up matrix), else ``("W_in",)``. Zeroing
        neuron ``n`` means zeroing row ``n`` of each; these rows are the massive weights (House of Cards)."""
        return ("W_gate", "W_up") if self.gated else ("W_in",)


_LLAMA_LIKE = dict(
    layers=("model.layers", "layers", "model.language_model.layers", "language_model.layers"),
    attn="self_attn",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
    act="mlp.act_fn",
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    final_norm=("model.norm", "norm", "model.language_model.norm", "language_model.norm"),
)

ADAPTERS: tuple[Arch, ...] = (
    # Gemma 1 is a Llama block (post_attention_layernorm feeds the MLP); Gemma 2/3 add sandwich norms.
    Arch(name="llama", model_types=("llama", "mistral", "qwen2", "qwen3", "olmo", "gemma"), **_LLAMA_LIKE),
    Arch(
        name="gemma",
        model_types=("gemma2", "gemma3", "gemma3_text"),
        **{**_LLAMA_LIKE, "ln2": "pre_feedforward_layernorm"},
    ),
    # OLMo-2: no norm in front of attention or MLP; post_attention_layernorm and
    # post_feedforward_layernorm normalise the sublayer outputs before the residual add.
    Arch(name="olmo2", model_types=("olmo2",), **{**_LLAMA_LIKE, "ln1": "self_attn", "ln2": "mlp"}),
    Arch(
        name="phi3",
        model_types=("phi3",),
        **{**_LLAMA_LIKE, "gate": None, "up": "mlp.gate_up_proj", "act": "mlp.activation_fn"},
        fused_gate_up=True,
    ),
    Arch(
        name="gpt2",
        model_types=("gpt2",),
        layers=("transformer.h", "h"),
        attn="attn",
        up="mlp.c_fc",
        down="mlp.c_proj",
        act="mlp.act",
        ln1="ln_1",
        ln2="ln_2",
        final_norm=("transformer.ln_f", "ln_f"),
        conv1d=True,
    ),
    Arch(
        name="opt",
        model_types=("opt",),
        layers=("model.decoder.layers", "decoder.layers"),
        attn="self_attn",
        up="fc1",
        down="fc2",
        act="activation_fn",
        ln1="self_attn_layer_norm",
        ln2="final_layer_norm",
        final_norm=("model.decoder.final_layer_norm", "decoder.final_layer_norm"),
        flat_ffn=True,
    ),
    Arch(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers=("gpt_neox.layers", "layers"),
        attn="attention",
        up="mlp.dense_h_to_4h",
        down="mlp.dense_4h_to_h",
        act="mlp.act",
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
        final_norm=("gpt_neox.final_layer_norm", "final_layer_norm"),
        sequential=False,
    ),
    Arch(
        name="bert",
        model_types=("bert", "roberta"),
        layers=("bert.encoder.layer", "roberta.encoder.layer", "encoder.layer"),
        attn="attention",
        up="intermediate.dense",
        down="output.dense",
        act="intermediate.intermediate_act_fn",
        ln1="attention.output.LayerNorm",
        ln2="output.LayerNorm",
        final_norm=(),
        sequential=False,
        causal=False,
        lm_head=("cls", "lm_head"),
    ),
)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` that has an adapter."""
    return sorted(t for a in ADAPTERS for t in a.model_types)


def arch_for(model: nn.Module) -> Arch:
    """The adapter for ``model``, resolved by ``model.config.model_type``."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for arch in ADAPTERS:
        if model_type in arch.model_types:
            return arch
    raise UnsupportedArchitectureError(
        f"no adapter for model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
    )


def first_position_id(model: nn.Module) -> int:
    """The ``position_id`` of a sequence's first token: 0, except RoBERTa, whose embeddings count
    from ``padding_idx + 1`` (``create_position_ids_from_input_ids``); explicit ``position_ids``
    (left-padded batches) must start there too."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) == "roberta":
        return int(config.pad_token_id) + 1
    return 0


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the first parameter's device; the CPU if that is ``meta`` (a layer
    offloaded by accelerate, whose hooks move the inputs themselves)."""
    device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def get_path(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.c`` for ``path='a.b.c'`` (``AttributeError`` when a part is missing)."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first_path(model: nn.Module, paths: tuple[str, ...], what: str) -> nn.Module:
    for path in paths:
        try:
            return get_path(model, path)
        except AttributeError:
            continue
    raise UnsupportedArchitectureError(f"cannot find the {what} of {type(model).__name__} (tried {', '.join(paths)})")


def decoder_layers(model: nn.Module, arch: Arch | None = None) -> nn.ModuleList:
    """The model's ``ModuleList`` of transformer blocks."""
    arch = arch or arch_for(model)
    return _first_path(model, arch.layers, "decoder layers")


def final_norm(model: nn.Module, arch: Arch | None = None) -> nn.Module:
    arch = arch or arch_for(model)
    return _first_path(model, arch.final_norm, "final norm")


def unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (``get_base_model()``), else ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states ``(batch, position, d)``, the input of the LM head: the base model's
    ``last_hidden_state`` (``model.base_model``, after its final norm and, in OPT, ``project_out``),
    computed without a key/value cache. ``logits_from_hidden(model, final_hidden(model, ids))`` is
    ``model(ids).logits``, bit for bit, on every family in ``ADAPTERS``; a peft-wrapped model is
    unwrapped first (its adapters stay in the modules)."""
    return unwrapped(model).base_model(input_ids=input_ids, use_cache=False)[0]


def lm_head(model: nn.Module, arch: Arch | None = None) -> nn.Module:
    """The module that turns final hidden states into logits (:attr:`Arch.lm_head`)."""
    arch = arch or arch_for(model)
    return _first_path(model, arch.lm_head, "LM head")


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
    """Logits of final hidden states ``hidden`` (any leading shape, e.g. a chunk of tokens
    ``(n, d)``): the LM head, then ``cap * tanh(logits / cap)`` where the config sets
    ``final_logit_softcapping`` (Gemma 2/3 text models; the multimodal Gemma 3 applies none), the
    same operations in the same order as the ``*ForCausalLM`` forward, so rows are bit-identical."""
    model = unwrapped(model)
    logits = lm_head(model, arch)(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = logits / cap
        logits = torch.tanh(logits)
        logits = logits * cap
    return logits


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def layer(model: nn.Module, index: int, arch: Arch | None = None) -> nn.Module:
    """Block ``index`` (negative indices count from the end, as in Python)."""
    layers = decoder_layers(model, arch)
    if not -len(layers) <= index < len(layers):
        raise LayerError(f"layer {index} is out of range: the model has {len(layers)} layers (0..{len(layers) - 1})")
    return layers[index]


def submodule(model: nn.Module, index: int, role: str, arch: Arch | None = None) -> nn.Module:
    """The module playing ``role`` (an :class:`Arch` field such as ``'down'``) in block ``index``."""
    arch = arch or arch_for(model)
    path = getattr(arch, role)
    if path is None:
        raise UnsupportedArchitectureError(f"{arch.name} models have no {role!r} module")
    return get_path(layer(model, index, arch), path)


def d_ff(model: nn.Module, arch: Arch | None = None) -> int:
    """Width of the FFN intermediate state (the input of the down projection)."""
    down = submodule(model, 0, "down", arch)
    arch = arch or arch_for(model)
    return down.weight.shape[0] if arch.conv1d else down.weight.shape[1]


@dataclass(frozen=True)
class WeightView:
    """A named FFN matrix in ``nn.Linear`` layout, addressed inside its real parameter.

    ``rows(idx)`` returns a view of the parameter's storage holding rows ``idx`` of the logical
    matrix, so in-place edits on it edit the model. ``module`` is the projection that owns it:
    row ``n`` of the matrix is output ``row_offset + n`` of ``module``.
    """

    param: nn.Parameter
    transposed: bool
    row_offset: int
    n_rows: int
    module: nn.Module | None = None

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias entries of the matrix's rows (``None`` when the projection has no bias)."""
        bias = getattr(self.module, "bias", None)
        return None if bias is None else bias.data.narrow(0, self.row_offset, self.n_rows)

    @property
    def matrix(self) -> torch.Tensor:
        """The logical ``out x in`` matrix as a view (no copy)."""
        data = self.param.data.T if self.transposed else self.param.data
        return data.narrow(0, self.row_offset, self.n_rows)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]


WEIGHT_NAMES = ("W_gate", "W_up", "W_in", "W_down", "W_out")


def weight_view(model: nn.Module, index: int, name: str, arch: Arch | None = None) -> WeightView:
    """The FFN matrix ``name`` (``W_gate``, ``W_up``/``W_in``, ``W_down``/``W_out``) of block ``index``."""
    arch = arch or arch_for(model)
    if name in ("W_down", "W_out"):
        module = submodule(model, index, "down", arch)
        return WeightView(module.weight, arch.conv1d, 0, _out_features(module.weight, arch), module)
    if name == "W_gate" and not arch.gated:
        raise UnsupportedArchitectureError(f"{arch.name} has a non-gated MLP: use W_in (or W_up), not W_gate")
    if name not in ("W_gate", "W_up", "W_in"):
        raise UnsupportedArchitectureError(f"unknown weight {name!r}; known: {', '.join(WEIGHT_NAMES)}")
    if arch.fused_gate_up:
        module = submodule(model, index, "up", arch)
        half = _out_features(module.weight, arch) // 2
        return WeightView(module.weight, arch.conv1d, 0 if name == "W_gate" else half, half, module)
    module = submodule(model, index, "gate" if name == "W_gate" else "up", arch)
    return WeightView(module.weight, arch.conv1d, 0, _out_features(module.weight, arch), module)


def _out_features(weight: torch.Tensor, arch: Arch) -> int:
    return weight.shape[1] if arch.conv1d else weight.shape[0]
