"""Compare result tables across execution paths that batch differently.

The same rows evaluated as one batch or as several invokes of one nnsight request, or on Ray
workers, go through matmuls of other shapes; on some CPUs (oneDNN/MKL pick kernels by shape)
float32 sums then round differently: ~1e-7 relative in a log-likelihood, up to ~2e-6 in a
perplexity (its exponential). Everything that is not a float must
match exactly (modes, layers, neurons, token counts); floats to ``rel``.
"""

from __future__ import annotations

import math
from typing import Any


def assert_same_table(a: Any, b: Any, rel: float = 1e-5, where: str = "") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (where, a, b)
        assert math.isclose(a, b, rel_tol=rel, abs_tol=0.0), (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a, b)
        for key in a:
            assert_same_table(a[key], b[key], rel, f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_table(x, y, rel, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
