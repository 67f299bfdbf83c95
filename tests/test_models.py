"""Model loading: the embedded model, local folders, GGUF files, hub ids, and clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from probe import UnknownModelError, load_model
from probe.models import cache_dir


def test_embedded_model_facts(smol):
    model, tokenizer, arch = smol
    assert arch.name == "llama" and model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576 and model.config.intermediate_size == 1536
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<|im_start|>"]
    assert tokenizer.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert any(cache_dir().glob("models/SmolLM2-135M-Instruct*/model.safetensors"))


def test_cached_reload_gives_identical_logits(smol, smol_ids):
    again = load_model("smollm2")
    assert "cached safetensors" in again.notes[0]
    with torch.no_grad():
        assert torch.equal(again.model(smol_ids).logits, smol.model(smol_ids).logits)


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "probe"


def test_local_directory_and_dtype(tmp_path, smol):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    smol.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16")
    assert loaded.arch.name == "llama" and next(loaded.model.parameters()).dtype == torch.bfloat16
    assert isinstance(loaded.tokenizer, type(AutoTokenizer.from_pretrained(tmp_path)))


def test_unknown_name_lists_what_is_available():
    with pytest.raises(UnknownModelError, match="unknown model 'gpt-17'; available: .*smollm2"):
        load_model("gpt-17")


def test_hub_id_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnknownModelError, match="not in the local Hugging Face cache; pass --download"):
        load_model("nobody/no-such-model")


def test_missing_gguf_and_folder_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match="does not exist"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(UnknownModelError, match="without config.json"):
        load_model(str(tmp_path))


def test_bad_dtype():
    with pytest.raises(UnknownModelError, match="unknown dtype"):
        load_model("smollm2", dtype="float8")
