"""Corpora and the fixed tokenization protocol every analysis uses.

Sources (:func:`load_corpus`):

- ``"stdlib"`` (default, offline): the topic help texts that ship with CPython in
  ``pydoc_data.topics`` (about 1 MB of English technical prose), in key order;
- ``"stdlib-instruct"`` (offline instruction data): the same topics as instruction/response
  pairs, "Explain the Python topic '<title>'." answered by the topic's text, in the Alpaca
  template (:func:`alpaca_text`);
- a ``.txt`` file (one document) or a ``.jsonl`` file (one document per line: field ``text``,
  or Alpaca-style ``instruction`` [``input``] ``output`` fields, formatted by :func:`alpaca_text`);
- ``"hf:NAME[:CONFIG][:SPLIT]"``: a Hugging Face dataset through ``datasets`` when reachable
  (e.g. ``hf:wikitext:wikitext-2-raw-v1:test``; a ``text`` column, or Alpaca-style columns),
  with the shortcuts ``wikitext2``, ``c4`` and ``pg19`` (see ``HF_CORPORA``) for the corpora
  of the House of Cards evaluation and ``alpaca`` (``tatsu-lab/alpaca``, 52k instructions).

Protocol (:func:`token_windows`): documents are joined with a blank line and tokenized once
without special tokens; the stream is cut into windows of ``seq_len - 1`` tokens (stride
``stride``, default the window length, i.e. no overlap), and each window gets one ``prepend``
token in front, so every row has exactly ``seq_len`` tokens. ``prepend="auto"`` is
``<|endoftext|>`` when the vocabulary has it (GPT-2, Pythia, SmolLM2: id 0, the document
separator of their pre-training data), else the tokenizer's BOS, else nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from probe.errors import EmptyInputError, ProbeError


HF_CORPORA = {
    "wikitext2": "hf:wikitext:wikitext-2-raw-v1:test",
    "c4": "hf:allenai/c4:en:validation",
    "pg19": "hf:deepmind/pg19::test",
    "alpaca": "hf:tatsu-lab/alpaca::train",
}


def alpaca_text(record: dict[str, Any]) -> str:
    """One instruction record in the Alpaca template (Taori et al. 2023), response included."""
    if record.get("input"):
        head = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{record['instruction']}\n\n### Input:\n{record['input']}")
    else:
        head = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                f"the request.\n\n### Instruction:\n{record['instruction']}")
    return f"{head}\n\n### Response:\n{record['output']}"


def _record_text(record: Any) -> str:
    if isinstance(record, dict) and "text" in record:
        return str(record["text"])
    if isinstance(record, dict) and {"instruction", "output"} <= set(record):
        return alpaca_text(record)
    raise KeyError("a 'text' field or 'instruction' and 'output' fields")


def _stdlib_instruct() -> list[str]:
    from pydoc_data.topics import topics

    docs = []
    for key in sorted(topics):
        title, _, body = topics[key].partition("\n")
        body = body.lstrip("*= \n")  # the title's underline
        docs.append(alpaca_text({"instruction": f"Explain the Python topic '{title.strip()}'.", "output": body.strip()}))
    return docs


def load_corpus(source: str = "stdlib") -> list[str]:
    """The documents of ``source`` (see module docstring), non-empty strings."""
    source = HF_CORPORA.get(source, source)
    if source == "stdlib":
        from pydoc_data.topics import topics

        docs = [topics[key] for key in sorted(topics)]
    elif source == "stdlib-instruct":
        docs = _stdlib_instruct()
    elif source.startswith("hf:"):
        docs = _hf_corpus(source[3:])
    else:
        path = Path(source)
        if not path.is_file():
            raise ProbeError(f"corpus {source!r} is neither 'stdlib', 'stdlib-instruct', {', '.join(HF_CORPORA)}, 'hf:NAME' "
                             "nor an existing .txt/.jsonl file")
        if path.suffix == ".jsonl":
            docs = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    docs.append(_record_text(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ProbeError(f"{source}:{number}: expected a JSON object with a 'text' field or "
                                     f"'instruction' and 'output' fields ({exc})") from None
        else:
            try:
                docs = [path.read_text(encoding="utf-8")]
            except UnicodeDecodeError:
                raise ProbeError(f"{source} is not UTF-8 text") from None
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise EmptyInputError(f"corpus {source!r} has no text")
    return docs


def _hf_corpus(spec: str) -> list[str]:
    name, _, rest = spec.partition(":")
    config, _, split = rest.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split=split or "test")
    except Exception as exc:
        raise ProbeError(f"cannot load the Hugging Face dataset {spec!r} (offline?): {exc}") from None
    try:
        return [_record_text(record) for record in ds]
    except KeyError as exc:
        raise ProbeError(f"the dataset {spec!r} has neither {exc.args[0]}") from None


def prepend_id(tokenizer: Any, prepend: str | int | None = "auto") -> int | None:
    """The token id put in front of every window (see module docstring)."""
    if prepend is None or isinstance(prepend, int):
        return prepend
    if prepend == "auto":
        vocab = tokenizer.get_vocab()
        return vocab["<|endoftext|>"] if "<|endoftext|>" in vocab else tokenizer.bos_token_id
    if prepend in ("bos", "eos"):
        return getattr(tokenizer, f"{prepend}_token_id")
    raise ProbeError(f"prepend must be 'auto', 'bos', 'eos', a token id or None, not {prepend!r}")


def token_windows(
    tokenizer: Any,
    docs: list[str] | str,
    seq_len: int = 128,
    n_seqs: int | None = None,
    prepend: str | int | None = "auto",
    stride: int | None = None,
) -> torch.Tensor:
    """``(n, seq_len)`` token ids cut from ``docs`` by the protocol in the module docstring.

    Text shorter than one window gives one shorter row. ``n_seqs`` caps the number of rows.
    """
    if isinstance(docs, str):
        docs = [docs]
    text = "\n\n".join(docs)
    if not text.strip():
        raise EmptyInputError("the text is empty")
    first = prepend_id(tokenizer, prepend)
    width = seq_len - (first is not None)
    if width < 1:
        raise ProbeError(f"seq_len must be at least {1 + (first is not None)}, got {seq_len}")
    stride = stride or width
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
    if ids.numel() == 0:
        raise EmptyInputError("the text has no tokens")
    if ids.numel() < width:
        rows = ids[None]
    else:
        rows = ids.unfold(0, width, stride)
    if n_seqs is not None:
        rows = rows[:n_seqs]
    if first is not None:
        rows = torch.cat([torch.full((rows.shape[0], 1), first, dtype=torch.long), rows], dim=1)
    return rows.contiguous()
