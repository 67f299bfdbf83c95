"""Files written in one step: a reader (or a concurrent writer) never sees half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write to; when the block succeeds it replaces
    ``path`` in one step (:func:`os.replace`), with the mode ``open()`` would have given it; when
    it fails the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def scratch_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh temporary folder beside ``path`` (the same file system, so renaming it or its
    files into place is one step each), removed with whatever is left in it when the block
    ends, however it ends. The caller moves what it built into place inside the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
