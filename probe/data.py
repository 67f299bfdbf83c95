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
without special tokens; the stream is cut into windows of ``seq_len - len(prefix)`` tokens
(stride ``stride``, default the window length, i.e. no overlap), and each window gets the
``prefix`` tokens in front, so every row has exactly ``seq_len`` tokens.

The prefix is chosen by ``prepend`` (:func:`window_protocol`, recorded in every output):

- ``"auto"`` (default): what the model's own tokenizer puts in front of a plain call,
  ``tokenizer(text)``: BOS for Llama-2/3, Gemma, OPT (``</s>``), ``[CLS]`` for BERT; nothing for
  GPT-2, Qwen2 and SmolLM2. This is the convention the model was trained and is used with;
- ``"none"``: nothing (the first token of each window is text);
- ``"bos"`` / ``"eos"``: the tokenizer's BOS / EOS token;
- a token id (``0``) or a token's text (``"<|endoftext|>"``).

Why it matters: massive activations and attention sinks sit on each window's first token
(Sun et al. 2024, §2; Gu et al. 2024), and which token comes first changes what a scan finds.
Until this release ``auto`` meant ``<|endoftext|>`` whenever the vocabulary had it; on families
for which that token is not a document start the first position stopped being the sink and the
scan reported a later, weaker origin. ``probe scan --compare-prepend`` runs several protocols
side by side (:mod:`analyses.massive.prepend`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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


PREPEND_HELP = "auto (what tokenizer(text) puts in front), none, bos, eos, a token id or a token's text"


@dataclass(frozen=True)
class WindowProtocol:
    """The tokens put in front of every window: ``prepend`` as asked, the resolved ``ids`` and
    their ``tokens`` (text), and ``rule``, a sentence saying where they come from."""

    prepend: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    rule: str

    def describe(self) -> str:
        """One line for headers and tables, e.g. ``auto: nothing in front (what tokenizer(text) does)``."""
        what = ", ".join(f"{t!r} (id {i})" for t, i in zip(self.tokens, self.ids)) or "nothing"
        return f"{self.prepend}: {what} in front of every window ({self.rule})"

    def to_dict(self) -> dict[str, Any]:
        return {"prepend": self.prepend, "ids": list(self.ids), "tokens": list(self.tokens), "rule": self.rule,
                "text": self.describe()}


def window_protocol(tokenizer: Any, prepend: str | int | Sequence[int] | None = "auto") -> WindowProtocol:
    """Resolve ``prepend`` (see the module docstring) for ``tokenizer``. ``tokenizer`` may be
    ``None`` when ``prepend`` is ``None``/``"none"`` or a token id (token ids given directly)."""
    if prepend is None or (isinstance(prepend, str) and prepend.strip().lower() == "none"):
        return WindowProtocol("none", (), (), "asked for none")
    if isinstance(prepend, (list, tuple)):  # ids as recorded in a protocol's to_dict()
        ids = tuple(int(i) for i in prepend)
        for i in ids:
            window_protocol(tokenizer, i)  # range check
        return WindowProtocol(",".join(map(str, ids)) or "none", ids, tuple(_token_text(tokenizer, i) for i in ids),
                              "token ids given")
    if isinstance(prepend, int) or (isinstance(prepend, str) and prepend.strip().isdigit()):
        token_id = int(prepend)
        size = None if tokenizer is None else len(tokenizer)
        if token_id < 0 or (size is not None and token_id >= size):
            raise ProbeError(f"prepend token id {token_id} is outside the vocabulary (0..{size - 1 if size else '?'})")
        return WindowProtocol(str(token_id), (token_id,), (_token_text(tokenizer, token_id),), "token id given")
    if not isinstance(prepend, str) or not prepend:
        raise ProbeError(f"prepend must be {PREPEND_HELP}, not {prepend!r}")
    if tokenizer is None:
        raise ProbeError(f"prepend {prepend!r} needs the tokenizer; give a token id or none with token ids")
    key = prepend.strip().lower()
    if key == "auto":
        ids = _added_prefix(tokenizer)
        rule = "what tokenizer(text) puts in front" if ids else "tokenizer(text) puts nothing in front"
        return WindowProtocol("auto", ids, tuple(_token_text(tokenizer, i) for i in ids), rule)
    if key in ("bos", "eos"):
        token_id = getattr(tokenizer, f"{key}_token_id", None)
        if token_id is None:
            raise ProbeError(f"prepend {key}: this tokenizer has no {key.upper()} token; use auto, none or a token id")
        return WindowProtocol(key, (token_id,), (_token_text(tokenizer, token_id),), f"the tokenizer's {key.upper()}")
    vocab = tokenizer.get_vocab()
    if prepend in vocab:
        return WindowProtocol(prepend, (vocab[prepend],), (prepend,), "token text given")
    raise ProbeError(f"prepend must be {PREPEND_HELP}; {prepend!r} is none of these and not a token of the vocabulary")


def _token_text(tokenizer: Any, token_id: int) -> str:
    return str(token_id) if tokenizer is None else str(tokenizer.convert_ids_to_tokens(token_id))


def _added_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The ids ``tokenizer(text)`` puts in front of ``tokenizer(text, add_special_tokens=False)``."""
    sample = "The cat sat on the mat."
    plain = list(tokenizer(sample, add_special_tokens=False).input_ids)
    full = list(tokenizer(sample).input_ids)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(int(i) for i in full[:start])
    raise ProbeError("cannot tell which tokens tokenizer(text) adds (its output does not contain the plain "
                     "tokenization); pass prepend explicitly: none, bos, eos or a token id")


_ENCODED: dict[tuple[int, int | None, str], tuple[Any, torch.Tensor]] = {}  # (id, vocabulary size, text) -> (tokenizer, ids)


def _encoded(tokenizer: Any, text: str, keep: int = 4) -> torch.Tensor:
    """``tokenizer(text, add_special_tokens=False)`` ids as a new tensor, the last ``keep`` texts
    remembered per process: a report cuts windows from the same corpus for every window protocol
    and section (the whole stdlib corpus took 0.2 s to tokenise each time). The entry holds the
    tokenizer, so its ``id`` cannot be reused while remembered; the key has the vocabulary size
    with added tokens, so adding tokens makes a new entry."""
    key = (id(tokenizer), len(tokenizer) if hasattr(tokenizer, "__len__") else None, text)
    hit = _ENCODED.pop(key, None)
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long))
    _ENCODED[key] = hit  # most recent last
    while len(_ENCODED) > keep:
        _ENCODED.pop(next(iter(_ENCODED)))
    return hit[1].clone()


def token_windows(
    tokenizer: Any,
    docs: list[str] | str,
    seq_len: int = 128,
    n_seqs: int | None = None,
    prepend: str | int | Sequence[int] | None = "auto",
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
    prefix = window_protocol(tokenizer, prepend).ids
    width = seq_len - len(prefix)
    if width < 1:
        raise ProbeError(f"seq_len must be at least {1 + len(prefix)}, got {seq_len}")
    stride = stride or width
    ids = _encoded(tokenizer, text)
    if ids.numel() == 0:
        raise EmptyInputError("the text has no tokens")
    if ids.numel() < width:
        rows = ids[None]
    else:
        rows = ids.unfold(0, width, stride)
    if n_seqs is not None:
        rows = rows[:n_seqs]
    if prefix:
        rows = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(rows.shape[0], -1), rows], dim=1)
    return rows.contiguous()
