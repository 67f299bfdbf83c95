"""Corpora and the tokenization protocol."""

from __future__ import annotations

import json

import pytest
import torch

from probe.data import load_corpus, token_windows, window_protocol
from probe.errors import EmptyInputError, ProbeError


def test_stdlib_corpus_is_real_text():
    docs = load_corpus()
    assert len(docs) > 50 and sum(map(len, docs)) > 300_000
    assert any("with" in d and "statement" in d for d in docs)


def test_windows_follow_the_protocol(smol):
    """SmolLM2's tokenizer puts nothing in front of a plain call, so ``auto`` prepends nothing;
    an explicit token goes in front of every window, which is one token shorter."""
    tok = smol.tokenizer
    docs = load_corpus()
    stream = tok("\n\n".join(docs), add_special_tokens=False).input_ids
    assert tok("Hello").input_ids == tok("Hello", add_special_tokens=False).input_ids
    rows = token_windows(tok, docs, seq_len=64, n_seqs=5)
    assert rows.shape == (5, 64) and window_protocol(tok).ids == ()
    assert rows[0].tolist() == stream[:64] and rows[1].tolist() == stream[64:128]
    eot = token_windows(tok, docs, seq_len=64, n_seqs=5, prepend="<|endoftext|>")
    assert (eot[:, 0] == 0).all() and eot[0, 1:].tolist() == stream[:63] and eot[1, 1:].tolist() == stream[63:126]
    assert torch.equal(eot, token_windows(tok, docs, seq_len=64, n_seqs=5, prepend=0))
    assert torch.equal(eot, token_windows(tok, docs, seq_len=64, n_seqs=5, prepend="0"))
    assert (token_windows(tok, docs, seq_len=64, n_seqs=2, prepend="bos")[:, 0] == tok.bos_token_id).all()
    overlapping = token_windows(tok, docs, seq_len=64, n_seqs=2, stride=10, prepend=None)
    assert overlapping[1].tolist() == stream[10:74]


def _word_tokenizer(template: str | None, bos: str | None = "<s>"):
    """A real fast tokenizer over a word vocabulary whose plain call follows ``template``
    (``"<s> $A"``: a BOS in front as Llama's does; ``None``: nothing, as GPT-2's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "."]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template:
        specials = [(t, words.index(t)) for t in ("<s>", "</s>", "[CLS]", "[SEP]") if t in template]
        core.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("template, expected", [("<s> $A", ("<s>",)), (None, ()), ("[CLS] $A [SEP]", ("[CLS]",)),
                                                ("<s> $A </s>", ("<s>",))])
def test_auto_is_what_the_tokenizer_puts_in_front(template, expected):
    tok = _word_tokenizer(template)
    protocol = window_protocol(tok, "auto")
    assert protocol.tokens == expected and protocol.prepend == "auto"
    assert protocol.ids == tuple(tok.convert_tokens_to_ids(list(expected)))
    rows = token_windows(tok, "the cat sat on the mat . " * 10, seq_len=8)
    assert rows.shape[1] == 8
    for row in rows.tolist():
        assert tuple(row[: len(expected)]) == protocol.ids and tok.bos_token_id not in row[len(expected):]
    record = protocol.to_dict()
    assert record["ids"] == list(protocol.ids) and record["tokens"] == list(expected) and "auto" in record["text"]


def test_prepend_choices_and_their_errors(smol):
    tok = smol.tokenizer
    assert window_protocol(tok, "bos").ids == (tok.bos_token_id,) and window_protocol(tok, "eos").ids == (tok.eos_token_id,)
    assert window_protocol(tok, "none") == window_protocol(tok, None)
    assert window_protocol(None, 5).tokens == ("5",) and window_protocol(None, [3, 4]).ids == (3, 4)
    for bad, message in ((len(tok), "outside the vocabulary"), ("<no such token>", "not a token of the vocabulary"),
                         (-1, "outside the vocabulary")):
        with pytest.raises(ProbeError, match=message):
            window_protocol(tok, bad)
    with pytest.raises(ProbeError, match="needs the tokenizer"):
        window_protocol(None, "auto")
    with pytest.raises(ProbeError, match="no BOS"):
        window_protocol(_word_tokenizer(None, bos=None), "bos")


def test_short_text_gives_one_short_row(smol):
    rows = token_windows(smol.tokenizer, "Hello world", seq_len=128)
    assert rows.shape[0] == 1 and 2 <= rows.shape[1] < 128


def test_files(tmp_path):
    (tmp_path / "a.txt").write_text("Some text.\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert load_corpus(str(tmp_path / "a.txt")) == ["Some text.\n"]
    assert load_corpus(str(tmp_path / "b.jsonl")) == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ProbeError, match="bad.jsonl:1"):
        load_corpus(str(tmp_path / "bad.jsonl"))
    (tmp_path / "other.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(ProbeError, match="other.jsonl:1.*'instruction' and 'output'"):
        load_corpus(str(tmp_path / "other.jsonl"))


def test_instruction_records_use_the_alpaca_template(tmp_path):
    records = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
               {"instruction": "Say hi.", "input": "", "output": "Hi."}]
    (tmp_path / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with_input, plain = load_corpus(str(tmp_path / "i.jsonl"))
    assert with_input.endswith("### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n5")
    assert "### Input" not in plain and plain.endswith("### Instruction:\nSay hi.\n\n### Response:\nHi.")


def test_stdlib_instruct_pairs_every_topic_title_with_its_text():
    from pydoc_data.topics import topics

    docs = load_corpus("stdlib-instruct")
    assert len(docs) == len(topics)
    first = topics[sorted(topics)[0]]
    title, body = first.split("\n", 1)[0], first.split("\n", 2)[2].strip()
    assert f"### Instruction:\nExplain the Python topic '{title}'." in docs[0]
    assert docs[0].endswith(f"### Response:\n{body}")


def test_bad_input_is_refused(smol, tmp_path):
    with pytest.raises(EmptyInputError):
        token_windows(smol.tokenizer, "   ")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(EmptyInputError):
        load_corpus(str(tmp_path / "empty.txt"))
    with pytest.raises(ProbeError, match="neither"):
        load_corpus("no/such/file.txt")
    with pytest.raises(ProbeError, match="prepend"):
        token_windows(smol.tokenizer, "text", prepend="<no such token>")


def test_remembered_tokenisation_is_the_tokenizers_and_safe_to_change(smol):
    """A corpus tokenised once is remembered: the windows equal a fresh tokenisation, changing a
    returned window changes nothing remembered, and a token added to the vocabulary starts afresh."""
    import copy

    tok = copy.deepcopy(smol.tokenizer)
    text = "The quick brown fox jumps over the lazy dog. " * 40
    fresh = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    first = token_windows(tok, text, seq_len=16, n_seqs=4, prepend="none")
    torch.testing.assert_close(first.reshape(-1), fresh[:64], rtol=0, atol=0)
    first[:] = 0
    again = token_windows(tok, text, seq_len=16, n_seqs=4, prepend="none")
    torch.testing.assert_close(again.reshape(-1), fresh[:64], rtol=0, atol=0)
    tok.add_tokens(["quick brown"])
    added = token_windows(tok, text, seq_len=16, n_seqs=4, prepend="none")
    assert added.reshape(-1).tolist() == tok(text, add_special_tokens=False).input_ids[:64] != fresh[:64].tolist()
