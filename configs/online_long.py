"""Online learning given time to learn: one long temporal stream (4,000 test requests, hot-class
segments of 1,000 on average) served by none, static gati and gati-online, one round.

The main job's streams (600 requests, segments of 100) end before an update has labelled data
from a segment, and a 10% audit gives a held-out slice of a few dozen requests, too few to
certify a 99% threshold. Here each segment yields about 100 audited requests. Reuses
WORKDIR/plan.json when it was planned under the same settings (copy a main job's plan.json,
plan/ and profile.json into WORKDIR to skip planning).
"""

from gati_jax.config import base_config


def get_config():
    """Returns the long-stream online-learning config."""
    config = base_config()
    config.workload.length = 4000
    config.workload.mean_segment = 1000
    config.workload.window = 500
    config.benchmark.workloads = ("temporal",)
    config.benchmark.policies = ("none", "gati")
    config.benchmark.rounds = 1
    return config
