"""The default experiment with a bound on the worst case: a request that exits nowhere may pay
at most ``bound`` (a fraction, default 0.10) over the plain network.

``--config configs/bounded_miss.py`` plans under a 10% bound; ``configs/bounded_miss.py:0.15``
under 15%. The planner holds the bound by timing its chosen plan (gati_jax/planner/
miss_bound.py, docs/planning.md); the policy benchmark's ``miss_overhead`` column shows what
every policy's router measured. Two timings of one router a minute apart can differ by a few
points of the plain network, so a tight bound (5%) may leave one lookup or none. Only our plan
is held by measurement; the comparators' get its floors and are timed once.
"""

from gati_jax.config import base_config


def get_config(bound: str = "0.10"):
    """Returns the default config with ``planner.max_miss_overhead = bound``."""
    try:
        value = float(bound)
    except ValueError:
        raise ValueError(
            f"configs/bounded_miss.py takes a fraction, e.g. ':0.10', got {bound!r}"
        ) from None
    if not 0 <= value < 10:
        raise ValueError(
            f"configs/bounded_miss.py: the bound must be a fraction in [0, 10), got {value}"
        )
    config = base_config()
    config.planner.max_miss_overhead = value
    return config
