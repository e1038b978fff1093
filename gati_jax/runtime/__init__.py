"""Serving runtime: the compiled early-exit router, exit policies, the Python-loop reference."""

# Importing knn registers the "knn" policy beside the ones defined in policies.py.
from gati_jax.runtime import knn  # noqa: F401
from gati_jax.runtime.deployment import (
    Deployment,
    best_per_position,
    deploy,
    deployment_from_config,
)
from gati_jax.runtime.policies import CacheHead, available_policies, policy_builder
from gati_jax.runtime.reference import ReferenceRouter
from gati_jax.runtime.router import Router, RouteResult, bucket_sizes

__all__ = [
    "CacheHead",
    "Deployment",
    "ReferenceRouter",
    "RouteResult",
    "Router",
    "available_policies",
    "best_per_position",
    "bucket_sizes",
    "deploy",
    "deployment_from_config",
    "policy_builder",
]
