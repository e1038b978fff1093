"""A plan: which caches serve where at which thresholds, what it predicts, and its storage.

A saved plan is a directory: ``plan.json`` (positions, variants, thresholds in the policy's
own units, predicted and test figures) and ``caches/`` (the deployed candidates as a small
cache bank: orbax parameters plus bank.json), so it loads back into a router without the
exploration's bank. ``manifest.json`` (gati_jax/integrity.py) records every file's hash and
the base network the plan was made for; a plan loads only when every file checks, and only
for that network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gati_jax.atomic_dir import atomic_directory
from gati_jax.caches.bank import CacheBank, _json_ready, add_bank_manifest, load_bank, save_bank
from gati_jax.inference import BaseModel, model_fingerprint
from gati_jax.integrity import (
    MANIFEST,
    IntegrityError,
    check_same_network,
    verify_manifest,
    write_manifest,
)
from gati_jax.planner.build import policy_threshold
from gati_jax.planner.instance import Choice, Instance, summarize_outcome
from gati_jax.runtime.deployment import Deployment, deploy

_JSON = "plan.json"
_CACHES = "caches"
PLAN, PLAN_VERSION = "plan", 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """Deployed positions, their candidates and thresholds, and the figures they predict."""

    policy: str
    method: str
    positions: tuple[int, ...]
    candidates: tuple[str, ...]  # candidate keys in the cache bank
    variants: tuple[str, ...]
    thresholds: tuple[float, ...]  # in the policy's own units
    tuning: dict[str, Any]  # predicted figures on the tuning requests
    test: dict[str, Any] = dataclasses.field(default_factory=dict)  # on the test split
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # eps, budget, ...

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON."""
        return _json_ready(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_json`."""
        fields = {f.name: row[f.name] for f in dataclasses.fields(cls) if f.name in row}
        for name in ("positions", "candidates", "variants", "thresholds"):
            fields[name] = tuple(fields[name])
        return cls(**fields)


def plan_from_choices(
    instance: Instance,
    choices: Sequence[Choice],
    policy: str,
    method: str,
    test: Instance | None = None,
) -> Plan:
    """Names a search result: candidate keys, thresholds in policy units, predicted figures."""
    deployed = [(i, c) for i, c in enumerate(choices) if c is not None]
    options = [instance.options[i][c[0]] for i, c in deployed]
    return Plan(
        policy=policy,
        method=method,
        positions=tuple(instance.positions[i] for i, _ in deployed),
        candidates=tuple(o.key for o in options),
        variants=tuple(o.key.split("/")[1] for o in options),
        thresholds=tuple(policy_threshold(policy, c[1]) for _, c in deployed),
        tuning=summarize_outcome(instance, choices),
        test=summarize_outcome(test, choices) if test is not None else {},
        settings={
            "eps": instance.eps,
            "memory_budget_bytes": instance.budget_bytes,
            # None: no bound (JSON has no infinity).
            "max_miss_overhead": instance.max_miss_overhead
            if math.isfinite(instance.max_miss_overhead)
            else None,
            # the floors its own lookups were charged at (planner/miss_bound.py)
            "miss_floors_s": {o.key: instance.miss_floors.of(o.key) for o in options},
            "confidence": instance.confidence,
            "tuning_requests": instance.num_requests,
        },
    )


def plan_deployment(plan: Plan, bank: CacheBank) -> Deployment:
    """The plan's deployment over ``bank`` (the exploration's, or the plan's own)."""
    by_key = {c.key: c for c in bank.candidates}
    missing = [k for k in plan.candidates if k not in by_key]
    if missing:
        raise ValueError(f"the cache bank lacks the plan's candidates {missing}")
    return deploy(bank, [by_key[k] for k in plan.candidates], plan.policy, plan.thresholds)


def save_plan(directory: str | os.PathLike, plan: Plan, bank: CacheBank) -> Path:
    """Writes plan.json, the deployed caches (orbax) and the manifest to ``directory``,
    atomically; the plan is recorded as made for the base network ``bank`` was made for.
    ``directory`` must be absent, empty or a plan this project wrote."""
    directory = Path(directory).absolute()
    with atomic_directory(directory) as staging:
        by_key = {c.key: c for c in bank.candidates}
        chosen = [by_key[k] for k in plan.candidates]
        save_bank(
            staging / _CACHES,
            CacheBank(
                bank.num_classes,
                bank.selector_hidden,
                chosen,
                bank.info,
                bank.model_fingerprint,
                bank.model_path,
            ),
        )
        (staging / _JSON).write_text(
            json.dumps(
                plan.to_json()
                | {"model_fingerprint": bank.model_fingerprint, "model_path": bank.model_path},
                indent=1,
            )
            + "\n"
        )
        write_manifest(
            staging,
            PLAN,
            PLAN_VERSION,
            model_fingerprint=bank.model_fingerprint,
            model_path=bank.model_path,
        )
    return directory


def load_plan(
    directory: str | os.PathLike, model: BaseModel | None = None
) -> tuple[Plan, CacheBank]:
    """Loads a plan saved by :func:`save_plan` and the caches it deploys, every file checked
    against the plan's manifest first. Given the base ``model``, a plan made for another
    network is refused, naming both."""
    directory = Path(directory).absolute()
    path = directory / _JSON
    if not path.is_file() and not (directory / MANIFEST).is_file():
        raise FileNotFoundError(
            f"no plan at {directory} (missing {_JSON}); run scripts/plan_caches.py first"
        )
    manifest = verify_manifest(
        directory,
        PLAN,
        PLAN_VERSION,
        "add one with `python scripts/add_manifest.py DIR --checkpoint "
        "BASE` (gati_jax.planner.plan.add_plan_manifest), or plan again",
    )
    try:
        plan = Plan.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise IntegrityError(f"{path} is corrupt: {type(error).__name__}: {error}") from error
    if model is not None:
        check_same_network(
            "plan",
            directory,
            manifest.get("model_fingerprint"),
            manifest.get("model_path"),
            model_fingerprint(model),
            model.source,
        )
    return plan, load_bank(directory / _CACHES, model)


def add_plan_manifest(directory: str | os.PathLike, model: BaseModel) -> dict[str, Any]:
    """Writes manifests into a plan (and its caches) saved before plans carried them,
    recording ``model`` (the base network you know it was made for); the parameters are
    untouched. Only for a plan you trust. A plan that has a manifest is verified and left
    alone."""
    directory = Path(directory).absolute()
    if (directory / MANIFEST).exists():
        load_plan(directory, model)
        return verify_manifest(directory, PLAN, PLAN_VERSION)
    add_bank_manifest(directory / _CACHES, model)
    fingerprint = model_fingerprint(model)
    path = directory / _JSON
    try:
        row = json.loads(path.read_text())
        Plan.from_json(row)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise IntegrityError(f"{path} is corrupt: {type(error).__name__}: {error}") from error
    path.write_text(
        json.dumps(row | {"model_fingerprint": fingerprint, "model_path": model.source}, indent=1)
        + "\n"
    )
    return write_manifest(
        directory, PLAN, PLAN_VERSION, model_fingerprint=fingerprint, model_path=model.source
    )
