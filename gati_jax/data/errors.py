"""Errors raised by the data package."""

from gati_jax.config_checks import ConfigError


class DataNotFoundError(FileNotFoundError):
    """A data set could be found neither locally nor through TFDS."""


class DataFormatError(ConfigError):
    """A user's data file or folder cannot be read as a data set; the message says why."""
