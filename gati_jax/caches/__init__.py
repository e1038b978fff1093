"""Learned caches: recording, the predictor/selector design space, vmapped exploration, bank."""

from gati_jax.caches.bank import CacheBank, Candidate, load_bank, mark_frontier, save_bank
from gati_jax.caches.exploration import ExplorationData, explore
from gati_jax.caches.lookup import make_lookup
from gati_jax.caches.recording import Recording, record_activations
from gati_jax.caches.selector import calibrate_threshold, hit_statistics, selector_features
from gati_jax.caches.variants import Predictor, VariantError, VariantSpec, parse_variant

__all__ = [
    "CacheBank",
    "Candidate",
    "ExplorationData",
    "Predictor",
    "Recording",
    "VariantError",
    "VariantSpec",
    "calibrate_threshold",
    "explore",
    "hit_statistics",
    "load_bank",
    "make_lookup",
    "mark_frontier",
    "parse_variant",
    "record_activations",
    "save_bank",
    "selector_features",
]
