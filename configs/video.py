"""The benchmark with camera-like streams: every policy on uniform, temporal, shift and video
streams of 5,000 test requests each (video: scenes of about 300 frames, see
gati_jax/data/workloads.py), agreement reported per window of 500 requests.

  python scripts/benchmark.py --config configs/video.py --workdir runs/video

Streams this long give online learning scenes to learn from; everything else is the default
config (configs/default.py).
"""

from gati_jax.config import base_config


def get_config():
    """Returns the video benchmark config."""
    config = base_config()
    config.workload.length = 5000
    config.workload.window = 500
    config.benchmark.workloads = ("uniform", "temporal", "shift", "video")
    return config
