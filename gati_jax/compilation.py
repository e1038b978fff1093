"""Programs compiled once per process: a program compiled again is loaded, not recompiled.

Planning and the benchmark compile whole-network routers of the same plans in several steps
(a plan's router is timed under the miss bound, then routed again by the measured choice and
the cost check; a lookup's router is timed in the profile and again when a plan chooses it).
Each step makes its own ``jax.jit``, and JAX compiles every new one anew even when its program
is one it compiled a moment before: on a 29-stage network a second or more per router. JAX's
persistent compilation cache is keyed by the program itself (base variables, lookups, shapes,
compiler flags), so with it the same program compiled again loads the executable it wrote.
Entry points keep that cache in a temporary directory of their own, removed when they exit
(or, when a process was killed, by the next entry point that starts), and bounded in size; a
cache directory the user set (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
:func:`seconds_compiling` counts what compiling has cost the process, so a job can say how
much of each step was compilation.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

import jax
from jax import monitoring

# Programs that compile faster than this are not worth a file (routers of a deep network take
# seconds; small helpers milliseconds).
MIN_COMPILE_S = 0.5
# A planning run of the ResNet-56 writes a few hundred executables of a few MB each.
MAX_BYTES = 2 << 30
# JAX's events for tracing a function, lowering it, and compiling (or loading) the program.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"
# A process's cache directory: this prefix, its process id, "_", a random suffix.
_PREFIX = "gati_jax_compiled_"
_compiling = {"seconds": 0.0, "saved": 0.0, "loaded": 0}


def _count(event: str, seconds: float, **_: object) -> None:
    if event in _COMPILE_EVENTS:
        _compiling["seconds"] += seconds
    elif event == _SAVED_EVENT:
        _compiling["saved"] += seconds
        _compiling["loaded"] += 1


monitoring.register_event_duration_secs_listener(_count)


def seconds_compiling() -> float:
    """Seconds this process has spent tracing, lowering and compiling (or loading) programs."""
    return _compiling["seconds"]


def programs_loaded() -> dict[str, float]:
    """How many programs this process loaded from its cache instead of compiling them
    (``count``), and the seconds their compilation had taken (``compile_seconds_saved``), as
    the jobs' JSON records them."""
    return {"count": _compiling["loaded"], "compile_seconds_saved": _compiling["saved"]}


def keep_compiled_programs(
    min_compile_s: float = MIN_COMPILE_S, max_bytes: int = MAX_BYTES
) -> Path:
    """Turns on JAX's compilation cache for this process, in a temporary directory removed at
    exit (or the user's own, if one is set); returns the directory. Call it before the first
    compilation: JAX decides whether to use the cache once."""
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return Path(configured)
    _remove_orphans(Path(tempfile.gettempdir()))
    directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    return Path(directory)


def _remove_orphans(parent: Path) -> None:
    """Removes the cache directories of processes no longer running (killed before their exit
    handler ran): gigabytes each at most, which nothing else would ever free."""
    for path in parent.glob(f"{_PREFIX}*_*"):
        found = re.fullmatch(rf"{_PREFIX}(\d+)_\w+", path.name)
        if found is None or not path.is_dir() or path.is_symlink():
            continue
        try:
            os.kill(int(found.group(1)), 0)  # signal 0: is it running?
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass  # running under another user, or no such process id: not ours to judge
