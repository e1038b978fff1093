"""Serving throughput against device count: the batch-sharded router on 1, 2, 4, ... devices.

Each count gets its own mesh and router (groups split over the mesh's data axis, see
gati_jax/sharding.py) and serves the same stream closed-loop with ``group`` clients, so the
server always has a full group to run: throughput is what the devices can do, not the
arrival rate. Every count must give the one-device answers and exit stages; a row says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from gati_jax import data, sharding
from gati_jax.config import validate_config
from gati_jax.data.workloads import make_workload
from gati_jax.evaluation import model_data_config
from gati_jax.inference import BaseModel
from gati_jax.planner.plan import load_plan, plan_deployment
from gati_jax.runtime.deployment import Deployment
from gati_jax.runtime.router import Router
from gati_jax.serving.clock import VirtualClock
from gati_jax.serving.loop import serve
from gati_jax.tables import format_table
from gati_jax.training.checkpointing import load_base_model


def default_device_counts() -> tuple[int, ...]:
    """1, 2, 4, ... up to the number of visible devices."""
    counts, d = [], 1
    while d <= jax.device_count():
        counts.append(d)
        d *= 2
    return tuple(counts)


def device_scaling(
    model: BaseModel,
    deployment: Deployment,
    images: np.ndarray,
    counts: Sequence[int] = (),
    group: int = 32,
    repeats: int = 3,
) -> list[dict[str, Any]]:
    """One row per device count: throughput (median of ``repeats`` streams), mean latency,
    speedup over one device, and whether answers and exits equal the one-device router's."""
    counts = tuple(counts) or default_device_counts()
    rows, reference = [], None
    for count in counts:
        mesh = sharding.make_mesh(devices=count, model=1)
        group_size = -(-group // count) * count
        router = Router(model, deployment.positions, deployment.decides(), group_size, mesh=mesh)

        def route(batch, index, router=router):
            return router.route(deployment.params, deployment.thresholds, batch)

        route(images[:group_size], None)  # compile the full bucket before timing
        runs = [
            serve(
                route,
                images,
                mode="closed",
                concurrency=group_size,
                max_group=group_size,
                max_wait_s=0.0,
                clock=VirtualClock(),
                progress=False,
            )
            for _ in range(repeats)
        ]
        result = runs[0]
        if reference is None:
            reference = result
        same = bool(
            np.array_equal(result.answer, reference.answer)
            and np.array_equal(result.exit_stage, reference.exit_stage)
        )
        throughput = float(np.median([len(r) / r.duration for r in runs]))
        rows.append(
            {
                "devices": count,
                "group": group_size,
                "throughput_rps": throughput,
                "mean_latency_ms": float(np.median([1e3 * r.latency.mean() for r in runs])),
                "same_answers_as_1_device": same,
            }
        )
    base = rows[0]["throughput_rps"]
    for row in rows:
        row["speedup_vs_1_device"] = row["throughput_rps"] / base
    return rows


def run_device_scaling(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """``bench_scaling.py``'s job: WORKDIR/plan (a planned system) served on 1, 2, 4, ...
    devices; prints the table and writes WORKDIR/device_scaling.json."""
    validate_config(config)
    sharding.initialize(config.mesh)
    out = Path(workdir).absolute()
    plan, bank = load_plan(out / "plan")
    model = load_base_model(config.caches.checkpoint)
    dataset = data.load_dataset(model_data_config(model, config.data.data_dir))
    section = ml_collections.ConfigDict(config.workload.to_dict())
    images = make_workload(section, getattr(dataset, section.split)).images
    deployment = plan_deployment(plan, bank)
    rows = device_scaling(
        model,
        deployment,
        images[: int(config.benchmark.scaling_requests)],
        tuple(int(d) for d in config.benchmark.device_counts),
        int(config.benchmark.scaling_group),
    )
    for row in rows:
        row["platform"] = jax.devices()[0].platform
    (out / "device_scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
    logging.info(
        f"{deployment.policy} plan at positions {list(deployment.positions)}, "
        f"{section.name} stream, closed loop:"
    )
    logging.info(format_table(rows))
    return rows
