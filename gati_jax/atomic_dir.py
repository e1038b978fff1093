"""Atomic replacement of an output directory: write beside it, then swap it in."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty staging directory; on success it replaces ``directory``.

    The old directory is swapped out only after the new one is complete, so a crash while
    writing never loses what was saved before (the staging directory is left behind).
    """
    directory = Path(directory).absolute()
    staging = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    yield staging
    previous = directory.with_name(directory.name + f".old-{os.getpid()}")
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
