"""Training: MacDrop fine-tuning of LoRA/DoRA adapters, and the grokking demo.

- :mod:`.macdrop` — curriculum dropout on the massive weights;
- :mod:`.finetuning` — :func:`finetune` with MacDrop and its tracked metrics;
- :mod:`.grokking` — a small transformer learning (a + b) mod p;
- :mod:`.figures` — curves and the comparison section of fine-tuning runs.
"""

from analyses.training.macdrop import SCHEDULES, MacDrop, base_model, macdrop_callback, schedule
from analyses.training.finetuning import TRACKS, FinetuneConfig, FinetuneLog, finetune, train_rows, train_windows
from analyses.training.grokking import GrokConfig, GrokLog, grok
from analyses.training.figures import finetune_figure, finetune_section, load_run, summary_rows

__all__ = [
    "SCHEDULES",
    "MacDrop",
    "base_model",
    "macdrop_callback",
    "schedule",
    "TRACKS",
    "FinetuneConfig",
    "FinetuneLog",
    "finetune",
    "train_rows",
    "train_windows",
    "GrokConfig",
    "GrokLog",
    "grok",
    "finetune_figure",
    "finetune_section",
    "load_run",
    "summary_rows",
]
