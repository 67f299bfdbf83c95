"""Tiny random models of every family in ``probe/arch.py``, built offline from a config.

Shared by the mechanics checks (``test_arch.py``) and the analyses matrix (``test_families.py``).
``Family.config(layers)`` builds the config; ``residual`` says how a block combines its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

VOCAB, HIDDEN, D_FF, LAYERS, HEADS = 128, 32, 64, 2, 4
IDS = torch.randint(3, VOCAB - 8, (2, 6), generator=torch.Generator().manual_seed(0))
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _decoder(cls_name: str, **extra) -> Callable[..., object]:
    def make(layers: int = LAYERS):
        import transformers

        return getattr(transformers, cls_name)(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=D_FF, num_hidden_layers=layers,
            num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=64, **TOKENS, **extra,
        )

    return make


def _gpt2(layers: int = LAYERS):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_inner=D_FF, n_layer=layers, n_head=HEADS, n_positions=64,
                      bos_token_id=1, eos_token_id=2)


def _opt(layers: int = LAYERS):
    from transformers import OPTConfig

    return OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=D_FF, num_hidden_layers=layers,
                     num_attention_heads=HEADS, max_position_embeddings=64, word_embed_proj_dim=HIDDEN, **TOKENS)


def _gpt_neox(layers: int = LAYERS):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=D_FF, num_hidden_layers=layers,
                         num_attention_heads=HEADS, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)


def _bert(layers: int = LAYERS, cls_name: str = "BertConfig"):
    import transformers

    return getattr(transformers, cls_name)(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=D_FF, num_hidden_layers=layers,
                      num_attention_heads=HEADS, max_position_embeddings=64, is_decoder=True, pad_token_id=0)


def _gemma3_multimodal(layers: int = LAYERS):
    """Gemma 3 with a (tiny) vision tower: the text layers sit under ``model.language_model``."""
    from transformers import Gemma3Config, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=8)
    return Gemma3Config(text_config=_decoder("Gemma3TextConfig", head_dim=8)(layers), vision_config=vision,
                        mm_tokens_per_image=4, boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2,
                        image_token_index=VOCAB - 1)


@dataclass(frozen=True)
class Family:
    model_type: str
    config: Callable[..., object]  # config(layers=LAYERS)
    adapter: str
    gated: bool
    sequential: bool
    residual: str  # how a block combines its parts: "add", "gemma" (normed sublayer outputs), "parallel", "bert" (post-LN)
    d_ff_attr: str = "intermediate_size"

    def __str__(self) -> str:
        return self.model_type


FAMILIES = [
    Family("llama", _decoder("LlamaConfig"), "llama", True, True, "add"),
    Family("mistral", _decoder("MistralConfig"), "llama", True, True, "add"),
    Family("qwen2", _decoder("Qwen2Config"), "llama", True, True, "add"),
    Family("qwen3", _decoder("Qwen3Config", head_dim=8), "llama", True, True, "add"),
    Family("olmo", _decoder("OlmoConfig"), "llama", True, True, "add"),
    Family("olmo2", _decoder("Olmo2Config"), "olmo2", True, True, "gemma"),
    Family("gemma", _decoder("GemmaConfig", head_dim=8), "llama", True, True, "add"),
    Family("gemma2", _decoder("Gemma2Config", head_dim=8), "gemma", True, True, "gemma"),
    Family("gemma3_text", _decoder("Gemma3TextConfig", head_dim=8), "gemma", True, True, "gemma"),
    Family("gemma3", _gemma3_multimodal, "gemma", True, True, "gemma", "text_config.intermediate_size"),
    Family("phi3", _decoder("Phi3Config"), "phi3", True, True, "add"),
    Family("gpt2", _gpt2, "gpt2", False, True, "add", "n_inner"),
    Family("opt", _opt, "opt", False, True, "add", "ffn_dim"),
    Family("gpt_neox", _gpt_neox, "gpt_neox", False, False, "parallel"),
    Family("bert", _bert, "bert", False, False, "bert"),
    Family("roberta", lambda layers=LAYERS: _bert(layers, "RobertaConfig"), "bert", False, False, "bert"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: threads only add overhead (and stall badly on a busy 2-core machine).
    Import it into a test module to use it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
