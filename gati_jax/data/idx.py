"""Reader for the IDX format of (Fashion-)MNIST, in numpy only."""

from __future__ import annotations

import gzip
import os

import numpy as np

# IDX type codes -> big-endian numpy dtypes (format of http://yann.lecun.com/exdb/mnist/).
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_payload(path: str) -> bytes:
    """Returns the file's bytes, decompressed if the file is gzipped."""
    with open(path, "rb") as f:
        raw = f.read()
    # Sniff the content rather than trust the suffix: files get gunzipped and keep their names.
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError) as err:  # BadGzipFile is an OSError.
        raise ValueError(f"IDX file {path} is a corrupt or truncated gzip stream: {err}") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzipped or raw) into an array in native byte order."""
    path = os.fspath(path)
    data = _read_payload(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(data)} bytes, no header.")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"IDX file {path} has a bad magic number 0x{data[:4].hex()}.")
    type_code, ndim = data[2], data[3]
    if type_code not in _DTYPES:
        raise ValueError(f"IDX file {path} has an unknown dtype code 0x{type_code:02x}.")
    if ndim == 0:
        raise ValueError(f"IDX file {path} declares zero dimensions.")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"IDX file {path} is truncated inside its header.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[type_code]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(
            f"IDX file {path} is {kind}: {len(data)} bytes, expected {expected} for shape {shape}."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
