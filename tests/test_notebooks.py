"""The walkthrough notebooks: committed without outputs, and they run top to bottom.

Executed with nbclient (not nbmake) so that the stripped-output check and the execution live in
one file, run under the default ``-m 'not slow'`` selection, and need no change to the pytest
``addopts``/``testpaths``. The kernel is the ``python3`` kernelspec; jupyter_client replaces its
``python`` with ``sys.executable``, i.e. the interpreter running pytest (``.venv/bin/python``), which
:func:`test_kernel_is_this_interpreter` checks. Each notebook runs in its own kernel with
``notebooks/`` as the working directory; any cell error fails the test with the cell's traceback.

Kernels get ``OMP_NUM_THREADS=1`` unless the environment sets it: on a 2-core machine shared with
another busy process, torch's 2-thread OpenMP team waits on a descheduled thread at every op and
01_massive_weights ran in 126 s against 33 s with one thread (same load, 2026-11-23); on an idle
machine one thread costs about 1.5x on the forward passes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
TIMEOUT = 600  # seconds per cell
KERNEL_ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _client(nb: nbformat.NotebookNode, cwd: Path):
    from nbclient import NotebookClient

    return NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path: Path) -> None:
    """No outputs and no execution counts in git: strip them before committing (e.g.
    ``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing"


def test_kernel_is_this_interpreter(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    _client(nb, tmp_path).execute(env=KERNEL_ENV)
    assert Path(nb.cells[0].outputs[0]["text"].strip()).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path) -> None:
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    try:
        _client(nb, path.parent).execute(env=KERNEL_ENV)
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
