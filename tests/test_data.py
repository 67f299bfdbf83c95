"""Corpora and the tokenization protocol."""

from __future__ import annotations

import json

import pytest
import torch

from probe.data import load_corpus, prepend_id, token_windows
from probe.errors import EmptyInputError, ProbeError


def test_stdlib_corpus_is_real_text():
    docs = load_corpus()
    assert len(docs) > 50 and sum(map(len, docs)) > 300_000
    assert any("with" in d and "statement" in d for d in docs)


def test_windows_follow_the_protocol(smol):
    tok = smol.tokenizer
    docs = load_corpus()
    rows = token_windows(tok, docs, seq_len=64, n_seqs=5)
    assert rows.shape == (5, 64)
    assert prepend_id(tok) == 0 and (rows[:, 0] == 0).all()
    stream = tok("\n\n".join(docs), add_special_tokens=False).input_ids
    assert rows[0, 1:].tolist() == stream[:63] and rows[1, 1:].tolist() == stream[63:126]
    overlapping = token_windows(tok, docs, seq_len=64, n_seqs=2, stride=10, prepend=None)
    assert overlapping[1].tolist() == stream[10:74]


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
        token_windows(smol.tokenizer, "text", prepend="start")
