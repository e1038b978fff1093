"""What one recency-memory publication costs the online learner, measured in one process.

A publication (``OnlineLearner._publish_memories``: calibration, the memories' arrays, packing
and sending them to the device, waiting for the transfer) ran every ``recency_publish_every``
requests on the video stream, 549 times in 5,000 requests. Two ways are timed alternately,
under the same machine noise: ``memory_only`` (as served: the caches' parameters are the ones
already packed, so only the memories' flat arrays are packed and sent) and ``full_repack``
(every flat array packed and sent again, as every publication did before: the learner's
caches swap between two device copies of the same parameters, so none can be reused).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gati_jax.measure import measure_interleaved
from gati_jax.online.config import online_config
from gati_jax.online.learner import OnlineLearner, OnlineSettings
from gati_jax.system import load_system


def serving_learner(workdir: str, seed: int = 0) -> OnlineLearner:
    """A learner on ``workdir``'s planned system whose memories are full of random labelled
    keys and serve (a finite threshold), so each publication swaps them into serving."""
    system = load_system(workdir, max_group=1)
    section = online_config()
    section.shift_detect = False  # needs reference images; it plays no part in publishing
    learner = OnlineLearner(
        system.model, system.deployment, OnlineSettings.from_config(section), max_group=1
    )
    rng = np.random.default_rng(seed)
    classes = system.model.network.num_classes
    for memory in learner.memories:
        capacity, size = memory.keys.shape
        keys = rng.standard_normal((capacity, size)).astype(np.float32)
        memory.add(keys, rng.integers(0, classes, capacity), np.ones(capacity, bool))
        # Kept by calibration while its (empty) outcome window holds nothing against it.
        memory.threshold = 0.9
    return learner


def publish_cost(learner: OnlineLearner, repeats: int = 200, warmup: int = 20) -> dict:
    """Median ms of one publication, memory only against a full re-pack (alternating
    ``repeats`` rounds after ``warmup`` calls of each), and what travels in each."""
    caches = learner.params
    # A second device copy of the caches: publishing with the copy the routers did not pack
    # last leaves nothing to reuse, which is the cost every publication paid before.
    copy = jax.block_until_ready(jax.tree.map(jnp.copy, caches))

    def memory_only():
        learner._publish_memories()  # pylint: disable=protected-access

    def full_repack():
        learner.params = copy if learner.params is caches else caches
        learner._publish_memories()  # pylint: disable=protected-access

    seconds = measure_interleaved(
        {"memory_only": memory_only, "full_repack": full_repack}, repeats, warmup
    )
    learner.params = caches
    leaves = jax.tree.leaves(learner.serving_params)
    memory = jax.tree.leaves([slot.get("memory") for slot in learner.serving_params])
    return {
        **{f"{name}_ms": 1e3 * s for name, s in seconds.items()},
        "speedup": seconds["full_repack"] / seconds["memory_only"],
        "parameter_bytes": int(sum(np.asarray(x).nbytes for x in leaves)),
        "memory_bytes": int(sum(np.asarray(x).nbytes for x in memory)),
        "repeats": repeats,
        "device": str(jax.devices()[0]),
    }


def print_publish_cost(result: dict) -> None:
    """One line per way of publishing, then the ratio."""
    print(
        f"one memory publication, median of {result['repeats']} on {result['device']}: "
        f"memory only {result['memory_only_ms']:.3f} ms "
        f"({result['memory_bytes']:,} bytes sent), "
        f"full re-pack {result['full_repack_ms']:.3f} ms "
        f"({result['parameter_bytes']:,} bytes sent), {result['speedup']:.2f}x"
    )


def main(workdir: str = "checkpoints/fashion_mnist_resnet18", repeats: int = 200) -> dict:
    """Measures and prints the publication cost on ``workdir``'s planned system."""
    result = publish_cost(serving_learner(workdir), repeats)
    print_publish_cost(result)
    return result
