"""Adds manifests to artefacts saved before they carried one (their other files untouched):
``python scripts/add_manifest.py PATH... [--checkpoint BASE]``.

PATH is a base model directory, a cache bank or plan directory (these need ``--checkpoint``,
the base network they were made for) or a latency profile JSON file. Loading refuses an
artefact without a manifest, because its files cannot be checked; run this only on artefacts
you trust. It checks what it can first (the variables restore and are finite).
"""

from absl import flags

from gati_jax import cli
from gati_jax.system import add_manifest

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "The base model a cache bank or plan was made for."
)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise FileNotFoundError("name at least one artefact: add_manifest.py PATH...")
    for path in argv[1:]:
        print(add_manifest(path, _CHECKPOINT.value))


if __name__ == "__main__":
    cli.run(main)
