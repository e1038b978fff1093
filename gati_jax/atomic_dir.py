"""Atomic replacement of an output directory: write beside it, then swap it in.

Only a directory this project wrote (one holding a gati_jax manifest, gati_jax/integrity.py)
or an empty one is ever replaced: a slip such as naming ``checkpoints`` as an output never
deletes what is in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gati_jax.integrity import MANIFEST, is_project_directory


def check_replaceable(directory: str | os.PathLike) -> None:
    """Raises FileExistsError unless ``directory`` is absent, empty, or the project's own."""
    directory = Path(directory).absolute()
    if not directory.exists() and not directory.is_symlink():
        return
    if directory.is_symlink() or not directory.is_dir():
        raise FileExistsError(
            f"{directory} exists and is not a directory gati_jax wrote; "
            "nothing was replaced: choose another output path"
        )
    if any(directory.iterdir()) and not is_project_directory(directory):
        raise FileExistsError(
            f"{directory} is not empty and holds no gati_jax {MANIFEST} (gati_jax did not "
            "write it, or wrote it before outputs carried manifests), so it will not be "
            "replaced (nothing was deleted): choose another output path, or move that "
            "directory away first"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty staging directory; on success it replaces ``directory``.

    ``directory`` must be absent, empty, or one the project wrote (:func:`check_replaceable`);
    the caller writes a manifest into the staging directory, which marks it as the project's.
    The old directory is swapped out only after the new one is complete, so a crash while
    writing never loses what was saved before (the staging directory is left behind).
    """
    directory = Path(directory).absolute()
    check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name: nothing already there is ever cleared to make room.
    staging = Path(tempfile.mkdtemp(prefix=directory.name + ".tmp-", dir=directory.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the output private
    yield staging
    check_replaceable(directory)  # it may have changed while the new one was written
    previous = None
    if directory.exists():
        previous = Path(tempfile.mkdtemp(prefix=directory.name + ".old-", dir=directory.parent))
        directory.rename(previous / directory.name)
    staging.rename(directory)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
