"""What a server runs: one policy's compiled router over a loaded system, and its learner.

An :class:`Engine` answers a request group (``route(images) -> RouteResult``) and, for
``gati-online``, carries the online learner whose background work the server core runs off
the request path. It knows nothing of sockets; the core and the HTTP front end use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import ml_collections
import numpy as np

from gati_jax.config_checks import ConfigError
from gati_jax.inference import BaseModel
from gati_jax.online.learner import OnlineLearner, OnlineSettings
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.router import RouteResult, bucket_sizes
from gati_jax.serve.config import SERVED_POLICIES

ONLINE = "gati-online"


@dataclasses.dataclass(frozen=True)
class Engine:
    """One policy ready to serve: its route, where requests can exit, what inputs it takes."""

    policy: str  # the served policy's name
    route: Callable[[np.ndarray], RouteResult]  # one request group -> answers, exits, hits
    positions: tuple[int, ...]  # where requests may exit early (caches, memories)
    last_stage: int  # where a request that hits nowhere exits
    input_shape: tuple[int, ...]  # one image's shape (H, W, C)
    input_range: tuple[float, float]  # the raw values the network was trained on
    max_group: int  # the largest group ``route`` takes
    learner: OnlineLearner | None = None  # gati-online's learner (background work)

    def warm_up(self) -> None:
        """Compiles every group size before the first request (a compilation in the middle
        of serving would stall it for seconds)."""
        if self.learner is not None:
            self.learner.warm_up()
            return
        for size in bucket_sizes(self.max_group):
            self.route(np.zeros((size, *self.input_shape), np.uint8))


def plain_deployment() -> Deployment:
    """The ``none`` policy: no cache, every request runs the whole network."""
    return Deployment("none", (), (), (), np.zeros(0, np.float32))


def resolve_policy(policy: str, planned: str) -> str:
    """The policy served when ``policy`` is asked of a plan planned for ``planned``: "none",
    the plan's own policy ("plan" or its name) or "gati-online" (a gati plan only)."""
    if policy == "plan":
        return planned
    if policy == "none" or policy == planned or (policy == ONLINE and planned == "gati"):
        return policy
    choices = ["none", "plan", planned] + ([ONLINE] if planned == "gati" else [])
    raise ConfigError(
        f"policy {policy!r} cannot be served from a plan planned for "
        f"{planned!r}; serve one of {choices} (known: {SERVED_POLICIES})"
    )


def build_engine(
    model: BaseModel,
    deployment: Deployment,
    policy: str,
    max_group: int,
    *,
    route: Callable[[np.ndarray], RouteResult] | None = None,
    compact: bool = False,
    online: ml_collections.ConfigDict | None = None,
    reference_images: np.ndarray | None = None,
) -> Engine:
    """An engine serving ``policy`` ("none", ``deployment.policy`` or "gati-online") over a
    base ``model`` and a planned ``deployment``.

    ``route`` serves the deployment as planned when given (a loaded system's ``route``,
    grouping up to ``max_group``), else a router is built (compacting with ``compact``).
    ``online`` (the config's ``online`` section) and, with shift detection,
    ``reference_images`` (in-distribution inputs) are what gati-online's learner needs.
    """
    policy = resolve_policy(policy, deployment.policy)
    last = model.network.num_stages - 1
    common = dict(
        last_stage=last,
        input_shape=tuple(model.network.input_shape),
        input_range=tuple(float(v) for v in model.input_range),
        max_group=max_group,
    )
    if policy == ONLINE:
        if online is None:
            raise ValueError("gati-online needs the config's online section (online=...)")
        learner = OnlineLearner(
            model,
            deployment,
            OnlineSettings.from_config(online),
            max_group,
            reference_images=reference_images,
        )
        return Engine(ONLINE, learner.route, learner.exit_positions, learner=learner, **common)
    if policy == "none":
        deployment, route = plain_deployment(), None
    if route is None:
        router = deployment.router(model, max_group, compact=compact)

        def route(images: np.ndarray) -> RouteResult:
            return router.route(deployment.params, deployment.thresholds, images)

    return Engine(policy, route, deployment.positions, **common)


def load_engine(workdir: str | Path, policy: str, config: ml_collections.ConfigDict) -> Engine:
    """Loads the finished ``workdir`` (``gati_jax.system.load_system``) and builds the engine
    serving ``policy`` at the config's ``serving`` grouping; gati-online learns with the
    ``online`` section, its shift detector fitted on the validation split's last images."""
    from gati_jax import data
    from gati_jax.evaluation import model_data_config
    from gati_jax.system import load_system

    max_group, compact = int(config.serving.max_group), bool(config.serving.compaction)
    system = load_system(workdir, max_group=max_group, compact=compact)
    served = resolve_policy(policy, system.plan.policy)
    reference = None
    if served == ONLINE and config.online.shift_detect:
        dataset = data.load_dataset(model_data_config(system.model, config.data.data_dir))
        reference = dataset.validation.images[-int(config.online.shift_reference) :]
    return build_engine(
        system.model,
        system.deployment,
        served,
        max_group,
        route=system.route,
        compact=compact,
        online=config.online,
        reference_images=reference,
    )
