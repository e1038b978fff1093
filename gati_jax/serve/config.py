"""The ``server`` config section as a server reads it (declared in gati_jax/serving/config.py
beside the other serving knobs, so the schema lists it without importing the server).

Requests are grouped by the ``serving`` section's ``max_group`` and ``max_wait_ms``, the
knobs the simulator uses; online learning reads the ``online`` section. This section holds
what only a real server has: where it listens, how much it accepts, what it refuses.
"""

from __future__ import annotations

import ml_collections

from gati_jax.serving.config import SERVED_POLICIES, server_config, validate_server

__all__ = ["SERVED_POLICIES", "server_config", "server_section", "validate_server"]


def server_section(
    config: ml_collections.ConfigDict, **overrides: object
) -> ml_collections.ConfigDict:
    """An unlocked copy of ``config.server`` with the non-None ``overrides`` (command-line
    flags) applied, validated."""
    section = ml_collections.ConfigDict(config.server.to_dict())
    for key, value in overrides.items():
        if value is not None:
            section[key] = value
    validate_server(section)
    return section
