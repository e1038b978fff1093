"""Programs compiled once per process (gati_jax/compilation.py), in a fresh process each: JAX
decides once per process whether it uses its compilation cache."""

import os
import subprocess
import sys
from pathlib import Path

_PROGRAM = """
import jax, jax.numpy as jnp
from jax import monitoring
from gati_jax.compilation import keep_compiled_programs, programs_loaded

events = []
monitoring.register_event_listener(lambda name, **_: events.append(name))
directory = keep_compiled_programs(min_compile_s=0.0)
x = jnp.ones((32, 32))
for _ in range(3):  # a new jit each time, one program
    jax.jit(lambda a: jnp.tanh(a @ a).sum())(x).block_until_ready()
hits = events.count("/jax/compilation_cache/cache_hits")
assert programs_loaded()["count"] == hits, programs_loaded()
print(directory, hits)
"""


def _run(env: dict[str, str]) -> tuple[Path, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        env=os.environ | {"JAX_PLATFORMS": "cpu"} | env,
        capture_output=True,
        text=True,
        check=True,
    )
    directory, hits = out.stdout.split()
    return Path(directory), int(hits)


def test_a_program_compiled_again_is_loaded_and_the_cache_leaves_with_the_process():
    directory, hits = _run({})
    assert hits == 2  # compiled once, loaded twice
    assert directory.name.startswith("gati_jax_compiled_") and not directory.exists()


def test_a_cache_directory_the_user_set_is_used_and_kept(tmp_path):
    mine = tmp_path / "jax_cache"
    # The user's own settings, theirs to keep: every program cached, in their directory.
    directory, hits = _run(
        {"JAX_COMPILATION_CACHE_DIR": str(mine), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    )
    assert directory == mine and hits == 2 and mine.is_dir() and any(mine.iterdir())


def test_the_cache_of_a_killed_process_is_removed_by_the_next_and_nothing_else(tmp_path):
    from gati_jax.compilation import _remove_orphans

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f"gati_jax_compiled_{int(finished.stdout)}_k1ll3d"
    alive = tmp_path / f"gati_jax_compiled_{os.getpid()}_runn1ng"
    other = tmp_path / "gati_jax_compiled_notes"  # not a process's: no id
    a_file = tmp_path / "gati_jax_compiled_1_file"
    for directory in (dead, alive, other):
        directory.mkdir()
        (directory / "entry-cache").write_bytes(b"x")
    a_file.write_text("not a directory")
    _remove_orphans(tmp_path)
    assert not dead.exists()
    assert alive.is_dir() and other.is_dir() and a_file.is_file()
