"""gati_jax: fast deep-network inference with learned caches and compiled early exit."""

__version__ = "0.1.0"
