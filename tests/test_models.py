"""Model loading: the embedded model, local folders, GGUF files, hub ids, and clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from probe import UnknownModelError, load_model
from probe.errors import ModelLoadError, UnsupportedArchitectureError
from probe.models import EMBEDDED, cache_dir


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


def _embedded_gguf():
    import importlib.util
    from pathlib import Path

    entry = EMBEDDED["smollm2"]
    return Path(list(importlib.util.find_spec(entry.package).submodule_search_locations)[0]) / entry.filename


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"PK\x03\x04" + bytes(64), "is not a GGUF file"),
    (b"GGUF" + bytes(range(256)) * 16, "corrupt or truncated GGUF"),
])
def test_bad_gguf_bytes_are_one_clear_error(tmp_path, monkeypatch, content, message):
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m.gguf").write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(str(tmp_path / "m.gguf"))
    assert str(tmp_path / "m.gguf") in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()  # nothing half-converted is cached


@pytest.mark.parametrize("keep", [2_000, 30_000_000])
def test_truncated_gguf_is_one_clear_error_and_caches_nothing(tmp_path, monkeypatch, keep):
    """A download cut short: the real embedded GGUF, cut inside its header or inside its tensors."""
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    with open(_embedded_gguf(), "rb") as handle:
        (tmp_path / "cut.gguf").write_bytes(handle.read(keep))
    with pytest.raises(ModelLoadError, match="corrupt or truncated GGUF|is truncated"):
        load_model(str(tmp_path / "cut.gguf"))
    assert not (tmp_path / "cache").exists()


def test_bad_model_folders_are_one_clear_error(tmp_path, smol):
    (tmp_path / "config.json").write_text('{"model_type": ')
    with pytest.raises(ModelLoadError, match="config.json: not a readable JSON config"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(UnsupportedArchitectureError, match="model_type 'mamba' has no adapter; supported: .*llama"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelLoadError, match="has a config.json but no weights"):
        load_model(str(tmp_path))
    smol.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10" + bytes(99))
    with pytest.raises(ModelLoadError, match=f"cannot load {tmp_path}: SafetensorError"):
        load_model(str(tmp_path))
