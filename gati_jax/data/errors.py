"""Errors raised by the data package."""


class DataNotFoundError(FileNotFoundError):
    """A data set could be found neither locally nor through TFDS."""
