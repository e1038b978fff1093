"""Integrity of saved artefacts: a manifest written last into every directory the project saves.

``manifest.json`` records the artefact's format and format version, the sha256 and size of
every file beside it, and facts a loader checks before trusting the files (e.g. the
fingerprint of the base network a cache bank was made for). Loading verifies every file and
names the first one that is missing, truncated or garbled; a directory without a manifest
was not written by this project (or by a version before manifests) and is refused, with the
way to add one. A manifest also marks a directory as the project's own: only such a
directory is ever replaced (gati_jax/atomic_dir.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_PREFIX = "gati_jax."
_CHUNK = 1 << 20


class IntegrityError(ValueError):
    """A saved artefact is missing, truncated, garbled, of an unknown format, or was made for
    another base network; the message names the file."""


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """The sha256 of a JSON value in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not p.is_symlink() and p != directory / MANIFEST
    )


def write_manifest(
    directory: str | os.PathLike, kind: str, version: int, **facts: Any
) -> dict[str, Any]:
    """Hashes every file under ``directory`` and writes ``directory/manifest.json`` (last,
    atomically); ``facts`` (JSON values) are recorded beside the hashes. Returns it."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in _files(directory)
    }
    body = {"format": _PREFIX + kind, "version": int(version), **facts, "files": files}
    manifest = dict(body, manifest_sha256=json_sha256(body))
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(directory / MANIFEST)
    return manifest


def is_project_directory(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a manifest written by this project (of any artefact)."""
    path = Path(directory) / MANIFEST
    try:
        return str(json.loads(path.read_text()).get("format", "")).startswith(_PREFIX)
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(
    directory: str | os.PathLike, kind: str, version: int, how_to_add: str = ""
) -> dict[str, Any]:
    """The manifest of a ``kind`` artefact, checked for format, version and its own hash
    (the files are not read: see :func:`verify_manifest`)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise IntegrityError(
            f"{directory} has no {MANIFEST}: it was not written by gati_jax, or by a version "
            f"before artefacts carried manifests, so its files cannot be checked"
            + (f"; if you trust it, {how_to_add}" if how_to_add else "")
        )
    try:
        manifest = json.loads(path.read_text())
        body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
        recorded = manifest["manifest_sha256"]
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise IntegrityError(f"{path} is corrupt ({type(error).__name__}: {error})") from None
    if json_sha256(body) != recorded:
        raise IntegrityError(f"{path} is corrupt: its contents do not match its own checksum")
    if manifest.get("format") != _PREFIX + kind:
        raise IntegrityError(
            f"{directory} holds a {manifest.get('format')!r} artefact, not a {_PREFIX + kind!r}"
        )
    if not isinstance(manifest.get("version"), int) or manifest["version"] > version:
        raise IntegrityError(
            f"{path}: format version {manifest.get('version')!r} of {kind} is newer than this "
            f"gati_jax reads ({version}); update gati_jax"
        )
    return manifest


def verify_manifest(
    directory: str | os.PathLike, kind: str, version: int, how_to_add: str = ""
) -> dict[str, Any]:
    """Reads the manifest (:func:`read_manifest`) and checks every file it lists: present,
    of the recorded size, of the recorded sha256. Raises :class:`IntegrityError` naming the
    first file that fails; returns the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory, kind, version, how_to_add)
    for name, entry in sorted(manifest["files"].items()):
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise IntegrityError(
                f"{directory / MANIFEST} is corrupt: it lists {name!r}, outside the artefact"
            )
        path = directory / relative
        if not path.is_file():
            raise IntegrityError(
                f"{path} is missing: the {kind.replace('_', ' ')} at "
                f"{directory} is incomplete (its {MANIFEST} lists the file)"
            )
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise IntegrityError(
                f"{path} is truncated or altered: {size} bytes where "
                f"{MANIFEST} records {entry.get('bytes')}"
            )
        digest = file_sha256(path)
        if digest != entry.get("sha256"):
            raise IntegrityError(
                f"{path} is corrupt: its sha256 {digest[:16]}... differs from "
                f"the {str(entry.get('sha256'))[:16]}... {MANIFEST} records"
            )
    return manifest


def check_same_network(
    what: str,
    where: str | os.PathLike,
    made_for: str | None,
    made_for_path: str | None,
    fingerprint: str,
    path: str | None,
) -> None:
    """Refuses an artefact made for another base network, naming both networks."""
    if not made_for:
        raise IntegrityError(
            f"the {what} at {where} records no base network fingerprint (made before "
            "fingerprints were recorded), so it cannot be checked against the base network "
            f"{fingerprint} ({path or 'in memory'}); make it again"
        )
    if made_for != fingerprint:
        raise IntegrityError(
            f"the {what} at {where} was made for the base network {made_for} "
            f"({made_for_path or 'path unknown'}), not for the one given, {fingerprint} "
            f"({path or 'in memory'}); use the base network it was made for, or make it "
            "again for this one"
        )
