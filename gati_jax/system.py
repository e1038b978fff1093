"""Loads a trained system from a work directory: base network, caches, plan, ready router."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gati_jax.inference import BaseModel
from gati_jax.planner.plan import Plan, load_plan, plan_deployment
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.router import Router
from gati_jax.training.checkpointing import load_base_model


@dataclasses.dataclass(frozen=True)
class ServingSystem:
    """Everything needed to serve: ``system.route(images)`` answers a request group."""

    model: BaseModel
    plan: Plan
    deployment: Deployment
    router: Router

    def route(self, images, base_answer=None):
        """Routes one request group at the plan's thresholds."""
        return self.router.route(self.deployment.params, self.deployment.thresholds, images,
                                 base_answer)


def load_system(workdir: str | Path, max_group: int = 32,
                checkpoint: str | Path | None = None, compact: bool = False) -> ServingSystem:
    """Loads WORKDIR/plan (caches + plan) and the base network it was planned for.

    The base network is read from ``checkpoint``, or from the config recorded in
    WORKDIR/config.json by the main job; ``compact`` builds a compacting router (groups
    whose requests exit at different positions stop paying for the exited ones).
    """
    workdir = Path(workdir)
    plan, bank = load_plan(workdir / "plan")
    if checkpoint is None:
        config_path = workdir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} is missing; pass the base checkpoint "
                                    "explicitly (checkpoint=...)")
        checkpoint = json.loads(config_path.read_text())["caches"]["checkpoint"]
    model = load_base_model(checkpoint)
    deployment = plan_deployment(plan, bank)
    return ServingSystem(model, plan, deployment,
                         deployment.router(model, max_group, compact=compact))
