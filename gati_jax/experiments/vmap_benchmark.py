"""The exploration benchmark: same-shape candidates trained by vmap vs by a Python loop."""

from __future__ import annotations

import ml_collections
import numpy as np

from gati_jax import data
from gati_jax.caches.exploration import head_training
from gati_jax.caches.recording import record_activations
from gati_jax.caches.training import train_predictors
from gati_jax.caches.variants import parse_variant
from gati_jax.config import validate_config
from gati_jax.evaluation import model_data_config
from gati_jax.measure import measure_interleaved
from gati_jax.training.checkpointing import load_base_model


def benchmark_vmap_vs_loop(
    config: ml_collections.ConfigDict,
    members: int = 8,
    position: int = 2,
    variant: str = "pool-k2-h64",
    examples: int = 4000,
    repeats: int = 3,
) -> dict[str, float]:
    """Trains ``members`` same-shape candidates with vmap and with a loop; median times of each."""
    validate_config(config)
    model = load_base_model(config.caches.checkpoint)
    dataset = data.load_dataset(model_data_config(model, config.data.data_dir))
    rec = record_activations(
        model,
        dataset.train.images[:examples],
        dataset.train.labels[:examples],
        positions=(position,),
        max_bytes=int(config.caches.record_max_bytes),
    )
    hp = head_training(config.caches)
    spec = parse_variant(variant)
    seeds = np.arange(members)
    rates = np.full(members, 3e-3, np.float32)
    result = {
        "members": members,
        "position": position,
        "variant": variant,
        "examples": examples,
        "epochs": hp.epochs,
    }
    # A first pass of each compiles; the timed pass below reuses the compiled steps.
    for vectorised in (True, False):
        train_predictors(
            spec,
            model.network.num_classes,
            rec.features[position][: hp.batch_size],
            rec.logits[: hp.batch_size],
            seeds,
            rates,
            hp,
            vectorised=vectorised,
        )

    def train(vectorised):
        return lambda: train_predictors(
            spec,
            model.network.num_classes,
            rec.features[position],
            rec.logits,
            seeds,
            rates,
            hp,
            vectorised=vectorised,
        )[0]

    # Compiled above, so no warm-up rounds; alternating rounds put noise on both alike.
    times = measure_interleaved({"vmap_s": train(True), "loop_s": train(False)}, repeats, warmup=0)
    result.update(times, repeats=repeats)
    result["speedup"] = result["loop_s"] / result["vmap_s"]
    return result
