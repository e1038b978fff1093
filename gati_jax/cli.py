"""What every entry point in scripts/ shares: absl flags, logging that honours --verbosity,
errors a user can fix printed as one line (exit status 2), never as a traceback, and programs
compiled once per process (gati_jax/compilation.py)."""

from __future__ import annotations

import logging as py_logging
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from gati_jax.compilation import keep_compiled_programs
from gati_jax.config_checks import ConfigError
from gati_jax.data.errors import DataNotFoundError
from gati_jax.integrity import IntegrityError
from gati_jax.jobs.train_base import TrainingError
from gati_jax.training.checkpointing import CheckpointError

# Problems in the user's command, config, data or artefacts: the message names the cause.
# OSError covers a config file that cannot be loaded, a missing folder, a full disk.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    IntegrityError,
    DataNotFoundError,
    TrainingError,
    OSError,
)


class _LibraryInfoFilter(py_logging.Filter):
    """Drops other libraries' INFO records (orbax logs every file it writes) below
    --verbosity=1, so the default INFO level shows gati_jax's progress alone."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno >= py_logging.WARNING or logging.get_verbosity() >= 1:
            return True
        return "/gati_jax/" in record.pathname or "/scripts/" in record.pathname


def _fail(message: str) -> None:
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    sys.stderr.write(f"error: {one_line}\n")
    sys.exit(2)


def _parse(argv: Sequence[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # a bad flag, a missing config file, an unknown config key
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, AttributeError):
            first = _unknown_key(str(error))
        _fail(first)
        raise  # unreachable: _fail exits


def _unknown_key(text: str) -> str:
    """One line for ml_collections' unknown-key error, whose text is a quoted repr of the key
    and, sometimes, a suggestion."""
    key = re.search(r"'([^'\\]+)", text)
    hint = re.search(r'Did you mean \\?"([^"\\]+)', text)
    return (
        f"unknown config key '{key.group(1) if key else text}'"
        + (f" (did you mean '{hint.group(1)}'?)" if hint else "")
        + "; see gati_jax/config.py for the schema"
    )


def run(main: Callable[[list[str]], None]) -> None:
    """``app.run(main)`` with one-line errors for bad flags, configs, data and artefacts, and
    the process's compiled programs kept for it."""

    def wrapped(argv: list[str]) -> None:
        py_logging.getLogger("absl").addFilter(_LibraryInfoFilter())
        keep_compiled_programs()
        try:
            main(argv)
        except USER_ERRORS as error:
            _fail(str(error))

    app.run(wrapped, flags_parser=_parse)
