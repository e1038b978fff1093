"""Online learning given time to learn: one long stream (4,000 test requests, segments of 1,000
on average) served by none, static gati and gati-online, one round.

``--config configs/online_long.py`` serves the temporal workload (hot-class segments);
``--config configs/online_long.py:shift`` the shift workload (a share of the segments
corrupted), where the accuracy guard has to act.

The main job's streams (600 requests, segments of 100) end before an update has labelled data
from a segment, and a 10% audit gives a held-out slice of a few dozen requests, too few to
certify a 99% threshold. Here each segment yields about 100 audited requests. Reuses
WORKDIR/plan.json when it was planned under the same settings (copy a main job's plan.json,
plan/ and profile.json into WORKDIR to skip planning).
"""

from gati_jax.config import base_config

WORKLOADS = ("temporal", "shift")


def get_config(workload: str = "temporal"):
    """Returns the long-stream online-learning config for ``workload``."""
    if workload not in WORKLOADS:
        raise ValueError(f"configs/online_long.py serves one of {WORKLOADS}, got {workload!r}")
    config = base_config()
    config.workload.length = 4000
    config.workload.mean_segment = 1000
    config.workload.window = 500
    config.benchmark.workloads = (workload,)
    config.benchmark.policies = ("none", "gati")
    config.benchmark.control = ""
    config.benchmark.rounds = 1
    return config
