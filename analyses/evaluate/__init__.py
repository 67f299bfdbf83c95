"""Re-evaluation of a (possibly edited) model: perplexity and zero-shot accuracy through lm-eval.
"""

from analyses.evaluate.likelihood import Perplexity, eval_rows, eval_windows, perplexity, sum_nll
from analyses.evaluate.tasks import CHANCE, OFFLINE_TASKS, builtins_docs, pydoc_topics_docs, write_tasks, zero_shot

__all__ = [
    "Perplexity",
    "eval_rows",
    "eval_windows",
    "perplexity",
    "sum_nll",
    "CHANCE",
    "OFFLINE_TASKS",
    "builtins_docs",
    "pydoc_topics_docs",
    "write_tasks",
    "zero_shot",
]
