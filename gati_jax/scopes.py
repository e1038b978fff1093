"""The named scopes compiled programs run their parts in: each base-network stage and each
cache lookup. XLA keeps them in every instruction's op name, which is how a kernel profile
(``gati_jax.experiments.kernel_profile``) tells a stage's kernels from a lookup's."""

from __future__ import annotations


def stage_scope(index: int) -> str:
    """The named scope a base network's stage ``index`` runs in."""
    return f"stage_{index}"


def lookup_scope(position: int) -> str:
    """The named scope a router's lookup at ``position`` runs in (with its tap, if any)."""
    return f"lookup_at_{position}"
