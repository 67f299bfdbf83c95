"""A plan applied as a reversible, in-place weight (or residual) edit: :func:`applied`."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from torch import nn

from analyses.ablate.data import Plan
from analyses.ablate.modes import get_mode


@contextmanager
def applied(model: nn.Module, plan: Plan) -> Iterator[None]:
    """The model with ``plan`` applied (its mode's ``edits``); restored bit-exactly on exit."""
    edits = get_mode(plan.mode).edits(model, plan)
    with ExitStack() as stack:
        for edit in edits:
            stack.enter_context(edit)
        yield
