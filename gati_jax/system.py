"""Loads a trained system from a work directory: base network, caches, plan, ready router."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gati_jax.caches.bank import add_bank_manifest
from gati_jax.inference import BaseModel
from gati_jax.integrity import IntegrityError
from gati_jax.planner.costs import upgrade_profile
from gati_jax.planner.plan import Plan, add_plan_manifest, load_plan, plan_deployment
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.router import Router
from gati_jax.training.checkpointing import (
    add_base_model_manifest,
    load_base_model,
    seal_training_checkpoints,
)


@dataclasses.dataclass(frozen=True)
class ServingSystem:
    """Everything needed to serve: ``system.route(images)`` answers a request group."""

    model: BaseModel
    plan: Plan
    deployment: Deployment
    router: Router

    def route(self, images, base_answer=None):
        """Routes one request group at the plan's thresholds."""
        return self.router.route(
            self.deployment.params, self.deployment.thresholds, images, base_answer
        )


def load_system(
    workdir: str | Path,
    max_group: int = 32,
    checkpoint: str | Path | None = None,
    compact: bool = False,
    clip_inputs: bool = False,
) -> ServingSystem:
    """Loads WORKDIR/plan (caches + plan) and the base network it was planned for.

    WORKDIR is a finished main-job work directory, or a shipped base model folder that
    holds a planned system (``load_system("checkpoints/fashion_mnist_resnet18")``). The base
    network is read from ``checkpoint``, else from the folder itself when it holds a base
    model, else from the config recorded in WORKDIR/config.json by the main job (an
    absolute path, so any current directory works);
    a plan made for another network is refused, naming both. ``compact`` builds a compacting
    router (groups whose requests exit at different positions stop paying for the exited
    ones); ``clip_inputs`` clips float images into the network's input range instead of
    refusing them.
    """
    workdir = Path(workdir).absolute()
    if checkpoint is None and (workdir / "model.json").is_file():
        checkpoint = workdir
    if checkpoint is None:
        config_path = workdir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{config_path} is missing; pass the base checkpoint explicitly (checkpoint=...)"
            )
        try:
            checkpoint = json.loads(config_path.read_text())["caches"]["checkpoint"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise IntegrityError(
                f"{config_path} is corrupt ({type(error).__name__}: {error}); "
                "pass the base checkpoint explicitly (checkpoint=...)"
            ) from None
        if not Path(checkpoint).is_absolute() and (workdir / checkpoint).is_dir():
            checkpoint = workdir / checkpoint  # a path relative to the work directory
        elif not Path(checkpoint).is_absolute() and not Path(checkpoint).is_dir():
            # Workdirs written before config.json held absolute paths: relative to the
            # directory the job ran in, which is not recorded (the fingerprint check below
            # refuses a different network found at the same relative path).
            raise FileNotFoundError(
                f"{config_path} names the base checkpoint by the relative path {checkpoint!r}, "
                f"not found from {Path.cwd()}; run from the directory the job ran in or pass "
                "it explicitly (checkpoint=...)"
            )
    if Path(checkpoint).absolute() == workdir and not (workdir / "plan" / "plan.json").exists():
        # A base network that ships without a plan: say how to make a system of it (before
        # reading its weights, which would serve nothing).
        raise FileNotFoundError(
            f"{workdir} holds a base network but no planned system (no plan/plan.json): "
            "plan one with python scripts/train_caches.py --config CONFIG --workdir DIR "
            f"(CONFIG's caches.checkpoint={workdir}), then load_system(DIR)"
        )
    model = load_base_model(checkpoint)
    plan, bank = load_plan(workdir / "plan", model)
    deployment = plan_deployment(plan, bank)
    router = deployment.router(model, max_group, compact=compact)
    router.clip_inputs = clip_inputs
    return ServingSystem(model, plan, deployment, router)


def add_manifest(path: str | Path, checkpoint: str | Path | None = None) -> str:
    """Adds a manifest to an artefact saved before artefacts carried one, leaving its other
    files as they are; returns what was done. Only for an artefact you trust.

    ``path`` is a base model (model.json), a cache bank (bank.json), a plan (plan.json), a
    latency profile (a .json file) or a folder of training checkpoints (WORKDIR/checkpoints);
    a bank or plan needs the base ``checkpoint`` it was made for, whose fingerprint it then
    records.
    """
    path = Path(path).absolute()
    if path.is_dir() and any(
        p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists() for p in path.iterdir()
    ):
        steps = seal_training_checkpoints(path)
        return f"training checkpoints {path}: sealed steps {steps or '(none: all were sealed)'}"
    if path.is_file():
        upgrade_profile(path)
        return f"latency profile {path}: format version and checksum added (or verified)"
    if (path / "model.json").is_file():
        manifest = add_base_model_manifest(path)
        return f"base model {path}: manifest with {len(manifest['files'])} files"
    for name, add in (("bank.json", add_bank_manifest), ("plan.json", add_plan_manifest)):
        if (path / name).is_file():
            if checkpoint is None:
                raise ValueError(
                    f"{path} holds a {name}: pass the base checkpoint it was made "
                    "for (--checkpoint), whose fingerprint the manifest records"
                )
            manifest = add(path, load_base_model(checkpoint))
            return (
                f"{name.split('.')[0]} {path}: manifest with {len(manifest['files'])} files, "
                f"made for {manifest['model_fingerprint']} ({checkpoint})"
            )
    raise FileNotFoundError(f"{path} is not a base model, cache bank, plan or latency profile")
