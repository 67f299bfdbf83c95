"""Offline zero-shot multiple-choice tasks built from real text that ships with Python, run
through lm-eval (``HFLM`` over the in-memory, possibly edited model).

- ``probe_pydoc_topics``: a passage from a topic of the CPython help (``pydoc_data.topics``,
  its title line dropped) and four topic names to choose from (the right one and three others,
  drawn with a fixed seed). Chance 25%.
- ``probe_builtins``: the summary sentence of a built-in's docstring (``builtins``, the
  signature line dropped) and four built-in names. Chance 25%.

The data are generated deterministically into the cache (``probe.models.cache_dir()/tasks``) as
JSONL plus lm-eval YAML (``dataset_path: json``), so they are data, not code. Standard task
names (``arc_easy``, ``arc_challenge``, ``boolq``, ``piqa``, ``winogrande``) are passed through
to lm-eval and work whenever their data set is reachable.
"""

from __future__ import annotations

import builtins
import json
import random
import re
from pathlib import Path
from typing import Any

from torch import nn

from probe.errors import ProbeError
from probe.files import atomic_file
from probe.models import cache_dir

OFFLINE_TASKS = ("probe_pydoc_topics", "probe_builtins")
CHANCE = {"probe_pydoc_topics": 0.25, "probe_builtins": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25,
          "boolq": 0.5, "piqa": 0.5, "winogrande": 0.5}


def _choices(answer: str, pool: list[str], rng: random.Random) -> tuple[list[str], int]:
    options = rng.sample([p for p in pool if p != answer], 3) + [answer]
    rng.shuffle(options)
    return options, options.index(answer)


def pydoc_topics_docs(seed: int = 0) -> list[dict[str, Any]]:
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    keys = sorted(topics)
    docs = []
    for key in keys:
        body = topics[key].split("\n", 2)[-1]  # drop the title and its underline
        body = " ".join(body.split())[:400]
        options, label = _choices(key, keys, rng)
        docs.append({"text": f"Passage from the Python documentation: {body}\nThe passage is about the topic:",
                     "choices": [f" {o}" for o in options], "label": label})
    return docs


def builtins_docs(seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    entries = {}
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        doc = getattr(obj, "__doc__", None) or ""
        if name.startswith("_") or not callable(obj):
            continue
        paragraphs = [p for p in doc.split("\n\n") if p.strip() and not re.match(rf"^\s*{re.escape(name)}\(", p) and p.strip() != "--"]
        if paragraphs:
            summary = " ".join(paragraphs[0].split())
            if name not in summary:
                entries[name] = summary[:300]
    names = sorted(entries)
    docs = []
    for name in names:
        options, label = _choices(name, names, rng)
        docs.append({"text": f"Description of a Python built-in: {entries[name]}\nThe built-in is named:",
                     "choices": [f" {o}" for o in options], "label": label})
    return docs


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one step (:func:`probe.files.atomic_file`), only when it
    differs, so concurrent writers (Ray workers on one node) never see a half-written file."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_tasks(folder: Path | None = None) -> Path:
    """Write the offline tasks' JSONL and YAML into ``folder`` (default: the cache); return it."""
    folder = folder or cache_dir() / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for task, docs in (("probe_pydoc_topics", pydoc_topics_docs()), ("probe_builtins", builtins_docs())):
        data = folder / f"{task}.jsonl"
        _write_if_changed(data, "".join(json.dumps(d) + "\n" for d in docs))
        _write_if_changed(
            folder / f"{task}.yaml",
            f"task: {task}\n"
            "dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            "test_split: test\n"
            "output_type: multiple_choice\n"
            'doc_to_text: "{{text}}"\n'
            'doc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{label}}"\n'
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
        )
    return folder


def zero_shot(model: nn.Module, tokenizer: Any, tasks: list[str], limit: int | None = None,
              batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy of the in-memory ``model`` on ``tasks``: ``{task: {acc, acc_norm, n, chance}}``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(write_tasks()))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ProbeError(f"unknown lm-eval task(s) {', '.join(unknown)}; offline ones: {', '.join(OFFLINE_TASKS)}")
    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, bootstrap_iters=0,
                              verbosity="ERROR", random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    except Exception as exc:
        raise ProbeError(f"lm-eval could not run {', '.join(tasks)} (is the data reachable offline?): {exc}") from None
    results = {}
    for task in tasks:
        r = out["results"][task]
        results[task] = {"acc": r.get("acc,none"), "acc_norm": r.get("acc_norm,none"),
                         "n": out["n-samples"][task]["effective"], "chance": CHANCE.get(task)}
    return results
