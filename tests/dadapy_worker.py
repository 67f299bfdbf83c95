"""Run dadapy's Gride on arrays from an .npz; runs in the reference venv (.venv/dadapy-ref).

Usage: python dadapy_worker.py IN.npz OUT.npz. IN holds ``n`` and, for each request i < n,
``X<i>`` (the points) and ``range_max<i>``; OUT gets ``ids<i>``, ``errs<i>`` and ``rs<i>`` from
``Data(coordinates=X).return_id_scaling_gride(range_max=...)``. Never imports the toolkit: that venv has
NumPy 1 and jax, not our dependencies. Exits with 3 when dadapy cannot be imported.
"""

import sys
import warnings

import numpy as np

try:
    from dadapy import Data
except ImportError as exc:  # a half-made reference venv: the caller treats it as missing
    print(f"cannot import dadapy: {exc}", file=sys.stderr)
    sys.exit(3)


def main(src: str, dst: str) -> None:
    out = {}
    with np.load(src) as inputs:
        for i in range(int(inputs["n"])):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ids, errs, rs = Data(coordinates=inputs[f"X{i}"].copy()).return_id_scaling_gride(
                    range_max=int(inputs[f"range_max{i}"]))
            out[f"ids{i}"], out[f"errs{i}"], out[f"rs{i}"] = ids, errs, rs
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
