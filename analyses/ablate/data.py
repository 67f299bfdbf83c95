"""An ablation and its in-trace edits as plain data: :class:`Plan` and :class:`Step`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from probe.errors import EditError
from probe.hookpoints import HookPoint


@dataclass(frozen=True)
class Plan:
    """One ablation: ``mode`` at ``layer`` on ``neurons`` (FFN rows) or residual ``dims`` at ``positions``."""

    mode: str
    layer: int
    k: int
    neurons: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    value: float = 0.0
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Step:
    """One edit of the output of the module at ``path`` in block ``layer``, inside a trace:

    - ``fill``: outputs ``cols`` set to the module's bias there (0 without a bias);
    - ``recompute``: outputs ``cols`` of the down projection recomputed from its input with
      ``W_down[cols, zeroed]`` set to 0;
    - ``set``: the residual stream (``point`` on the block's output) at ``positions x cols``
      set to ``value``.
    """

    kind: str
    path: str
    layer: int
    cols: tuple[int, ...]
    zeroed: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    value: float = 0.0
    point: HookPoint | None = None


def check_indices(indices: tuple[int, ...], size: int, what: str) -> None:
    """Raise :class:`EditError` when an index is outside ``0..size-1``."""
    bad = [i for i in indices if not 0 <= i < size]
    if bad:
        raise EditError(f"{what} {bad} out of range 0..{size - 1}")
